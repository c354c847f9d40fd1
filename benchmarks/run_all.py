"""The whole benchmark suite, then the results page (docs/benchmarks.md), from one command.

Each step is a script of this directory; its output lands in ``benchmarks/results/``. The slow
steps (training every method, hours on 2 CPU cores) resume where they stopped, so the suite can be
interrupted and started again. ``--page-only`` rebuilds the page from the results already there.

    python benchmarks/run_all.py [--only NAME[,NAME]] [--page-only]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GSM8K = ["autopeft", "bench", "../shared/data/gsm8k/train.jsonl", "--benchmark", "autopeft/gsm8k-120-smollm2-135m",
         "--model", "smollm2-135m", "--max-examples", "120", "--max-length", "160", "--batch-size", "4",
         "--epochs", "1", "--eval-steps", "6", "--learning-rates", "2",
         # 27 steps want rates far above the methods' defaults: up to 4 past the planned ones
         "--edge-rates", "4", "--methods",
         "lora,dora,rslora,pissa,vera,ia3,oft,loha,lokr,miss,prompt_tuning,full",
         "-o", "benchmarks/results/bench/gsm8k-smollm2"]

SST2 = ["autopeft", "bench", "../shared/data/sst2/train.tsv", "--benchmark", "autopeft/sst2-2k-3ep-minilm-l6",
        "--model", "minilm-l6", "--validation", "../shared/data/sst2/dev.tsv", "--max-examples", "2000",
        "--max-length", "128", "--batch-size", "32", "--epochs", "3", "--eval-steps", "1000", "--learning-rates", "3",
        # the most used methods first, so a bench stopped early has them
        "--methods", "lora,full,ia3,vera,pissa,dora,oft,loha,lokr,miss,shira,vblora,prompt_tuning,ln_tuning,rslora,"
        "loraplus,lorafa,fourierft,gralora,randlora,lily,galore,ptuning,prefix_tuning,adalora,beft,boft,c3a",
        "-o", "benchmarks/results/bench/sst2-minilm"]

# a second model on SST-2: a decoder, which classifies from its last token rather than a CLS token
SST2_SMOLLM2 = ["autopeft", "bench", "../shared/data/sst2/train.tsv",
                "--benchmark", "autopeft/sst2-1k-1ep-smollm2-135m", "--model", "smollm2-135m",
                "--validation", "../shared/data/sst2/dev.tsv", "--max-examples", "1000", "--max-length", "64",
                "--batch-size", "16", "--epochs", "1", "--eval-steps", "1000", "--learning-rates", "2", "--methods",
                "lora,full,dora,ia3,vera,pissa,oft,loha,lokr,miss,ln_tuning,prompt_tuning,rslora",
                "-o", "benchmarks/results/bench/sst2-smollm2"]

# SST-2 again, with a held-out quarter of the sample evaluated every tenth of the run and the dev set only
# scored at the end (--test): whether a pilot's held-out loss ranks better than its training loss
SST2_HELDOUT = ["autopeft", "bench", "../shared/data/sst2/train.tsv",
                "--benchmark", "autopeft/sst2-900-2ep-heldout-minilm-l6", "--model", "minilm-l6",
                "--test", "../shared/data/sst2/dev.tsv", "--max-examples", "1200", "--validation-fraction", "0.25",
                "--max-length", "64", "--batch-size", "32", "--epochs", "2", "--eval-steps", "6",
                "--early-stopping", "0", "--save-steps", "100000", "--learning-rates", "2", "--methods",
                "lora,full,dora,ia3,vera,pissa,oft,loha,lokr,miss,ln_tuning,prompt_tuning,rslora,shira,vblora,"
                "gralora,randlora,lily", "-o", "benchmarks/results/bench/sst2-heldout-minilm"]

# a classification task on other data than SST-2 (see benchmarks/derive_gsm8k.py), set up as the
# held-out SST-2 bench is: a held-out quarter evaluated as it trains, the test split scored at the end
GSM8K_STEPS = ["autopeft", "bench", "benchmarks/results/derived/gsm8k-steps-train.jsonl",
               "--benchmark", "autopeft/gsm8k-steps-900-2ep-minilm-l6", "--model", "minilm-l6",
               "--test", "benchmarks/results/derived/gsm8k-steps-test.jsonl", "--max-examples", "1200",
               "--validation-fraction", "0.25", "--max-length", "128", "--batch-size", "32", "--epochs", "2",
               "--eval-steps", "6", "--early-stopping", "0", "--save-steps", "100000", "--learning-rates", "2",
               "--methods", "lora,full,dora,ia3,vera,pissa,oft,loha,lokr,miss,ln_tuning,prompt_tuning,rslora,shira,"
               "vblora,gralora,randlora,lily", "-o", "benchmarks/results/bench/gsm8k-steps-minilm"]

# a second one from GSM8K, which the words of a question tell (does its solution divide?), added after
# the recommender's rate slopes were chosen: a task that choice never saw. Set up as the one above, with
# the held-out quarter evaluated 4 times a run rather than 19, to keep the bench near 45 minutes
GSM8K_DIVISION = ["autopeft", "bench", "benchmarks/results/derived/gsm8k-division-train.jsonl",
                  "--benchmark", "autopeft/gsm8k-division-900-2ep-minilm-l6", "--model", "minilm-l6",
                  "--test", "benchmarks/results/derived/gsm8k-division-test.jsonl", "--max-examples", "1200",
                  "--validation-fraction", "0.25", "--max-length", "128", "--batch-size", "32", "--epochs", "2",
                  "--eval-steps", "29", "--early-stopping", "0", "--save-steps", "100000", "--learning-rates", "2",
                  "--methods", GSM8K_STEPS[GSM8K_STEPS.index("--methods") + 1],
                  "-o", "benchmarks/results/bench/gsm8k-division-minilm"]

sys.path.insert(0, str(Path(__file__).resolve().parent))
from new_tasks import TASKS as NEW_TASKS  # noqa: E402  (a sibling script)

#: the seed studies of the newer tasks that reran fewer than the default 5 best configurations
NEW_TASK_SEED_TOP = {"trec": 4, "tweeteval-emotion": 4, "clinc150-domains": 4, "svamp": 4}


#: name, command, the Markdown file its stdout becomes (None: the script writes its own), rough time
STEPS = [
    ("cost_model_peft", [sys.executable, "benchmarks/cost_model_peft.py", "--json",
                         "benchmarks/results/cost_model_peft.json"], "cost_model_peft.md", "1 min"),
    ("cpu_memory", [sys.executable, "benchmarks/cpu_memory.py", "--json", "benchmarks/results/cpu_memory.json"],
     "cpu_memory.md", "25 min"),
    ("train_quality", [sys.executable, "benchmarks/train_quality.py"], None, "40 min"),
    ("train_throughput", [sys.executable, "benchmarks/train_throughput.py"], "train_throughput.md", "10 min"),
    ("cpu_threads", [sys.executable, "benchmarks/cpu_threads.py"], None, "20 min"),
    ("bench_gsm8k", GSM8K, None, "90 min"),
    ("bench_sst2", SST2, None, "100 min"),
    ("bench_sst2_smollm2", SST2_SMOLLM2, None, "90 min"),
    ("bench_sst2_heldout", SST2_HELDOUT, None, "25 min"),
    ("derive_gsm8k", [sys.executable, "benchmarks/derive_gsm8k.py"], None, "5 s"),
    ("bench_gsm8k_steps", GSM8K_STEPS, None, "90 min"),
    ("bench_gsm8k_division", GSM8K_DIVISION, None, "45 min"),
    ("sst2_epochs", [sys.executable, "benchmarks/sst2_epochs.py", "--epochs", "5"], None, "30 min"),
    ("sst2_epochs_8", [sys.executable, "benchmarks/sst2_epochs.py", "--epochs", "8"], None, "30 min"),
    # the methods still below 80%: longer, or at a lower rate where more epochs overfit
    ("sst2_epochs_12", [sys.executable, "benchmarks/sst2_epochs.py", "--epochs", "12", "--methods",
                        "beft,prompt_tuning,beft@0.02,vera@0.01,fourierft@0.02,ptuning@0.01"], None, "30 min"),
    ("sst2_epochs_20", [sys.executable, "benchmarks/sst2_epochs.py", "--epochs", "20", "--methods", "prompt_tuning"],
     None, "8 min"),
    ("sst2_epochs_rates_5", [sys.executable, "benchmarks/sst2_epochs.py", "--epochs", "5", "--methods",
                             "ln_tuning@0.01,fourierft@0.125"], None, "4 min"),
    ("sst2_epochs_rates_8", [sys.executable, "benchmarks/sst2_epochs.py", "--epochs", "8", "--methods",
                             "vera@0.02,ptuning@0.02,ln_tuning@0.01,fourierft@0.125,vera@0.01"], None, "12 min"),
    # the benches on the newer data sets: each converts its data set, then runs or continues its bench,
    # shortest first; a bench ships as profiles once it has finished
    *((f"bench_{t.name.replace('-', '_')}", [sys.executable, "benchmarks/new_tasks.py", "bench", t.name], None,
       f"{t.minutes} min") for t in sorted(NEW_TASKS.values(), key=lambda t: t.minutes)),
    ("new_tasks_report", [sys.executable, "benchmarks/new_tasks.py", "report"], None, "1 s"),
    ("make_profiles", [sys.executable, "benchmarks/make_profiles.py"], None, "10 s"),
    ("profile_memory", [sys.executable, "benchmarks/profile_memory.py", "--json",
                        "benchmarks/results/profile_memory.json"], "profile_memory.md", "1 min"),
    ("replay_peft", [sys.executable, "benchmarks/replay_peft.py"], None, "10 s"),
    # beside the bench's best five (DoRA 3e-3 among them, today's leave-one-task-out pick), the two it picked
    # with one rate slope: a rate past the method's range
    ("seed_noise", [sys.executable, "benchmarks/seed_noise.py", "--also", "lora@0.0111", "--also", "shira@0.027"],
     None, "15 min"),
    # the held-out classification task: most of its runs end at the majority class; how much of its
    # ranking would another seed keep? beside its best five, leave-one-task-out's pick at budget 0.1
    ("seed_noise_division", [sys.executable, "benchmarks/seed_noise.py", "--bench",
                             "benchmarks/results/bench/gsm8k-division-minilm", "--also", "ia3@0.005"], None, "20 min"),
    # the other GSM8K-derived task: beside its best five, leave-one-task-out's usual pick at budget 0.1
    ("seed_noise_steps", [sys.executable, "benchmarks/seed_noise.py", "--bench",
                          "benchmarks/results/bench/gsm8k-steps-minilm", "--also", "lokr@0.001"], None, "30 min"),
    # the other two SST-2 benches, whose best five end within 1.3 and 0.5 points: beside them, the
    # picks leave-one-task-out makes most often at budget 0.15 past the five
    ("seed_noise_sst2_minilm", [sys.executable, "benchmarks/seed_noise.py", "--bench",
                                "benchmarks/results/bench/sst2-minilm", "--also", "vblora@0.01"], None, "25 min"),
    ("seed_noise_sst2_smollm2", [sys.executable, "benchmarks/seed_noise.py", "--bench",
                                 "benchmarks/results/bench/sst2-smollm2", "--also", "rslora@0.001"], None, "40 min"),
    # the newer data sets' best configurations at seeds 1 to 3 (a quarter of a bench's runs; TREC,
    # TweetEval, CLINC150 and SVAMP were studied with their best four)
    *((f"seed_noise_{t.name.replace('-', '_')}", [sys.executable, "benchmarks/seed_noise.py", "--bench",
                                                 f"benchmarks/results/bench/{t.name}", "--top",
                                                 str(NEW_TASK_SEED_TOP.get(t.name, 5))], None, f"{t.minutes // 4} min")
      for t in sorted(NEW_TASKS.values(), key=lambda t: t.minutes)),
    # the seed reruns become profile records (profiles/seeds-*.jsonl); the benches get their data's fingerprint
    ("profile_evidence", [sys.executable, "benchmarks/profile_evidence.py"], None, "5 s"),
    # after the seed-noise steps: it sets each task's regret beside that task's floor
    ("leave_one_task_out", [sys.executable, "benchmarks/leave_one_task_out.py"], None, "10 s"),
    # each data source left out whole; refits the confidence shipped in autopeft/resources/confidence.json
    ("leave_one_source_out", [sys.executable, "benchmarks/leave_one_task_out.py", "--sources", "--write-calibration"],
     None, "20 s"),
    # where the pilots' learning rates come from: each method's range, or the benches like the job
    ("pilot_rates", [sys.executable, "benchmarks/pilot_rates.py"], None, "10 s"),
    ("pilot_coverage", [sys.executable, "benchmarks/pilot_coverage.py"], None, "25 min"),
    ("sst2_choice", [sys.executable, "benchmarks/sst2_choice.py", "--pilot-budget", "90s"], None, "5 min"),
    # the limit is 15% of the brute force (18 min): the budget that spends close to it
    ("sst2_choice_150s", [sys.executable, "benchmarks/sst2_choice.py", "--pilot-budget", "150s"], None, "5 min"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated step names: " + ", ".join(s[0] for s in STEPS))
    parser.add_argument("--page-only", action="store_true")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    known = [s[0] for s in STEPS]
    unknown = [name for name in sorted(only or ()) if name not in known]
    if unknown:
        from autopeft.errors import unknown_names

        parser.error(str(unknown_names("step", unknown, known, source="--only", listing="--help lists them")))
    steps = [] if args.page_only else [s for s in STEPS if only is None or s[0] in only]
    print(f"{len(steps)} steps: " + ", ".join(f"{name} (~{eta})" for name, _, _, eta in steps), flush=True)
    for name, command, markdown, _ in steps:
        started = time.perf_counter()
        print(f"== {name}: {' '.join(command)}", flush=True)
        if markdown is None:
            code = subprocess.call(command, cwd=ROOT)
        else:
            done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
            code = done.returncode
            shown = " ".join(c if c != sys.executable else "python" for c in command)
            (RESULTS / markdown).write_text(f"# `{shown}` on {time.strftime('%Y-%m-%d')}\n\n{done.stdout}")
        if code != 0:
            print(f"== {name} failed with exit status {code}", file=sys.stderr)
            return code
        print(f"== {name}: {time.perf_counter() - started:.0f} s", flush=True)
    return subprocess.call([sys.executable, "benchmarks/results_page.py"], cwd=ROOT)


if __name__ == "__main__":
    raise SystemExit(main())
