"""Task metrics on SVAMP: SmolLM2 with LoRA, scored by ``final_number`` on 200 test problems before and
after training.

SVAMP (``../shared/data/svamp/SVAMP.json``, 1,000 arithmetic word problems, MIT) is converted here, on
the fly, into prompt/completion JSONL under ``--workdir`` (never into the project): the prompt is the
problem's body and question, the completion its equation and answer (``(76 - 25) = 51``). A seeded
shuffle sets 200 problems aside as the test set and ``--validation-examples`` as the validation set;
training samples ``--train-examples`` of the rest. One ``autopeft train`` run then scores greedy answers
with ``--metric final_number --metrics-before``; the numbers and the command land in
``benchmarks/results/svamp.{json,md}``.

    python benchmarks/svamp.py [--train-examples 760 --epochs 2 --max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SVAMP = ROOT.parent / "shared" / "data" / "svamp" / "SVAMP.json"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def convert(problem: dict) -> dict:
    """One SVAMP problem as a prompt/completion record."""
    equation = re.sub(r"(\d+)\.0\b", r"\1", problem["Equation"].strip())
    equation = re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", equation))
    return {"prompt": f"{problem['Body'].strip()} {problem['Question'].strip()}",
            "completion": f"{equation} = {_number(problem['Answer'])}"}


def write_splits(workdir: Path, test: int, validation: int, seed: int = 0) -> dict[str, Path]:
    """train/validation/test JSONL files from a seeded shuffle of SVAMP."""
    problems = json.loads(SVAMP.read_text(encoding="utf-8"))
    random.Random(seed).shuffle(problems)
    parts = {"test": problems[:test], "validation": problems[test:test + validation],
             "train": problems[test + validation:]}
    workdir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in parts.items():
        paths[name] = workdir / f"svamp-{name}.jsonl"
        paths[name].write_text("".join(json.dumps(convert(p)) + "\n" for p in rows), encoding="utf-8")
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/autopeft-svamp")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--test-examples", type=int, default=200)
    parser.add_argument("--validation-examples", type=int, default=40)
    parser.add_argument("--train-examples", type=int, default=760)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--method", default="lora")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild svamp.{json,md} from the finished run in --workdir")
    args = parser.parse_args()

    workdir, out = Path(args.workdir), Path(args.out)
    run_dir = workdir / "run"
    if args.report_only:
        previous = json.loads((out / "svamp.json").read_text(encoding="utf-8"))
        command, seconds = previous["command"], previous["seconds"]
    else:
        paths = write_splits(workdir, args.test_examples, args.validation_examples)
        argv = ["autopeft", "train", str(paths["train"]), "--method", args.method, "--validation",
                str(paths["validation"]), "--test", str(paths["test"]), "--max-examples", str(args.train_examples),
                "--epochs", f"{args.epochs:g}", "--batch-size", str(args.batch_size), "--learning-rate",
                f"{args.learning_rate:g}", "--max-length", "192", "--metric", "final_number", "--metrics-before",
                "--generate-max-new-tokens", str(args.max_new_tokens), "--no-profile-store", "-o", str(run_dir),
                "--overwrite", "--json"]
        command = shlex.join(argv)
        print("$", command, file=sys.stderr, flush=True)
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", *argv], text=True, stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        seconds = time.perf_counter() - started
        if proc.returncode:
            sys.exit(f"autopeft train failed with status {proc.returncode}")
    result = summarise(run_dir, command, seconds)
    (out / "svamp.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "svamp.md").write_text(report(result), encoding="utf-8")
    print(f"SVAMP test final_number: {result['test_final_number_before']:.3f} before, "
          f"{result['test_final_number']:.3f} after training ({seconds / 60:.1f} min)")
    return 0


def equation_value(answer: str) -> float | None:
    """The value of the arithmetic left of an answer's last ``=`` (``(30 - 11) = 17`` -> 19.0), or None."""
    left = answer.rpartition("=")[0] if "=" in answer else ""
    if not left.strip() or not re.fullmatch(r"[\d\s.+\-*/()]+", left):
        return None
    try:
        return float(eval(left, {"__builtins__": {}}))  # digits, operators and brackets only (checked above)
    except (SyntaxError, ZeroDivisionError, TypeError):
        return None


def summarise(run_dir: Path, command: str, seconds: float) -> dict:
    """The run's scores, and what its test answers show: how many of the base's used every token it was
    allowed (cut off), and how many trained answers wrote the right equation but got its result wrong."""
    from transformers import AutoTokenizer

    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    test = [r for r in rows if r["split"] == "test"]
    m, g = record["metrics"], record["generation"]
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir))
    cut = sum(len(tokenizer(r["output_before"], add_special_tokens=False)["input_ids"]) >= g["max_new_tokens"] - 1
              for r in test)
    truth = [float(r["reference"].rpartition("=")[2]) for r in test]
    equation_right = sum(v is not None and abs(v - t) < 1e-6 for v, t in
                         zip((equation_value(r["output"]) for r in test), truth))
    return {
        "command": command, "seconds": seconds, "train_seconds": record["train_seconds"],
        "steps": record["steps"], "num_train": record["data"]["num_train"], "model": record["model"],
        "method": record["method"], "learning_rate": record["learning_rate"],
        "test_examples": g["test_examples"], "validation_examples": g["validation_examples"],
        "max_new_tokens": g["max_new_tokens"], "generate_seconds": g["seconds"],
        "generate_seconds_before": g["seconds_before"],
        "test_final_number_before": m["test_final_number_before"], "test_final_number": m["test_final_number"],
        "final_number_before": m["final_number_before"], "final_number": m["final_number"],
        "eval_loss_before": m.get("eval_loss_before"), "eval_loss": m.get("eval_loss"),
        "test_cut_off_before": cut / len(test), "test_equation_right_after": equation_right / len(test),
        "hardware": record["hardware"], "samples": [{k: r[k] for k in ("input", "reference", "output_before", "output")} for r in test[-5:]],
    }


def _cell(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def report(r: dict) -> str:
    hw = r["hardware"]
    lines = [
        "# Task metrics on SVAMP: SmolLM2-135M with LoRA", "",
        "Written by `python benchmarks/svamp.py`. SVAMP (1,000 arithmetic word problems) converted to "
        "prompt/completion records (prompt: body and question; completion: equation and answer, e.g. "
        "`(76 - 25) = 51`); a seeded shuffle holds out the test and validation problems. Scored by "
        "`final_number`: the last number of the greedy answer equals the reference's answer.", "",
        "    " + r["command"], "",
        f"{r['method']} at learning rate {r['learning_rate']:g} on {r['num_train']} training problems, "
        f"{r['steps']} steps; {r['train_seconds'] / 60:.1f} min of training and {r['seconds'] / 60:.1f} min in all "
        f"on {hw['device']} ({hw['device_name']}, {hw['cpu_count']} cores seen, shared with other jobs). "
        f"Greedy answers of at most {r['max_new_tokens']} new tokens; generating took "
        f"{r['generate_seconds_before']:.0f} s before training and {r['generate_seconds']:.0f} s after.", "",
        "| | before training | after training |", "|---|---:|---:|",
        f"| final_number, {r['test_examples']} test problems | {r['test_final_number_before']:.3f} | "
        f"{r['test_final_number']:.3f} |",
        f"| final_number, {r['validation_examples']} validation problems | {r['final_number_before']:.3f} | "
        f"{r['final_number']:.3f} |",
        f"| validation loss | {r['eval_loss_before']:.3f} | {r['eval_loss']:.3f} |", "",
        f"Before training, the model (SmolLM2-135M-Instruct) answers in sentences: {r['test_cut_off_before']:.0%} "
        f"of its test answers ran to the {r['max_new_tokens']}-token limit. After training it answers with an "
        f"equation and its result: {r['test_equation_right_after']:.0%} of its test equations evaluate to the "
        f"reference answer, and {r['test_final_number']:.0%} of its stated results are right (it miscomputes "
        "some right equations).", "",
        "Last test answers:", "",
        "| problem | reference | before training | after training |", "|---|---|---|---|",
        *(f"| {_cell(s['input'])} | {_cell(s['reference'])} | {_cell(s['output_before'])} | {_cell(s['output'])} |"
          for s in r["samples"]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
