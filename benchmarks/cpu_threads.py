"""What OpenMP's wait policy costs a CPU training step, on an idle machine and with one core busy.

The README tells users of a shared CPU to set ``OMP_WAIT_POLICY=PASSIVE`` (see
``docs/design/cpu-threads.md``). This times a training step under libgomp's default and under
``PASSIVE``, side by side in one run. Each timing is its own process, since OpenMP reads the variable
once, when torch loads. It is timed twice: with the machine as it is, and with one more process
spinning on a core, as a second job or a browser would.

Two workloads, each the median of ``--repeats`` alternating runs:

- ``stack``: forward and backward through 30 linear layers 576 wide (SmolLM2-135M's width) on 512
  rows, at torch's default thread count (one per core);
- ``lora``: 4 steps of ``autopeft train`` with LoRA on the embedded SmolLM2-135M and the README's
  example data, as a pilot trains (``--skip-lora`` leaves it out).

    python benchmarks/cpu_threads.py [--repeats 3] [--skip-lora]

Writes ``benchmarks/results/cpu_threads.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POLICIES = {"default": None, "PASSIVE": "PASSIVE"}

STACK = """
import time, torch
layers = torch.nn.Sequential(*[torch.nn.Linear(576, 576) for _ in range(30)])
x = torch.randn(512, 576)
for _ in range(3):
    layers(x).sum().backward()
started = time.perf_counter()
for _ in range(20):
    layers(x).sum().backward()
print((time.perf_counter() - started) / 20)
"""

LORA = """
import sys, tempfile
import autopeft
run = autopeft.train(sys.argv[1], method="lora", output_dir=tempfile.mkdtemp() + "/run", max_steps=4, batch_size=8)
print(run.train_seconds / run.steps)
"""


def timed(code: str, policy: str | None, *args: str) -> float:
    """Seconds a step of ``code``, run in a fresh interpreter under ``policy`` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"cpu_threads: a timed run failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-lora", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cpu_threads.md"))
    args = parser.parse_args()

    workloads = {"stack": (STACK,)}
    if not args.skip_lora:
        workloads["lora"] = (LORA, str(ROOT / "examples" / "instructions.jsonl"))
    rows = []
    for load in ("as it is", "one core busy"):
        spinner = None
        if load == "one core busy":
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(1)
        try:
            for name, (code, *extra) in workloads.items():
                seconds = {p: [] for p in POLICIES}
                for _ in range(args.repeats):
                    for policy, value in POLICIES.items():
                        seconds[policy].append(timed(code, value, *extra))
                medians = {p: statistics.median(v) for p, v in seconds.items()}
                rows.append((load, name, medians))
                print(f"{load}, {name}: " + ", ".join(f"{p} {1000 * s:.0f} ms" for p, s in medians.items()), flush=True)
        finally:
            if spinner:
                spinner.kill()
                spinner.wait()
    shown = " ".join(["python benchmarks/cpu_threads.py", *sys.argv[1:]])
    lines = [f"# `{shown}` ({time.strftime('%Y-%m-%d')})", "",
             f"{os.cpu_count()} CPU cores; torch's default thread count. A step's time in milliseconds (for lora, "
             f"the run's train_seconds over its steps, evaluations included), the median of {args.repeats} runs "
             "of each, the policies alternating; \"one core busy\": one more process spinning.",
             "", "| machine | workload | default (ms) | PASSIVE (ms) | default / PASSIVE |", "|---|---|---:|---:|---:|"]
    for load, name, medians in rows:
        lines.append(f"| {load} | {name} | {1000 * medians['default']:.0f} | {1000 * medians['PASSIVE']:.0f} | "
                     f"{medians['default'] / medians['PASSIVE']:.2f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
