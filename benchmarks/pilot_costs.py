"""What a pilot of each method costs beside LoRA's: its one-off initialisation and its step time.

``recommend`` plans its pilots from one calibration pilot (LoRA's): the process overhead and the
seconds a step. Most methods step within a factor of two of LoRA, but some initialise from the data
or the weights before step 1 (EVA's SVD of activations, OSF's of the weights) for the time of tens of
steps, and a plan that counts them as LoRA-priced overruns its budget. This script pilots every
method on the embedded model of each task kind, as ``recommend`` would (the same fork server and
child processes, 5 steps at the method's default learning rate), and writes each method's
initialisation in LoRA steps and its step time as a multiple of LoRA's to
``autopeft/resources/pilot_costs.json``, which ``recommend`` reads (see ``autopeft.choose.pilots``).
LoRA is piloted again after every 10 methods, and each method is divided by the mean of the LoRA
pilots around it, so a machine that slows down during the run does not bias the ratios.

    python benchmarks/pilot_costs.py            # both task kinds, ~15 min on one free core
    python benchmarks/pilot_costs.py --task seq-cls --methods lora,eva
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "autopeft" / "resources" / "pilot_costs.json"
#: each task kind's example data (written for this project) and the embedded model it runs on
SETUPS = {"causal-lm": ROOT / "examples" / "instructions.jsonl", "seq-cls": ROOT / "examples" / "sentiment.jsonl"}
STEPS = 5
LORA_EVERY = 10


def measure(task: str, methods: list[str] | None, say) -> dict:
    from autopeft.choose.pilots import PilotConfig, base_options, run_pilot
    from autopeft.methods.registry import get_methods
    from autopeft.models import DEFAULT_MODEL
    from autopeft.processes import start_fork_server
    from autopeft.training.options import TrainOptions

    model = DEFAULT_MODEL[task]
    options = TrainOptions(data=str(SETUPS[task]), output_dir="-", model=model, task=task)
    base = base_options(options)
    registry = get_methods()
    names = methods or sorted(n for n, m in registry.items() if task in m.tasks and m.unavailable_reason() is None)
    start_fork_server()

    def pilot(name: str):
        method = registry[name]
        config = PilotConfig(name=name, method=name, learning_rate=method.search_space.default_learning_rate(task),
                             batch_size=options.batch_size)
        return run_pilot(config, base, STEPS)

    lora: dict[int, float] = {}  # seconds a step of the LoRA pilot before method i, for i = 0, 10, 20, ...
    measured: dict[str, tuple[int, object]] = {}
    pilot("lora")  # warms the page cache and the fork server: not counted
    for i, name in enumerate(names):
        if i % LORA_EVERY == 0:
            lora[i] = pilot("lora").seconds_per_step
        result = pilot(name)
        measured[name] = (i, result)
        say(f"{task} {name}: {result.status}, init {result.init_seconds or 0:.1f} s, "
            f"{result.seconds_per_step or 0:.2f} s a step")
    lora[len(names)] = pilot("lora").seconds_per_step

    costs = {}
    for name, (i, result) in measured.items():
        if result.status != "ok" or not result.seconds_per_step:
            continue
        before = (i // LORA_EVERY) * LORA_EVERY
        reference = (lora[before] + lora[min(before + LORA_EVERY, len(names))]) / 2  # the LoRA pilots around it
        costs[name] = {"init_steps": round((result.init_seconds or 0.0) / reference, 1),
                       "step_ratio": round(result.seconds_per_step / reference, 2)}
    return {"model": model, "steps": STEPS, "lora_seconds_per_step": round(statistics.mean(lora.values()), 3),
            "methods": costs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(SETUPS), action="append", help="default: every task kind")
    parser.add_argument("--methods", help="comma-separated; default: every method available for the task")
    parser.add_argument("-o", "--output", type=Path, default=OUT)
    args = parser.parse_args(argv)

    from autopeft.logs import quiet_libraries

    quiet_libraries()
    started = time.perf_counter()
    result = json.loads(args.output.read_text()) if args.output.is_file() else {}
    methods = args.methods.split(",") if args.methods else None
    for task in args.task or sorted(SETUPS):
        measured = measure(task, methods, lambda text: print(text, flush=True))
        if methods and task in result:  # a partial run updates the methods it measured
            result[task]["methods"].update(measured.pop("methods"))
            result[task].update(measured)
        else:
            result[task] = measured
    result["about"] = ("each method's pilot beside LoRA's on the embedded model: init_steps, its one-off "
                       "initialisation in LoRA steps; step_ratio, its seconds a step over LoRA's "
                       "(benchmarks/pilot_costs.py)")
    args.output.write_text(json.dumps(dict(sorted(result.items())), indent=1, sort_keys=False) + "\n")
    print(f"wrote {args.output} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
