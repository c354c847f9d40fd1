"""The tasks autopeft fine-tunes for: one list, read by the CLI's choices, the data reader, the model
loader, the method contract and the metrics.

- ``causal-lm``: next-token prediction on text, prompts and answers, or conversations;
- ``seq-cls``: one label per text (a classification head over the sequence);
- ``token-cls``: one tag per word, such as named entities in BIO tags (a classification head over
  every token, scored by entity-level F1).

This module imports nothing heavy: ``autopeft --help`` reads it.
"""

from __future__ import annotations

from typing import Literal

TASKS: tuple[str, ...] = ("causal-lm", "seq-cls", "token-cls")
Task = Literal["causal-lm", "seq-cls", "token-cls"]
#: the tasks with a freshly initialised classification head (trained in full by every method)
CLASSIFICATION_TASKS: tuple[str, ...] = ("seq-cls", "token-cls")
#: PEFT's ``TaskType`` of each task
PEFT_TASK_TYPES = {"causal-lm": "CAUSAL_LM", "seq-cls": "SEQ_CLS", "token-cls": "TOKEN_CLS"}
#: the transformers auto class of each task's model
AUTO_CLASSES = {"causal-lm": "AutoModelForCausalLM", "seq-cls": "AutoModelForSequenceClassification",
                "token-cls": "AutoModelForTokenClassification"}
#: the Hugging Face Hub's pipeline tag of each task (model cards)
PIPELINE_TAGS = {"causal-lm": "text-generation", "seq-cls": "text-classification",
                 "token-cls": "token-classification"}
#: the validation metric that chooses the best checkpoint and stops early, and whether larger is better
#: (None: the validation loss, lower is better)
SELECTION_METRICS: dict[str, tuple[str, bool] | None] = {"causal-lm": None, "seq-cls": None, "token-cls": ("f1", True)}


def task_of_peft_type(task_type: str | None) -> str | None:
    """The task of a PEFT ``task_type`` (``"TOKEN_CLS"`` -> ``"token-cls"``), None for any other."""
    return {peft: task for task, peft in PEFT_TASK_TYPES.items()}.get(task_type or "")
