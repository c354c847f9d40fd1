"""Quality and cost measurements of a training run: task metrics, forgetting, samples, peak memory."""

from __future__ import annotations

import math
import resource
import sys
from importlib import resources

from pydantic import BaseModel


class Sample(BaseModel):
    prompt: str
    output: str


def classification_metrics(eval_pred) -> dict[str, float]:
    """Accuracy and macro-F1 from the Trainer's (logits, labels)."""
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score

    logits, labels = eval_pred
    logits = logits[0] if isinstance(logits, tuple) else logits
    predictions = np.asarray(logits).argmax(-1)
    return {"accuracy": float(accuracy_score(labels, predictions)),
            "macro_f1": float(f1_score(labels, predictions, average="macro"))}


#: what token classification reports: entity-level F1, precision and recall (seqeval, CoNLL's way of
#: counting: an entity is right when its type and its span both are) and the share of words tagged right
TOKEN_CLASSIFICATION_METRICS = ("f1", "precision", "recall", "token_accuracy")


def predicted_ids(logits, labels):
    """The Trainer's ``preprocess_logits_for_metrics`` for token classification: each token's most
    likely tag, so that evaluation gathers one id per token rather than every tag's logit."""
    logits = logits[0] if isinstance(logits, tuple) else logits
    return logits.argmax(-1)


def token_classification_metrics(tags: list[str]):
    """The Trainer's ``compute_metrics`` for token classification with tag names ``tags`` (in id order).

    Each word is scored by its first sub-token (the others carry the label -100, as does padding), so
    the tag sequences compared are the words' own; entities are then counted by seqeval as CoNLL's
    conlleval does.
    """
    def compute(eval_pred) -> dict[str, float]:
        import numpy as np

        predictions, labels = eval_pred
        predictions = predictions[0] if isinstance(predictions, tuple) else predictions
        return entity_scores(np.asarray(predictions), np.asarray(labels), tags)

    return compute


def entity_scores(predictions, labels, tags: list[str]) -> dict[str, float]:
    """Entity-level F1, precision and recall, and token accuracy, of predicted tag ids against gold
    ones (arrays of sentences by tokens; positions whose gold id is -100 are not words, and skipped)."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    gold, predicted = [], []
    right = total = 0
    for row_pred, row_gold in zip(predictions, labels):
        keep = row_gold != -100
        gold.append([tags[i] for i in row_gold[keep]])
        predicted.append([tags[i] for i in row_pred[keep]])
        right += int((row_pred[keep] == row_gold[keep]).sum())
        total += int(keep.sum())
    return {"f1": float(f1_score(gold, predicted, zero_division=0)),
            "precision": float(precision_score(gold, predicted, zero_division=0)),
            "recall": float(recall_score(gold, predicted, zero_division=0)),
            "token_accuracy": right / total if total else 0.0}


#: a classifier whose validation loss ends within this share of the label-frequency loss has learned
#: little (how the margin was chosen: docs/design/learning-warnings.md)
LEARNED_LITTLE_MARGIN = 0.05
#: accuracy within this of always answering the most frequent validation label: one class for everything
MAJORITY_MARGIN = 0.005


def learning_warnings(metrics: dict[str, float | None], prior_loss: float | None = None,
                      majority: float | None = None) -> list[str]:
    """What a finished run's validation metrics say it did not learn, in sentences; empty when it learned.

    :param metrics: the run's metrics (``eval_loss``, ``eval_loss_before``, ``accuracy``; for token
        classification ``f1`` and ``token_accuracy``: an entity F1 of 0 is learning little)
    :param prior_loss: classification: the loss of answering with the training labels' frequencies
    :param majority: classification: the share of the validation set's most frequent label
    """
    after, before, accuracy = metrics.get("eval_loss"), metrics.get("eval_loss_before"), metrics.get("accuracy")
    if after is None:
        return []
    if not math.isfinite(after):
        return ["the validation loss is not a number: the run diverged; try a lower --learning-rate"]
    advice = ("a configuration can fail so at one training seed and not at another (try another --seed or "
              "--learning-rate); if every run ends so, the task may need more data, more epochs or a larger model")
    entities = _entity_warning(metrics, advice)
    if entities:
        return [entities]
    if majority is not None and accuracy is not None and accuracy <= majority + MAJORITY_MARGIN:
        return [f"the accuracy ({accuracy:.1%}) is no better than always answering the most frequent label "
                f"({majority:.1%} of the validation set): the model has learned nothing from the text; {advice}"]
    # a tagger that finds entities has learned, whatever its loss: on data whose entities are new
    # in validation (WNUT-17), an F1 well above 0 comes with a loss above the label frequencies'
    tagger = "token_accuracy" in metrics
    if prior_loss and not tagger and after > (1 - LEARNED_LITTLE_MARGIN) * prior_loss:
        where = "above" if after >= prior_loss else f"only {1 - after / prior_loss:.1%} below"
        return [f"the validation loss ended at {after:.3f}, {where} the loss of answering every example with the "
                f"training labels' frequencies ({prior_loss:.3f}): the model has learned little from the text"
                + (f" (accuracy {accuracy:.1%})" if accuracy is not None else "") + f"; {advice}"]
    if before is not None and after >= before:
        return [f"the validation loss did not fall ({before:.3f} before training, {after:.3f} after); {advice}"]
    return []


def _entity_warning(metrics: dict[str, float | None], advice: str) -> str | None:
    """Token classification: a validation entity F1 of 0, that of a model tagging every word O."""
    if "token_accuracy" not in metrics or metrics.get("f1") is None or metrics["f1"] > 0:
        return None
    accuracy = metrics.get("token_accuracy")
    found = f" (token accuracy {accuracy:.1%})" if accuracy is not None else ""
    return (f"the validation entity F1 is 0, no better than tagging every word O: the model found none of the "
            f"validation set's entities{found}, so it has learned little from the text; {advice}")


def general_text_loss(model, tokenizer, max_length: int = 128) -> float:
    """Mean per-token loss on a few paragraphs of general text the run does not train on.

    Measured before and after training, its rise is the forgetting: how much of the base model's
    general language modelling the fine-tune gave up.
    """
    import torch

    text = resources.files("autopeft").joinpath("resources/general_text.txt").read_text(encoding="utf-8")
    paragraphs = [p for p in text.splitlines() if p.strip()]
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for paragraph in paragraphs:
            batch = tokenizer(paragraph, return_tensors="pt", truncation=True, max_length=max_length).to(device)
            out = model(**batch, labels=batch["input_ids"])
            tokens = batch["input_ids"].shape[1] - 1
            total += float(out.loss) * tokens
            count += tokens
    model.train(was_training)
    return total / max(count, 1)


def perplexity(loss: float | None) -> float | None:
    if loss is None:
        return None
    return math.exp(loss) if loss < 50 else float("inf")


def generate_samples(model, tokenizer, prompts: list[str], max_new_tokens: int = 64) -> list[Sample]:
    """Greedy continuations of already-rendered prompts (as the model saw them in training)."""
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    samples = []
    with torch.no_grad():
        for prompt in prompts:
            batch = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            text = tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            samples.append(Sample(prompt=prompt, output=text.strip()))
    model.train(was_training)
    return samples


def peak_memory_bytes(device: str) -> int:
    """Peak memory of this process: accelerator memory reserved by torch on CUDA, else the
    peak resident set size (which includes loading the model: that is what a budget must cover)."""
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_reserved())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
