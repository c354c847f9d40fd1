"""The ``autopeft`` command. Heavy libraries are imported inside the commands that need them."""

from __future__ import annotations

import json
import sys

import click

from .errors import AutopeftError, BadInputError


class _Group(click.Group):
    """Turns autopeft's typed errors into one line on stderr and the documented exit status."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except AutopeftError as exc:
            click.echo(f"autopeft: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("autopeft: interrupted", err=True)
            sys.exit(130)


def run() -> None:
    """The console entry point: click's usage errors become one line and exit status 2 too."""
    try:
        main.main(standalone_mode=False)
    except click.UsageError as exc:
        click.echo(f"autopeft: error: {exc.format_message()} (see --help)", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("autopeft: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"autopeft: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="autopeft")
def main():
    """Choose the parameter-efficient fine-tuning method that suits your data, model and hardware.

    Exit status: 0 ok, 2 bad input or usage, 3 no method satisfies the constraints, 1 anything else.
    """


def _quiet_libraries() -> None:
    """Library deprecation chatter is for autopeft's developers, not its users."""
    import logging
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in ("transformers", "peft", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2))


def _warn_plugin_failures() -> None:
    from .plugins import plugin_failures

    for failure in plugin_failures():
        click.echo(f"autopeft: warning: plugin {failure.plugin} ({failure.source}) skipped: {failure.error}", err=True)


@main.command()
@click.option("--task", type=click.Choice(["causal-lm", "seq-cls"]), help="Only methods supporting this task.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list on stdout.")
def methods(task, as_json):
    """List installed fine-tuning methods with their capabilities."""
    from . import list_methods

    infos = list_methods(task)
    _warn_plugin_failures()
    if as_json:
        _emit_json([i.model_dump(mode="json") for i in infos])
        return
    flags = (("merge", "merge"), ("quantized", "quant"), ("multi_adapter", "multi"), ("lora_convertible", "to-lora"))
    rows = [("name", "family", "tasks", "capabilities", "source", "description")]
    for i in infos:
        caps = ",".join(label for key, label in flags if getattr(i.capabilities, key)) or "-"
        desc = i.description if i.available else f"UNAVAILABLE: {i.unavailable_reason}"
        rows.append((i.name, i.family, ",".join(i.tasks), caps, i.source, desc))
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    for r in rows:
        click.echo("  ".join(r[c].ljust(widths[c]) for c in range(5)) + "  " + r[5])


@main.command()
def plugins():
    """Show loaded plugins, the methods each provides, and any that were skipped (JSON)."""
    from .plugins import get_methods, plugin_failures

    by_source: dict[str, list[str]] = {}
    for method in get_methods().values():
        by_source.setdefault(method.source, []).append(method.name)
    _emit_json({"plugins": [{"source": s, "methods": m} for s, m in sorted(by_source.items())],
                "skipped": [f.__dict__ for f in plugin_failures()]})


def _parse_setting(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise BadInputError(f"settings are KEY=VALUE, got {text!r}", source="--set")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw.split(",") if "," in raw else raw
    return key.strip(), value


@main.command()
@click.option("--model", "-m", help="Embedded name, local model dir (config.json is enough) or Hub id. "
              "Default: the task's embedded model.")
@click.option("--method", help="Method name (see `autopeft methods`).")
@click.option("--set", "-s", "settings", multiple=True, metavar="KEY=VALUE", help="A method setting; repeatable.")
@click.option("--peft-config", "peft_configs", multiple=True, type=click.Path(dir_okay=True),
              help="A PEFT adapter_config.json instead of --method; repeat for several (prints a JSON list).")
@click.option("--task", type=click.Choice(["causal-lm", "seq-cls"]), help="Default: from the adapter config, else causal-lm.")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--seq-len", type=click.IntRange(min=1), default=512, show_default=True, help="Tokens per example.")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), help="Default: bf16 on accelerators, fp32 on CPU.")
@click.option("--device", type=click.Choice(["cuda", "cpu", "mps"]), default="cuda", show_default=True)
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=False, show_default=True)
@click.option("--num-labels", type=click.IntRange(min=1), default=2, show_default=True, help="Classes, for seq-cls.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's own Python code (off by default).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def estimate(model, method, settings, peft_configs, task, batch_size, seq_len, dtype, device,
             gradient_checkpointing, num_labels, trust_remote_code, as_json):
    """Exact trainable parameters and adapter size, and predicted peak training memory. No weights are loaded."""
    _quiet_libraries()
    from .adapter_config import read_adapter_config

    if method and peft_configs and len(peft_configs) > 1:
        raise BadInputError("--method with several --peft-config files is ambiguous; give one file", source="--method")
    if not method and not peft_configs:
        raise BadInputError("give --method NAME or --peft-config FILE", source="estimate")
    values = dict(_parse_setting(s) for s in settings)
    if values and peft_configs:
        raise BadInputError("--set applies to --method, not to --peft-config files", source="--set")
    configs = [read_adapter_config(p) for p in peft_configs] or [None]

    from .costmodel import estimate as run_estimate
    from .models import default_model, load_config

    loaded = {}
    results = []
    for cfg in configs:
        from .costmodel import _task_of

        this_task = task or _task_of(cfg) or "causal-lm"
        name = model or default_model(this_task)
        if name not in loaded:
            loaded[name] = load_config(name, trust_remote_code=trust_remote_code)
        results.append(run_estimate(
            name, method, settings=values, peft_config=cfg, task=this_task, batch_size=batch_size,
            seq_len=seq_len, dtype=dtype, device=device, gradient_checkpointing=gradient_checkpointing,
            num_labels=num_labels, trust_remote_code=trust_remote_code, config=loaded[name]))
    if as_json:
        docs = [r.model_dump(mode="json") for r in results]
        _emit_json(docs if len(peft_configs) > 1 else docs[0])
        return
    for r in results:
        _print_estimate(r)


def _print_estimate(r) -> None:
    from .sizes import format_count, format_size

    b = r.breakdown
    click.echo(f"{r.method} on {r.model} ({r.task}), {r.device} {r.dtype}, batch {r.batch_size} x {r.seq_len} tokens"
               f"{', gradient checkpointing' if r.gradient_checkpointing else ''}")
    click.echo(f"  trainable params  {format_count(r.trainable_params)} of {format_count(r.total_params)} "
               f"({100 * r.trainable_params / r.total_params:.3g}%)  [{r.trainable_params:,}]")
    click.echo(f"  adapter file      {format_size(r.adapter_bytes)}")
    click.echo(f"  peak memory       {format_size(r.peak_memory_bytes)}  (at the {r.peak_phase})")
    for label, value in (("weights", b.weights), ("gradients", b.gradients), ("optimizer", b.optimizer),
                         ("activations", b.activations), ("logits/loss", b.logits), ("overhead", b.overhead)):
        click.echo(f"    {label:<14} {format_size(value):>10}")
    other = r.peak_memory_bytes_without_checkpointing if r.gradient_checkpointing else r.peak_memory_bytes_with_checkpointing
    click.echo(f"  {'without' if r.gradient_checkpointing else 'with'} gradient checkpointing: {format_size(other)}")
