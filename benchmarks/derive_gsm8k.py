"""Classification tasks on other data than SST-2, derived from GSM8K (MIT).

Every classification bench here was first on SST-2, so leave-one-task-out, which leaves out a task's
own data, judged each of them with a recommender that had learned from no classification task at all.
These relabel GSM8K's questions; the text is always the question:

- ``steps``: whether its reference solution takes at most 3 lines of working ("short", 55% of the
  training problems) or more ("long");
- ``division``: whether its reference solution divides ("yes", 46%: a ``/`` inside one of its
  ``<<...>>`` calculations) or not ("no"). Questions say so in words ("half", "each", "per",
  "split evenly"), so a model can learn it from the text.

The files (``gsm8k-TASK-SPLIT.jsonl``) are written under ``benchmarks/results/derived/`` (ignored by
git: the data stays in ../shared, this only relabels it), and rewritten only when missing.

    python benchmarks/derive_gsm8k.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "gsm8k"
DERIVED = ROOT / "benchmarks" / "results" / "derived"
#: at most this many lines of working is a "short" solution: the median of the training set
SHORT = 3
_DIVIDES = re.compile(r"<<[^>]*/[^>]*>>")


def steps(answer: str) -> str:
    """``short`` or ``long``: the reference solution's lines of working, the final ``#### N`` not counted."""
    working = [line for line in answer.split("\n")[:-1] if line.strip()]
    return "short" if len(working) <= SHORT else "long"


def division(answer: str) -> str:
    """``yes`` when one of the reference solution's calculations divides, else ``no``."""
    return "yes" if _DIVIDES.search(answer) else "no"


TASKS = {"steps": steps, "division": division}


def main() -> int:
    DERIVED.mkdir(parents=True, exist_ok=True)
    for task, label in TASKS.items():
        for split in ("train", "test"):
            target = DERIVED / f"gsm8k-{task}-{split}.jsonl"
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
