"""Write docs/benchmarks.md, and its plots, from the suite's results (``benchmarks/results/``) and
the shipped profile records; every table on the page is a results file, as its script wrote it.

    python benchmarks/results_page.py      # (python benchmarks/run_all.py runs the suite first)
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"
IMG = DOCS / "img"

SECTIONS = [
    ("Choosing: the recommender", [
        ("Replay on the PEFT method-comparison results", "replay_peft.md"),
        ("Leave one task out", "leave_one_task_out.md"),
        ("Leave one data source out: choices judged by means over seeds, and how sure they are",
         "leave_one_source_out.md"),
        ("Pilot learning rates: each method's range against the benches like the job", "pilot_rates.md"),
        ("Pilot coverage on short jobs: the default budget against 15% of the run", "pilot_coverage.md"),
        ("How much of a bench's ranking is training noise", "seed_noise-*.md"),
        ("Live on SST-2: `recommend` against training every candidate", "sst2_choice.md"),
    ]),
    ("Training", [
        ("The newer data sets: best method per task, and LoRA's place", "new_tasks.md"),
        ("Does every method learn?", "train_quality.md"),
        ("SST-2: the methods below 80% with longer training", "sst2_epochs.md"),
        ("Throughput against a plain transformers + peft script", "train_throughput.md"),
        ("A shared CPU: OpenMP's wait policy, idle and with one core busy", "cpu_threads.md"),
    ]),
    ("The cost model", [
        ("Against the 63 PEFT method-comparison runs (Llama-3.2-3B, bf16, L40S)", "cost_model_peft.md"),
        ("Against CPU training here", "cpu_memory.md"),
        ("Against every bench run here, with today's cost model", "profile_memory.md"),
    ]),
]


def main() -> int:
    from autopeft.profiles import load_records

    IMG.mkdir(parents=True, exist_ok=True)
    records = load_records(store=False)
    lines = ["# Benchmarks", "",
             f"Generated on {time.strftime('%Y-%m-%d')} by `python benchmarks/results_page.py` from the results of "
             "`python benchmarks/run_all.py` (the whole suite: a few hours on 2 CPU cores; it resumes where it "
             "stopped). Each table below is the output of the script named in its first line; data comes from "
             "`../shared/data`.", ""]
    lines += ["## Quality against peak memory, per task", "",
              "Every profile record with a score and a measured peak, the seed studies' reruns left out (a lucky "
              "seed is not a configuration); the Pareto frontier (no run both better and smaller) is joined and "
              "labelled.", ""]
    for benchmark in sorted({r.benchmark for r in records}):
        image = _quality_memory_plot(benchmark, [r for r in records if r.benchmark == benchmark and r.seed is None])
        if image:
            lines += [f"![{benchmark}](img/{image.name})", ""]
    image = _memory_plot(records)
    if image:
        lines += ["## Predicted against measured peak memory", "",
                  "The cost model's prediction against the measured peak: the PEFT runs (GPU allocator peak), CPU "
                  "training here (peak resident memory), and every profile record that carries both.", "",
                  f"![predicted against measured memory](img/{image.name})", ""]
    lines += _bench_tables(records)
    for title, parts in SECTIONS:
        lines += [f"## {title}", ""]
        for subtitle, name in parts:
            # a name with a * is one result per bench (seed_noise-<bench>.md), shown one after another
            paths = sorted(RESULTS.glob(name)) if "*" in name else [RESULTS / name]
            lines += [f"### {subtitle}", ""]
            lines += [text for path in paths if path.is_file() for text in (_demoted(path.read_text()), "")]
            if not any(path.is_file() for path in paths):
                lines += [f"(no results yet: `{name}` is missing)", ""]
    (DOCS / "benchmarks.md").write_text("\n".join(lines))
    print(f"wrote {DOCS / 'benchmarks.md'}")
    return 0


def _bench_tables(records) -> list[str]:
    """One table per learning-rate sweep (an ``autopeft bench``): each method at its best learning rate."""
    lines = []
    rates: dict[tuple[str, str], set] = {}
    for r in records:
        if "autopeft bench" in r.source:  # run by `autopeft bench`, directly or by new_tasks.py
            rates.setdefault((r.benchmark, r.method), set()).add(r.learning_rate)
    for benchmark in sorted({b for (b, _), lrs in rates.items() if len(lrs) > 1}):
        runs = [r for r in records if r.benchmark == benchmark and r.seed is None]  # the bench's own runs
        scored = [r for r in runs if r.score is not None]
        higher = scored[0].higher_is_better if scored else True
        lines += [f"### `autopeft bench`: {benchmark}", "",
                  f"Each method at the best of its learning rates ({scored[0].metric if scored else 'score'}, "
                  f"{'higher' if higher else 'lower'} is better); the bench's command is in its `bench.json`. "
                  "A best rate marked *highest tried* (or *lowest*) stayed at that edge even past the planned rates "
                  "(`--edge-rates`): that method's best may lie further out.", "",
                  "| method | best lr | score | other learning rates | peak memory (MiB) | train s |",
                  "|---|---:|---:|---|---:|---:|"]
        by_method = {}
        for r in runs:
            by_method.setdefault(r.method, []).append(r)
        def best_of(group):
            ok = [r for r in group if r.score is not None]
            return max(ok, key=lambda r: r.quality()) if ok else None
        order = sorted(by_method, key=lambda m: -(best_of(by_method[m]).quality() if best_of(by_method[m]) else -1e9))
        for method in order:
            group, best = by_method[method], best_of(by_method[method])
            if best is None:
                lines.append(f"| {method} | - | failed | {group[0].error or ''} | - | - |")
                continue
            others = ", ".join(f"{r.learning_rate:g}: {r.score:.4f}" if r.score is not None else
                               f"{r.learning_rate:g}: failed"
                               for r in sorted(group, key=lambda r: r.learning_rate) if r is not best)
            tried = [r.learning_rate for r in group]
            edge = ("" if len(set(tried)) < 2 else " (*highest tried*)" if best.learning_rate == max(tried) else
                    " (*lowest tried*)" if best.learning_rate == min(tried) else "")
            lines.append(f"| {method} | {best.learning_rate:g}{edge} | {best.score:.4f} | {others} | "
                         f"{(best.peak_memory_bytes or 0) / 2**20:,.0f} | {best.train_seconds or 0:.0f} |")
        lines.append("")
    return (["## Benches", ""] + lines) if lines else []


def _demoted(markdown: str) -> str:
    """A results file inside a section: its own headings become bold lines."""
    return re.sub(r"^#+ (.*)$", r"**\1**", markdown.strip(), flags=re.M)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _quality_memory_plot(benchmark: str, records) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r.peak_memory_bytes / 2**30, r.score, r.experiment) for r in records
              if r.score is not None and r.peak_memory_bytes]
    if len(points) < 3:
        return None
    higher = records[0].higher_is_better
    front = _front(points, higher)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([p[0] for p in points], [p[1] for p in points], s=14, color="0.6")
    ax.plot([p[0] for p in front], [p[1] for p in front], "o-", color="C0", ms=5)
    for i, (x, y, name) in enumerate(front):
        ax.annotate(_label(name), (x, y), fontsize=7, xytext=(4, -9 if i % 2 else 3), textcoords="offset points")
    ax.set_xlabel("peak memory (GiB)")
    ax.set_ylabel(f"{records[0].metric} ({'higher' if higher else 'lower'} is better)")
    ax.set_title(benchmark, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = IMG / f"quality-memory-{_slug(benchmark)}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label(experiment: str) -> str:
    """'lora/llama-3.2-3B-rank64-rslora' -> 'lora rank64-rslora': the model's name says nothing here."""
    method, _, rest = experiment.rpartition("/")
    rest = re.sub(r"^[A-Za-z]+-[\d.]+-[\d.]+[BbMm]-?", "", rest)
    return f"{method} {rest}".strip()[:30]


def _front(points, higher: bool):
    """Points no other point beats on both memory (lower) and score, by increasing memory."""
    better = (lambda a, b: a > b) if higher else (lambda a, b: a < b)
    front, best = [], None
    for x, y, name in sorted(points, key=lambda p: (p[0], -p[1] if higher else p[1])):
        if best is None or better(y, best):
            front.append((x, y, name))
            best = y
    return front


def _memory_plot(records) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    peft = RESULTS / "cost_model_peft.json"
    if peft.is_file():
        series["PEFT runs, GPU"] = [(r["memory_measured"] / 2**30, r["memory_predicted"] / 2**30)
                                    for r in json.loads(peft.read_text()) if "memory_predicted" in r]
    cpu = RESULTS / "cpu_memory.json"
    if cpu.is_file():
        series["CPU training here"] = [(r["peak_rss_bytes"] / 2**30, r["predicted_bytes"] / 2**30)
                                       for r in json.loads(cpu.read_text())["rows"] if r.get("predicted_bytes")]
    own = [(r.peak_memory_bytes / 2**30, r.estimated_peak_memory_bytes / 2**30) for r in records
           if r.peak_memory_bytes and r.estimated_peak_memory_bytes]
    if own:
        series["profile records"] = own
    if not any(series.values()):
        return None
    fig, ax = plt.subplots(figsize=(5.5, 5))
    top = max(max(m, p) for pts in series.values() for m, p in pts)
    ax.plot([0, top], [0, top], color="0.5", lw=1)
    for (label, pts), colour in zip(series.items(), ("C0", "C1", "C2")):
        errors = sorted(abs(p - m) / m for m, p in pts)
        median = errors[len(errors) // 2] if errors else 0
        ax.scatter([m for m, _ in pts], [p for _, p in pts], s=12, color=colour,
                   label=f"{label} ({len(pts)}, median error {100 * median:.1f}%)")
    ax.set_xlabel("measured peak (GiB)")
    ax.set_ylabel("predicted peak (GiB)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = IMG / "memory-predicted-measured.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
