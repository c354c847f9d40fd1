"""A classification task on other data than SST-2: how many steps a GSM8K problem's solution takes.

Every classification bench here was on SST-2, so leave-one-task-out, which leaves out a task's own
data, judged each of them with a recommender that had learned from no classification task at all.
This derives a second one from GSM8K (MIT): the text is the question, the label whether its
reference solution takes at most 3 lines of working ("short", 55% of the training problems) or
more ("long"). The files are written under ``benchmarks/results/derived/`` (ignored by git: the
data stays in ../shared, this only relabels it), and rewritten only when missing.

    python benchmarks/derive_gsm8k_steps.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "gsm8k"
DERIVED = ROOT / "benchmarks" / "results" / "derived"
#: at most this many lines of working is a "short" solution: the median of the training set
SHORT = 3


def label(answer: str) -> str:
    """``short`` or ``long``: the reference solution's lines of working, the final ``#### N`` not counted."""
    working = [line for line in answer.split("\n")[:-1] if line.strip()]
    return "short" if len(working) <= SHORT else "long"


def main() -> int:
    DERIVED.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        target = DERIVED / f"gsm8k-steps-{split}.jsonl"
        if target.is_file():
            continue
        rows = [json.loads(line) for line in (SOURCE / f"{split}.jsonl").read_text().splitlines() if line.strip()]
        partial = target.with_suffix(".tmp")
        partial.write_text("".join(json.dumps({"text": r["question"], "label": label(r["answer"])}) + "\n"
                                   for r in rows))
        partial.replace(target)
        print(f"wrote {target} ({len(rows)} problems)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
