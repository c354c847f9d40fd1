"""The ``autopeft`` command. Heavy libraries are imported inside the commands that need them."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from functools import partial

import click

from .errors import AutopeftError, BadInputError, first_line
from .logs import log_to_stderr, quiet_libraries
from .tasks import TASKS


class _Group(click.Group):
    """Turns autopeft's typed errors into one line on stderr and the documented exit status."""

    def invoke(self, ctx):
        from .processes import end_after_stop, handling_stop_signals, stop_exit_status, stop_word

        # SIGTERM (a scheduler stopping the job) stops a command as Ctrl-C does: 128 + the signal's number
        with handling_stop_signals():
            try:
                return super().invoke(ctx)
            except AutopeftError as exc:
                click.echo(f"autopeft: error: {exc}", err=True)
                sys.exit(exc.exit_code)
            except KeyboardInterrupt:
                end_after_stop()
                click.echo(f"autopeft: {stop_word()}", err=True)
                sys.exit(stop_exit_status())
            except (click.exceptions.Exit, click.ClickException, click.Abort):
                raise
            except Exception as exc:
                if os.environ.get("AUTOPEFT_DEBUG"):
                    raise
                click.echo(f"autopeft: error: unexpected {type(exc).__name__}: {first_line(exc)} "
                           f"(AUTOPEFT_DEBUG=1 shows the traceback)", err=True)
                sys.exit(1)


class _Choice(click.Choice):
    """click's choice, whose refusal also names the closest choices ("did you mean 'merge'?")."""

    def convert(self, value, param, ctx):
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            from .errors import close_names, one_of

            choices = [str(c) for c in self.choices]
            close = close_names(str(value), choices)
            hint = f"did you mean {one_of(close)}?" if close else f"choose from {', '.join(choices)}"
            self.fail(f"unknown value {value!r}; {hint}", param, ctx)


def run() -> None:
    """The console entry point: click's usage errors become one line and exit status 2 too."""
    try:
        _run()
    except SystemExit as exc:
        if exc.code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
            # stopped, its children ended and its last line said: a signal still on its way (a second
            # Ctrl-C) must not turn the exit into a traceback or an exit by signal
            from .processes import STOP_SIGNALS

            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.SIG_IGN)
            # CPython remembers a KeyboardInterrupt that passed through a string run by exec() (dataclass
            # and namedtuple build their methods so), even one caught, and `python -m` then ends by SIGINT
            # rather than with this status; the next string exec() runs cleanly clears that memory
            exec("")
        raise


def _run() -> None:
    try:
        main.main(standalone_mode=False)
    except click.UsageError as exc:
        click.echo(f"autopeft: error: {exc.format_message()} (see --help)", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):  # Ctrl-C before a command's own handling starts, or after it ends
        click.echo("autopeft: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"autopeft: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="autopeft")
@click.option("--no-plugins", is_flag=True, help="Load only autopeft's own methods, no third-party plugin.")
@click.option("--plugins", "allowed", metavar="NAMES",
              help="Load only these plugins (comma-separated entry-point or package names; `autopeft` is the "
                   "built-in methods). Same as AUTOPEFT_LOAD_PLUGINS.")
def main(no_plugins, allowed):
    """Choose the parameter-efficient fine-tuning method that suits your data, model and hardware.

    Exit status: 0 ok, 2 bad input or usage, 3 no method satisfies the constraints, 130 stopped by Ctrl-C
    and 143 by SIGTERM (what was finished is kept), 1 anything else.
    """
    if no_plugins and allowed:
        raise click.UsageError("--no-plugins and --plugins exclude each other")
    if allowed:
        from .methods.registry import check_plugin_names

        check_plugin_names(allowed.split(","), source="--plugins")
    if no_plugins or allowed:
        # an environment variable, so that pilot and training processes load the same set
        os.environ["AUTOPEFT_LOAD_PLUGINS"] = "autopeft" if no_plugins else allowed


class _Dtype(click.Choice):
    """A floating-point format by autopeft's short name or torch's (``bfloat16``, ``float16``,
    ``float32``), given to the command by its short name."""

    def __init__(self, extra: tuple[str, ...] = ()):
        from .dtypes import SHORT_NAMES

        super().__init__([*extra, *SHORT_NAMES])

    def convert(self, value, param, ctx):
        from .dtypes import accepted_names, short_dtype

        if isinstance(value, str) and short_dtype(value):
            return short_dtype(value)
        if value in self.choices:
            return value
        from .errors import close_names, one_of

        known = [*self.choices[:-3], *accepted_names()]
        close = close_names(str(value), known)
        hint = f"; did you mean {one_of(close)}?" if close else ""
        self.fail(f"{value!r} is not one of {', '.join(known)}{hint}", param, ctx)


def _emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2))


def _warn_plugin_failures() -> None:
    from .methods.registry import plugin_failures

    for failure in plugin_failures():
        click.echo(f"autopeft: warning: plugin {failure.plugin} ({failure.source}) skipped: {failure.error}", err=True)


@main.command()
@click.option("--task", type=_Choice(TASKS), help="Only methods supporting this task.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list on stdout.")
def methods(task, as_json):
    """List installed fine-tuning methods with their capabilities.

    Capabilities are those found by trying them on a tiny model (merge, a second adapter, conversion
    to LoRA; a quantised base from PEFT's source on a machine without CUDA), stored for the built-ins
    and probed once, in seconds, for any other method. A flag the plugin declares but the probe did not
    find is shown as FLAG? (see the JSON's "probed" for why)."""
    from . import list_methods

    infos = list_methods(task)
    _warn_plugin_failures()
    if as_json:
        _emit_json([i.model_dump(mode="json") for i in infos])
        return
    flags = (("merge", "merge"), ("quantized", "quant"), ("multi_adapter", "multi"), ("lora_convertible", "to-lora"))
    rows = [("name", "family", "tasks", "capabilities", "source", "description")]
    for i in infos:
        caps = ",".join(_capability_label(i, key, label) for key, label in flags
                        if getattr(i.capabilities, key) or (i.probed and getattr(i.probed, key).value)) or "-"
        desc = i.description if i.available else f"UNAVAILABLE: {i.unavailable_reason}"
        rows.append((i.name, i.family, ",".join(i.tasks), caps, i.source, desc))
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    for r in rows:
        click.echo("  ".join(r[c].ljust(widths[c]) for c in range(5)) + "  " + r[5])


def _capability_label(info, key: str, label: str) -> str:
    """``label`` when found (or declared with nothing to probe); ``label?`` when declared but not found."""
    finding = getattr(info.probed, key) if info.probed else None
    return f"{label}?" if finding is not None and finding.value is not True else label


@main.command()
def plugins():
    """Show loaded plugins, the methods and task metrics each provides, and any that were skipped (JSON)."""
    from .methods.metrics import get_metrics, metric_failures
    from .methods.registry import get_methods, plugin_failures

    by_source: dict[str, dict[str, list[str]]] = {}
    for method in get_methods().values():
        by_source.setdefault(method.source, {"methods": [], "metrics": []})["methods"].append(method.name)
    for metric in get_metrics().values():
        by_source.setdefault(metric.source, {"methods": [], "metrics": []})["metrics"].append(metric.name)
    _emit_json({"plugins": [{"source": s, **provided} for s, provided in sorted(by_source.items())],
                "skipped": [f.__dict__ for f in [*plugin_failures(), *metric_failures()]]})


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list on stdout.")
def metrics(as_json):
    """List the task metrics `--metric` takes: scores of a causal-LM run's greedy answers against the
    references, built in or from plugins (the `register_metrics` hook)."""
    from .methods.metrics import list_metrics, metric_failures

    infos = list_metrics()
    for failure in metric_failures():
        click.echo(f"autopeft: warning: plugin {failure.plugin} ({failure.source}) skipped: {failure.error}", err=True)
    if as_json:
        _emit_json([i.model_dump(mode="json") for i in infos])
        return
    rows = [("name", "better", "source", "description")] + [(i.name, i.direction, i.source, i.description)
                                                            for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    for r in rows:
        click.echo("  ".join(r[c].ljust(widths[c]) for c in range(3)) + "  " + r[3])


def _parse_setting(text: str) -> tuple[str, object]:
    """KEY=VALUE: VALUE as JSON, else a comma-separated list, else a string. One module name
    (``target_modules=q_proj``) is a list of one: PEFT would read a string as a regular expression
    over whole module names, which a bare name never matches."""
    if "=" not in text:
        raise BadInputError(f"settings are KEY=VALUE, got {text!r}", source="--set")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw.split(",") if "," in raw else raw
    if key.endswith("_modules") and isinstance(value, str) and value != "all-linear" \
            and re.fullmatch(r"[\w.-]+", value):
        value = [value]
    return key, value


@main.command()
@click.option("--model", "-m", help="Embedded name, local model dir (config.json is enough) or Hub id. "
              "Default: the task's embedded model.")
@click.option("--method", help="Method name (see `autopeft methods`).")
@click.option("--set", "-s", "settings", multiple=True, metavar="KEY=VALUE", help="A method setting; repeatable.")
@click.option("--peft-config", "peft_configs", multiple=True, type=click.Path(dir_okay=True),
              help="A PEFT adapter_config.json instead of --method; repeat for several (prints a JSON list).")
@click.option("--task", type=_Choice(TASKS),
              help="Default: from the adapter config, else what the model is for.")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--seq-len", type=click.IntRange(min=1), default=512, show_default=True, help="Tokens per example.")
@click.option("--dtype", type=_Dtype(), help="bf16, fp16 or fp32 (or torch's names: bfloat16, float16, float32). "
              "Default: bf16 on accelerators, fp32 on CPU.")
@click.option("--device", type=_Choice(["cuda", "cpu", "mps"]), default="cuda", show_default=True)
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=False, show_default=True)
@click.option("--num-labels", type=click.IntRange(min=1), default=2, show_default=True, help="Classes (seq-cls) or tags (token-cls).")
@click.option("--num-processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes (devices) training together; memory is then per device.")
@click.option("--strategy", type=_Choice(["ddp", "zero1", "zero2", "zero3", "fsdp"]),
              help="How the processes split the state. Default: ddp with several.")
@click.option("--accelerate-config", type=click.Path(dir_okay=False),
              help="Read the strategy and the number of processes from an Accelerate config file.")
@click.option("--quantize", type=_Choice(["4bit", "8bit"]),
              help="The base's linear layers in 4 or 8 bits, as bitsandbytes stores them (QLoRA-style, CUDA).")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's own Python code (off by default).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def estimate(model, method, settings, peft_configs, task, batch_size, seq_len, dtype, device,
             gradient_checkpointing, num_labels, num_processes, strategy, accelerate_config, quantize,
             trust_remote_code, as_json):
    """Exact trainable parameters and adapter size, and predicted peak training memory. No weights are loaded.

    With several --peft-config files, one that cannot be estimated gets its own entry saying why (JSON:
    {"source": FILE, "error": REASON}) and the others are still computed. Exit status: 0 when all were
    estimated, 2 when every failure was bad input, 1 when any other failed.
    """
    quiet_libraries()
    log_to_stderr()  # warnings (an adapter config's keys the installed PEFT does not know)
    from .estimates import EstimateFailure, estimate_each, exit_status

    if method and peft_configs and len(peft_configs) > 1:
        raise BadInputError("--method with several --peft-config files is ambiguous; give one file", source="--method")
    if not method and not peft_configs:
        raise BadInputError("give --method NAME or --peft-config FILE", source="estimate")
    values = dict(_parse_setting(s) for s in settings)
    if values and peft_configs:
        raise BadInputError("--set applies to --method, not to --peft-config files", source="--set")
    if accelerate_config:
        from .training.launch import plan_of

        plan = plan_of(num_processes, accelerate_config)  # as train reads it: --num-processes wins
        strategy, num_processes = plan.strategy, plan.num_processes

    several = len(peft_configs) > 1
    items = [{"source": p, "peft_config": p} for p in peft_configs] or [{"source": "--method"}]
    results = estimate_each(
        items, keep_going=several, model=model, method=method, settings=values, task=task, batch_size=batch_size,
        seq_len=seq_len, dtype=dtype, device=device, gradient_checkpointing=gradient_checkpointing,
        num_labels=num_labels, trust_remote_code=trust_remote_code, strategy=strategy,
        num_processes=num_processes, quantize=quantize)
    if as_json and not several:
        _emit_json(results[0].model_dump(mode="json"))
    elif as_json:
        _emit_json([{"source": r.source, "error": r.error} if isinstance(r, EstimateFailure)
                    else {"source": item["source"], **r.model_dump(mode="json")} for item, r in zip(items, results)])
    else:
        for r in results:
            if isinstance(r, EstimateFailure):
                click.echo(f"{r.source}: not estimated: {r.error}")
            else:
                _print_estimate(r)
        failed = sum(isinstance(r, EstimateFailure) for r in results)
        if failed:
            click.echo(f"{len(results) - failed} of {len(results)} configs estimated; {failed} failed")
    if exit_status(results):
        sys.exit(exit_status(results))


def _print_estimate(r) -> None:
    from .sizes import format_count, format_size

    b = r.breakdown
    base = f"{r.quantize} base computing in {r.dtype}" if r.quantize else r.dtype
    click.echo(f"{r.method} on {r.model} ({r.task}), {r.device} {base}, batch {r.batch_size} x {r.seq_len} tokens"
               f"{', gradient checkpointing' if r.gradient_checkpointing else ''}")
    if r.num_processes > 1:
        click.echo(f"  {r.num_processes} processes, {r.strategy}: memory figures are per device")
    click.echo(f"  trainable params  {format_count(r.trainable_params)} of {format_count(r.total_params)} "
               f"({100 * r.trainable_params / r.total_params:.3g}%)  [{r.trainable_params:,}]")
    click.echo(f"  adapter file      {format_size(r.adapter_bytes)}")
    click.echo(f"  peak memory       {format_size(r.peak_memory_bytes)}  (at the {r.peak_phase})")
    for label, value in (("weights", b.weights), ("gradients", b.gradients), ("optimizer", b.optimizer),
                         ("activations", b.activations), ("logits/loss", b.logits),
                         ("communication", b.communication), ("overhead", b.overhead)):
        if label == "communication" and not value:
            continue
        click.echo(f"    {label:<14} {format_size(value):>10}")
    if b.init:
        where = "the peak" if r.peak_phase == "initialisation" else "below the training peak"
        click.echo(f"  initialisation from data: {format_size(b.init)} beside the weights, once before training ({where})")
    other = r.peak_memory_bytes_without_checkpointing if r.gradient_checkpointing else r.peak_memory_bytes_with_checkpointing
    click.echo(f"  {'without' if r.gradient_checkpointing else 'with'} gradient checkpointing: {format_size(other)}")


def _with(options: list):
    """A decorator that adds click ``options`` to a command, listed in its help in the order given."""
    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


def _training_options(command, outputs: bool = True):
    """Options shared by ``train``, ``tune`` and ``bench``: data, model, schedule and (unless
    ``outputs`` is false) where a single run's outputs go."""
    options = [
        click.argument("data", required=False, type=click.Path(dir_okay=True)),
        click.option("--model", "-m", help="Embedded name, local dir or Hub id. Default: the task's embedded model."),
        click.option("--validation", type=click.Path(dir_okay=True), help="Validation file. Default: split 10% off."),
        click.option("--test", type=click.Path(dir_okay=True),
                     help="Test file, scored once after training (never used to stop or choose)."),
        click.option("--task", type=_Choice(TASKS), help="Default: from the data format."),
        click.option("--epochs", type=click.FloatRange(min=0, min_open=True), help="Default 3."),
        click.option("--max-steps", type=click.IntRange(min=1), help="Stop after N optimizer steps."),
        click.option("--batch-size", "-b", type=click.IntRange(min=1), help="Default 8."),
        click.option("--gradient-accumulation", type=click.IntRange(min=1), help="Micro-batches per step."),
        click.option("--learning-rate", "--lr", type=click.FloatRange(min=0, min_open=True),
                     help="Default: the method's own."),
        click.option("--max-length", type=click.IntRange(min=8), help="Tokens per example (longer are cut). Default 512."),
        click.option("--max-examples", type=click.IntRange(min=1), help="Train on a seeded sample of N examples."),
        click.option("--gradient-checkpointing", is_flag=True, default=None, help="Less memory, ~30% slower."),
        click.option("--precision", type=_Dtype(extra=("auto",)),
                     help="auto, fp32, bf16 or fp16 (or bfloat16, float16, float32). Default: bf16/fp16 on GPUs, "
                          "fp32 on CPU."),
        click.option("--quantize", type=_Choice(["4bit", "8bit"]),
                     help="Load the base in 4 or 8 bits (QLoRA-style; CUDA with bitsandbytes, methods marked quant)."),
        click.option("--eval-steps", type=click.IntRange(min=1), help="Default: 5 evaluations per run."),
        click.option("--save-steps", type=click.IntRange(min=1), help="Checkpoint every N steps. Default: at evaluations."),
        click.option("--early-stopping", "early_stopping_patience", type=click.IntRange(min=0),
                     help="Stop after N evaluations without improvement (0: never). Default 3."),
        click.option("--report-to", metavar="NAMES", callback=_check_report_to,
                     help="Log to these experiment trackers (comma-separated: tensorboard, mlflow, wandb, trackio, "
                          "or any the Trainer supports; all: every one installed). Default: none."),
        *_task_metric_options(),
        *_data_shaping_options(),
        click.option("--trust-remote-code", is_flag=True, default=None, help="Allow the model's own Python code."),
        click.option("--allow-pickle", is_flag=True, default=None, help="Allow pickle (.bin) weights, which can run code."),
    ]
    if outputs:
        options += _output_options()
    return _with(options)(command)


def _check_report_to(ctx, param, value):
    """The trackers asked for, checked before anything runs (known names, installed packages)."""
    if value is None or ctx.resilient_parsing:
        return value
    from .training.tracking import check_trackers, split_trackers

    return ",".join(check_trackers(split_trackers(value))) or None
def _task_metric_options() -> list:
    """Scoring what a causal-LM run generates (see `autopeft metrics`)."""
    return [
        click.option("--metric", "metrics", multiple=True, metavar="NAME",
                     help="Score greedy answers to the validation and test prompts against their references with "
                          "this task metric (causal LM; repeatable or comma-separated; `autopeft metrics` lists them). "
                          "The first one scores the run in profiles and bench."),
        click.option("--metrics-before", is_flag=True, default=None,
                     help="With --metric: also score the model before training, on the same examples."),
        click.option("--generate-max-new-tokens", type=click.IntRange(min=1),
                     help="With --metric: tokens generated per answer. Default 96."),
        click.option("--generate-max-examples", type=click.IntRange(min=1),
                     help="With --metric: validation examples generated (the first N). Default 200; the test set "
                          "is generated whole."),
    ]


def _data_shaping_options() -> list:
    """How the data is sampled, split and shaped: ``recommend`` takes them too, so that its pilots
    train on the examples the fine-tune will."""
    return [
        click.option("--validation-fraction", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
                     help="Share of the data split off for validation when no file is given. Default 0.1."),
        click.option("--train-on-inputs", is_flag=True, default=None, help="Loss on prompts too, not only responses."),
        click.option("--pack", is_flag=True, default=None, help="Pack examples into full-length blocks."),
        click.option("--seed", type=int, help="Default 0."),
        click.option("--data-seed", type=int,
                     help="Seed of the --max-examples sample and the validation split. Default: --seed."),
    ]


def _output_options() -> list:
    return [
        click.option("--num-processes", type=click.IntRange(min=1),
                     help="Train data-parallel on N processes (one per GPU; on CPU they share the cores), "
                          "launched through Accelerate. --batch-size is per process."),
        click.option("--accelerate-config", type=click.Path(dir_okay=False),
                     help="Launch with this Accelerate config (FSDP, DeepSpeed ZeRO, several machines)."),
        click.option("--output", "-o", "output_dir", help="Output dir. Default: runs/<data>-<method>."),
        click.option("--resume", is_flag=True, help="Continue the unfinished run in --output from its last checkpoint."),
        click.option("--overwrite", is_flag=True, help="Replace a finished run in --output."),
        click.option("--no-profile-store", "profile_store", flag_value=False, default=None,
                     help="Do not add the finished run to the local profile store."),
        click.option("--json", "as_json", is_flag=True, help="Print the run's summary as JSON on stdout."),
    ]


# -- config files -------------------------------------------------------------------------------

_EXTRAS = "autopeft.config_extras"
#: commands whose config may also hold any TrainOptions field (what the SDK takes)
_TRAINING_COMMANDS = ("train", "tune", "bench")
#: options that say what to do with the output, not how to run: never printed by --print-config
_NOT_PRINTED = ("config", "print_config", "as_json", "resume", "overwrite")


class _Configurable(click.Command):
    """A command that takes ``--config FILE`` (defaults for its options; the command line wins) and
    ``--print-config`` (write the resolved options as a config, and stop)."""

    def invoke(self, ctx):
        ctx.params.pop("config", None)
        extras = ctx.meta.get(_EXTRAS, {})
        if ctx.params.pop("print_config", False):
            _print_config(ctx, extras)
            return None
        ctx.params.update(extras)
        return super().invoke(ctx)


def _config_options(command):
    """``--config`` and ``--print-config``, for a :class:`_Configurable` command."""
    options = [
        click.option("--config", "config", metavar="FILE", is_eager=True, expose_value=True, callback=_read_config,
                     help="Take options from a YAML or JSON file (keys: option names; a run's run.json reproduces "
                          "the run). Options given here override it."),
        click.option("--print-config", is_flag=True,
                     help="Print the resolved options (the file's, with the command line's over them) as a config "
                          "file, and stop."),
    ]
    return _with(options)(command)


def _config_keys(command: click.Command) -> dict[str, tuple[click.Parameter, bool]]:
    """Each key a config may use for ``command``'s options: the option's long names and its
    parameter name (dashes as underscores), and TrainOptions' name where the option renames it.
    The flag is true for a flag's own name when it sets another value than true (``no_profile_store``)."""
    keys: dict[str, tuple[click.Parameter, bool]] = {}
    for param in command.params:
        if param.name in ("config", "print_config"):
            continue
        keys[param.name] = (param, False)
        for opt in getattr(param, "opts", []):
            if opt.startswith("--"):
                name = opt[2:].replace("-", "_")
                keys.setdefault(name, (param, name != param.name and getattr(param, "is_flag", False)))
    for dest, field in _RENAMED.items():
        if dest in keys:
            keys.setdefault(field, keys[dest])
    return keys


def _read_config(ctx, param, value):
    """Read ``--config`` before the other options, and make its values their defaults."""
    if value is None or ctx.resilient_parsing:
        return value
    from .configfile import CHOSEN, closest, read_config

    cfg = read_config(value)
    keys = _config_keys(ctx.command)
    fields: set[str] = set()
    if ctx.command.name in _TRAINING_COMMANDS:
        from .training.options import TrainOptions

        fields = set(TrainOptions.model_fields) - {"data", "output_dir", "pilot_steps"}
        if ctx.command.name != "train":
            fields -= {"method", "settings"}
    defaults, extras, left_out = {}, {}, []
    for key, raw in cfg.values.items():
        if cfg.from_run and ctx.command.name != "train" and key in CHOSEN:
            left_out.append(key)
        elif key in keys:
            param_, is_flag_name = keys[key]
            converted = _config_value(ctx, cfg, key, raw, param_, is_flag_name)
            if param_.name in _CHOICE_KEYS and converted not in (None, ()):
                from .configfile import check_choice

                check_choice(cfg, key, "methods" if param_.name == "only" else param_.name, converted)
            if converted is not None:
                defaults[param_.name] = converted
        elif key in fields:
            from .configfile import check_train_option

            check_train_option(cfg, key, raw)
            extras[key] = raw
        elif cfg.from_run:
            left_out.append(key)
        else:
            raise cfg.error(key, f"not an option of {ctx.command.name}{closest(key, set(keys) | fields)}")
    if left_out:
        click.echo(f"autopeft: {cfg.source}: the run's {', '.join(left_out)} left out (not options of "
                   f"{ctx.command.name}, or what it chooses itself)", err=True)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta[_EXTRAS] = extras
    return value


def _config_value(ctx, cfg, key: str, value, param: click.Parameter, is_flag_name: bool):
    """A config value as the option would take it from the command line; a value it would refuse is
    one line naming the file, the line and the key."""
    from .configfile import settings_list

    scalar = (str, int, float, bool)
    if is_flag_name:
        if not isinstance(value, bool):
            raise cfg.error(key, f"true or false, got {value!r}")
        return param.flag_value if value else None
    if getattr(param, "multiple", False):
        if param.name == "settings":
            value = settings_list(value)
            bad = next((v for v in value if "=" not in v), None)
            if bad is not None:
                raise cfg.error(key, f"settings are KEY=VALUE (or a mapping of them), got {bad!r}")
        elif not isinstance(value, (list, tuple)):
            value = [value]
        if not all(isinstance(v, scalar) for v in value):
            raise cfg.error(key, f"a list of values, got {value!r}")
    elif isinstance(value, (list, tuple)) and isinstance(param.type, click.types.StringParamType) \
            and all(isinstance(v, scalar) and not isinstance(v, bool) for v in value):
        value = ",".join(str(v) for v in value)  # comma-separated options: --methods, --report-to
    elif not isinstance(value, scalar):
        raise cfg.error(key, f"one value, got {value!r}")
    elif isinstance(value, bool) and not isinstance(param.type, click.types.BoolParamType):
        raise cfg.error(key, f"{param.type.name} expected, got {str(value).lower()}")
    try:
        return param.process_value(ctx, value)
    except click.BadParameter as exc:
        raise cfg.error(key, exc.message) from None
    except BadInputError as exc:
        raise cfg.error(key, exc.problem) from None


def _print_config(ctx, extras: dict) -> None:
    """The options a command would run with, as a config file ``--config`` takes: what the file
    and the command line set (for ``train``, with every default of the run filled in)."""
    import yaml

    values: dict = {}
    for param in ctx.command.params:
        if param.name in _NOT_PRINTED:
            continue
        value = ctx.params.get(param.name)
        if value is None or value == () or (value is False and getattr(param, "flag_value", None) is True):
            continue  # not set, or a flag not given
        values[_print_key(param)] = list(value) if isinstance(value, tuple) else value
    values.update(extras)
    if "settings" in values:
        values["settings"] = dict(_parse_setting(s) for s in values["settings"])
    if ctx.command.name == "train":
        values = _resolved_train(values)
    click.echo(yaml.safe_dump(values, sort_keys=False, default_flow_style=False), nl=False)


def _print_key(param: click.Parameter) -> str:
    """The key a printed config uses: TrainOptions' name where the option has one, else its long name."""
    from .training.options import TrainOptions

    renamed = _RENAMED.get(param.name, param.name)
    if renamed in TrainOptions.model_fields or not getattr(param, "opts", None):
        return renamed
    return next((o[2:].replace("-", "_") for o in param.opts if o.startswith("--")), param.name)


def _resolved_train(values: dict) -> dict:
    """``train``'s options with every default filled in, checked as the run would check them, in the
    order of the run's options block (run.json)."""
    from pydantic import ValidationError

    from .training.options import TrainOptions

    values.setdefault("method", "lora")
    values.setdefault("output_dir", _default_output(values.get("data"), values["method"]))
    try:
        resolved = TrainOptions.model_validate({"data": "-", **values}).model_dump(mode="json")
    except ValidationError as exc:
        err = exc.errors()[0]
        raise BadInputError(f"option {'.'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']}") from None
    if "data" not in values:
        resolved.pop("data")
    return {k: v for k, v in resolved.items() if v is not None and k != "pilot_steps"}


def _say(text: str) -> None:
    """A progress line of a long command, on stderr (stdout is for results and --json)."""
    click.echo(f"autopeft: {text}", err=True)


_RENAMED = {"gradient_accumulation": "gradient_accumulation_steps"}


def _train_kwargs(given: dict) -> dict:
    """The options the user set (None means: not given, so the library's default applies)."""
    # a repeatable option not given is an empty tuple: not given either
    return {_RENAMED.get(k, k): list(v) if isinstance(v, tuple) else v for k, v in given.items()
            if v is not None and v != ()}


def _default_output(data: str | None, method: str) -> str:
    from pathlib import Path

    stem = Path(data).stem if data else "run"
    return str(Path("runs") / f"{stem}-{method}")


@main.command(cls=_Configurable)
@click.option("--method", default="lora", show_default=True, help="Method name (see `autopeft methods`).")
@click.option("--set", "-s", "settings", multiple=True, metavar="KEY=VALUE", help="A method setting; repeatable.")
@_training_options
@_config_options
def train(method, settings, data, output_dir, resume, overwrite, as_json, **given):
    """Fine-tune on DATA (JSONL, JSON, CSV, TSV, Parquet or CoNLL) with the method you choose."""
    quiet_libraries()
    log_to_stderr()
    from .training.run import train as run_train

    if output_dir is None:
        if resume:
            raise BadInputError("--resume needs the --output dir of the run to continue", source="--resume")
        output_dir = _default_output(data, method)
    values = dict(_parse_setting(s) for s in settings)
    record = run_train(data, output_dir=output_dir, resume=resume, overwrite=overwrite, method=method,
                       settings=values, **_train_kwargs(given))
    if as_json:
        _emit_json(record.summary())
    else:
        _print_run(record)


def _print_run(record) -> None:
    from .sizes import format_size

    metrics = ", ".join(f"{k} {v:.4g}" for k, v in record.metrics.items() if v is not None)
    click.echo(f"{record.method}: {metrics}")
    click.echo(f"peak memory {format_size(record.peak_memory_bytes)}, {record.seconds:.0f} s; "
               f"outputs in {record.output_dir} (report.md, run.json)")


def _rank(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise BadInputError(f"a rank is an integer or a fraction of energy such as 0.99, got {text!r}",
                                source="--rank") from None


@main.command()
@click.argument("run_dir", type=click.Path(dir_okay=True))
@click.option("--merge", "merge_to", metavar="OUT", help="Write the base with the adapter merged in (a full model).")
@click.option("--to-lora", "lora_to", metavar="OUT", help="Write the adapter converted to LoRA (for LoRA-only servers).")
@click.option("--rank", default="64", show_default=True,
              help="LoRA rank for --to-lora, or a fraction (0.99) to keep that share of each update's energy.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle (.bin) weights, which can run code.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's own Python code.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def export(run_dir, merge_to, lora_to, rank, allow_pickle, trust_remote_code, as_json):
    """Turn a finished run into a merged full model (--merge) or a LoRA adapter (--to-lora)."""
    quiet_libraries()
    from .training.export import merge, to_lora

    if bool(merge_to) == bool(lora_to):
        raise BadInputError("give exactly one of --merge OUT and --to-lora OUT", source="export")
    if merge_to:
        result = merge(run_dir, merge_to, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    else:
        result = to_lora(run_dir, lora_to, rank=_rank(rank), allow_pickle=allow_pickle,
                         trust_remote_code=trust_remote_code)
    if as_json:
        _emit_json(result.model_dump(mode="json"))
        return
    what = "merged model" if result.kind == "merged" else f"LoRA adapter (rank {result.lora_rank})"
    click.echo(f"{what} written to {result.output_dir}")
    click.echo(f"outputs changed by at most {result.max_abs_diff:.3g} in the logits "
               f"({100 * result.relative_diff:.3g}% relative) against the trained adapter")


def _choice_options(command):
    """Options shared by ``recommend`` and ``tune``: constraints, objective and pilots."""
    options = [
        click.option("--max-vram", help="Peak memory per device, e.g. 12GB or 12GiB (on CPU: resident memory)."),
        click.option("--max-adapter-size", help="Size of the saved adapter, e.g. 20MB."),
        click.option("--max-rank", help="Largest adapter rank."),
        click.option("--max-trainable-params", help="Most trainable parameters."),
        click.option("--time-budget", help="Time for the whole fine-tune, e.g. 2h or 45m."),
        click.option("--methods", "only", help="Only these methods (comma-separated)."),
        click.option("--exclude", help="Never these methods (comma-separated)."),
        click.option("--require", multiple=True, type=_Choice(["merge", "quantized", "lora-convertible"]),
                     help="A capability the adapter must have; repeatable."),
        click.option("--objective", help="quality (default), memory, speed, or a mix like quality=0.7,memory=0.3."),
        click.option("--target-gpu", help="Plan for a known accelerator (see profiles/hardware.json)."),
        click.option("--pilot-budget", help="Pilot time: a fraction of the estimated fine-tune or a duration "
                                            "such as 5m (default: 0.15 of the run, at least 4 minutes)."),
        click.option("--no-pilot", is_flag=True, help="Rank from the cost model and stored profiles only."),
    ]
    return _with(options)(command)


def _choice_kwargs(max_vram, max_adapter_size, max_rank, max_trainable_params, time_budget, only, exclude, require,
                   objective, target_gpu, pilot_budget, no_pilot) -> dict:
    from .choose.constraints import Constraints, parse_duration

    constraints = Constraints.parse(max_vram=max_vram, max_adapter_size=max_adapter_size, max_rank=max_rank,
                                    max_trainable_params=max_trainable_params, time_budget=time_budget,
                                    methods=only, exclude=exclude, require=list(require) or None)
    kwargs = {"constraints": constraints, "objective": objective, "target_gpu": target_gpu, "pilot": not no_pilot}
    if pilot_budget:
        try:
            fraction = float(pilot_budget)
        except ValueError:
            try:
                kwargs["pilot_seconds"] = parse_duration(pilot_budget, "--pilot-budget")
            except BadInputError:
                raise BadInputError(f"--pilot-budget takes a fraction of the estimated fine-tune such as 0.15, or "
                                    f"a duration such as 5m; got {pilot_budget!r}") from None
        else:
            if not 0 < fraction < 1:
                raise BadInputError(f"--pilot-budget as a fraction must be between 0 and 1, got {pilot_budget}")
            kwargs["pilot_fraction"] = fraction
    return kwargs


_CHOICE_KEYS = ("max_vram", "max_adapter_size", "max_rank", "max_trainable_params", "time_budget", "only", "exclude",
                "require", "objective", "target_gpu", "pilot_budget", "no_pilot")


@main.command(cls=_Configurable)
@click.argument("data", type=click.Path(dir_okay=True))
@click.option("--model", "-m", help="Embedded name, local dir or Hub id. Default: the task's embedded model.")
@click.option("--validation", type=click.Path(dir_okay=True), help="Validation file.")
@click.option("--task", type=_Choice(TASKS), help="Default: from the data format.")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=3.0, show_default=True)
@click.option("--max-steps", type=click.IntRange(min=1))
@click.option("--max-length", type=click.IntRange(min=8), default=512, show_default=True)
@click.option("--max-examples", type=click.IntRange(min=1))
@click.option("--quantize", type=_Choice(["4bit", "8bit"]),
              help="Plan for a base loaded in 4 or 8 bits (QLoRA-style; CUDA with bitsandbytes).")
@_with(_data_shaping_options())
@_choice_options
@click.option("--profiles", multiple=True, type=click.Path(exists=True),
              help="More profile records to learn from (JSONL, or a dir of PEFT benchmark results); repeatable.")
@click.option("--leave-out", multiple=True, help="Do not learn from this benchmark's records; repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the recommendation as JSON on stdout.")
@_config_options
def recommend(data, as_json, profiles, leave_out, **given):
    """Rank the installed methods for DATA under your constraints (pilots only; nothing is kept)."""
    quiet_libraries()
    log_to_stderr()
    from .choose.recommend import recommend as run_recommend

    choice = _choice_kwargs(**{k: given.pop(k) for k in _CHOICE_KEYS})
    rec = run_recommend(data, **choice, **{k: v for k, v in given.items() if v is not None},
                        profiles=list(profiles), leave_out=list(leave_out),
                        say=_say)
    if as_json:
        _emit_json(rec.model_dump(mode="json", exclude={"candidates": {"__all__": {"measured": {"curve"}}}}))
    else:
        _print_recommendation(rec)


def _print_recommendation(rec) -> None:
    from .sizes import format_size

    click.echo(f"{'method':<14} {'fits':<5} {'predicted':>9} {'pilot loss':>10} {'peak mem':>9}  notes")
    for c in rec.candidates:
        m = c.measured
        peak = (m.peak_memory_bytes if m and m.peak_memory_bytes else None) or (
            c.estimated.peak_memory_bytes if c.estimated else None)
        note = "chosen" if c.method == rec.chosen else ("Pareto" if c.pareto else "")
        if not c.feasible:
            note = "; ".join(c.excluded_because)[:70]
        loss = f"{m.pilot_loss:.4f}" if m and m.pilot_loss is not None else ""
        score = f"{c.predicted_score:.3f}" if c.predicted_score is not None else ""
        click.echo(f"{c.method:<14} {'yes' if c.feasible else 'no':<5} {score:>9} {loss:>10} "
                   f"{format_size(peak) if peak else '':>9}  {note}")
    if rec.confidence is not None:
        click.echo(f"confidence: {rec.confidence:.0%} that {rec.chosen} lands within one point of the best candidate")
    click.echo(rec.explanation)


@main.command(cls=_Configurable)
@_training_options
@_choice_options
@_config_options
def tune(data, output_dir, resume, overwrite, as_json, **given):
    """Choose the method for DATA (pilots and the recommender), then fine-tune with it."""
    quiet_libraries()
    log_to_stderr()
    from .choose.tune import tune as run_tune

    if resume:
        if output_dir is None:
            raise BadInputError("--resume needs the --output dir of the tune to continue", source="--resume")
    elif data is None:
        raise BadInputError("give a training data file")
    choice = _choice_kwargs(**{k: given.pop(k) for k in _CHOICE_KEYS})
    record, rec = run_tune(data, output_dir=output_dir or _default_output(data, "tuned"), overwrite=overwrite,
                           resume=resume, say=_say, **choice,
                           **_train_kwargs(given))
    if as_json:
        _emit_json({**record.summary(), "recommendation": rec.model_dump(
            mode="json", exclude={"candidates": {"__all__": {"measured": {"curve"}}}}),
            "pilot_seconds": rec.pilot_seconds})
    else:  # the explanation went to stderr before the fine-tune; report.md and run.json keep it
        click.echo(f"{rec.chosen} was chosen; why: {record.output_dir}/report.md")
        _print_run(record)


@main.command()
@click.argument("results_dir", type=click.Path(file_okay=False))
@click.option("--budget-fraction", type=click.FloatRange(min=0, max=1, min_open=True), default=0.1, show_default=True,
              help="Pilot compute as a share of training every run that fits.")
@click.option("--pilots", type=_Choice(["halving", "flat"]), default="halving", show_default=True,
              help="halving: spend the budget as tune does (short pilots for all, longer ones for the best); "
                   "flat: every run piloted for exactly that share of its steps.")
@click.option("--max-vram", help="Only runs whose measured peak fits, e.g. 22.3GB.")
@click.option("--profiles", "extra", multiple=True, type=click.Path(exists=True),
              help="More profile records (JSONL file or dir) to learn from; repeatable.")
@click.option("--json", "as_json", is_flag=True)
def replay(results_dir, budget_fraction, pilots, max_vram, extra, as_json):
    """Judge the recommender on published results (PEFT method-comparison layout) it did not learn from."""
    log_to_stderr()
    from .profiles import load_records
    from .choose.replay import replay as run_replay
    from .sizes import parse_size

    cap = parse_size(max_vram, "--max-vram") if max_vram else None
    result = run_replay(results_dir, budget_fraction, cap, records=load_records(extra), pilots=pilots)
    if as_json:
        _emit_json(result.model_dump(mode="json"))
        return
    plan = ", then ".join(f"{n} pilots of {x:.0%}" for n, x in result.rungs)
    click.echo(f"{result.benchmark}: {result.feasible} of {result.candidates} runs fit; {plan} of the steps "
               f"({result.compute_fraction:.1%} of training them all; {result.mode} ranking, learned from "
               f"{', '.join(result.trained_on) or 'nothing'})")
    click.echo(f"  chosen  {result.chosen_method} ({result.chosen}): {result.chosen_score:.4f} "
               f"(regret {result.regret:.2f} points)")
    click.echo(f"  oracle  {result.oracle_method} ({result.oracle}): {result.oracle_score:.4f}")
    for name, pick in result.baselines.items():
        detail = f"{pick.score:.4f} (regret {pick.regret:.2f})" if pick.score is not None else "-"
        click.echo(f"  {name}: {f'{pick.method} ({pick.choice})' if pick.method else pick.choice or '-'}: {detail}")


@main.command(cls=_Configurable)
@click.option("--benchmark", required=True, help="Name the records share, e.g. my-team/support-chats-smollm2.")
@click.option("--output", "-o", "output_dir", required=True, type=click.Path(file_okay=False),
              help="The bench directory; give an existing one to continue it.")
@click.option("--methods", "only", help="Comma-separated. Default: every available method for the task.")
@click.option("--learning-rates", type=click.IntRange(min=1), default=3, show_default=True,
              help="Learning rates per method, from its search space (its default first).")
@click.option("--edge-rates", type=click.IntRange(min=0), default=2, show_default=True,
              help="Where a method scores best at its highest (or lowest) rate, or the same at every rate, "
                   "try up to N more past it (upwards for the same).")
@click.option("--run-timeout", type=click.FloatRange(min=0, min_open=True), help="Stop a run after N seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON lines on stdout.")
@partial(_training_options, outputs=False)
@_config_options
def bench(data, benchmark, output_dir, only, learning_rates, edge_rates, run_timeout, as_json, **given):
    """Train every method on DATA at a few learning rates each, keeping profile records of how each
    run went (resumable: finished runs are never repeated)."""
    quiet_libraries()
    log_to_stderr()
    from .choose.bench import bench as run_bench
    from .choose.constraints import split_names

    if data is None:
        raise BadInputError("give a training data file")
    methods = list(split_names(only)) if only else None
    records = run_bench(data, benchmark=benchmark, output_dir=output_dir, methods=methods,
                        learning_rates=learning_rates, edge_rates=edge_rates, timeout=run_timeout,
                        say=_say, **_train_kwargs(given))
    if as_json:
        for record in records:
            click.echo(record.model_dump_json())
        return
    scored = sorted((r for r in records if r.score is not None), key=lambda r: -r.quality())
    click.echo(f"{len(records)} runs in {output_dir} ({len(records) - len(scored)} failed); best first:")
    for r in scored:
        click.echo(f"  {r.experiment:32s} {r.metric} {r.score:.4f}")


@main.group(cls=_Group)
def profiles():
    """The profile records the recommender learns from."""
    log_to_stderr()  # a damaged line of the store is said, once


@profiles.command("list")
@click.option("--json", "as_json", is_flag=True)
def profiles_list(as_json):
    """What is stored: shipped records and this machine's runs, by benchmark."""
    from collections import Counter

    from .profiles import load_records, shipped_folder, store_path

    records = load_records()
    counts = Counter(r.benchmark for r in records)
    if as_json:
        _emit_json({"store": str(store_path()), "shipped": str(shipped_folder()),
                    "benchmarks": [{"benchmark": b, "records": n} for b, n in sorted(counts.items())]})
        return
    click.echo(f"{len(records)} records (shipped: {shipped_folder()}; this machine: {store_path()})")
    for bench, n in sorted(counts.items()):
        click.echo(f"  {n:4d}  {bench}")


@profiles.command("export")
@click.argument("output", type=click.Path(dir_okay=False))
def profiles_export(output):
    """Write every stored record to OUTPUT as JSONL."""
    from pathlib import Path

    from .training.outputs import write_text
    from .profiles import load_records

    records = load_records()
    write_text(Path(output), "".join(r.model_dump_json() + "\n" for r in records))
    click.echo(f"{len(records)} records written to {output}")


@profiles.command("import")
@click.argument("results_dir", type=click.Path(exists=True, file_okay=False))
def profiles_import(results_dir):
    """Add results in the PEFT method-comparison layout to this machine's store."""
    from .profiles import append, import_peft_results

    records = import_peft_results(results_dir)
    path = append(records)
    click.echo(f"{len(records)} records from {results_dir} added to {path}")


@profiles.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--repair", is_flag=True, help="Rewrite it without its damaged lines, keeping every whole record "
                                              "(and a copy of the damaged file beside it).")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON on stdout.")
def profiles_check(file, repair, as_json):
    """Check this machine's profile store (or FILE, e.g. a bench's records.jsonl) line by line.
    Exit status 1 while it holds a damaged line."""
    from pathlib import Path

    from .profiles import check_store, repair_store, store_path

    path = Path(file) if file else store_path()
    if file and not path.is_file():
        raise BadInputError("no such file", source=file)
    scan, backup = repair_store(path) if repair else (check_store(path), None)
    damaged = scan.damaged if scan else []
    report = {"path": str(path), "exists": scan is not None, "records": len(scan.records) if scan else 0,
              "damaged": [{"line": d.line, "reason": d.reason} for d in damaged],
              "newer_schema_lines": scan.newer if scan else [], "repaired": backup is not None,
              "backup": str(backup) if backup else None}
    if as_json:
        _emit_json(report)
    elif scan is None:
        click.echo(f"{path}: no profile store yet (no run has finished here)")
    else:
        n = len(damaged)
        click.echo(f"{path}: {report['records']} records, {n or 'no'} damaged line{'' if n == 1 else 's'}"
                   + (f", {len(scan.newer)} of a newer autopeft (kept)" if scan.newer else ""))
        for d in damaged:
            click.echo(f"  line {d.line}: {d.reason}")
        if backup:
            click.echo(f"repaired: kept the {report['records']} whole records"
                       f"{' and the newer ones' if scan.newer else ''}, removed the damaged line{'s' if n > 1 else ''}; "
                       f"the damaged file is kept as {backup}")
        elif damaged:
            command = "autopeft profiles check --repair" + (f" {file}" if file else "")
            click.echo(f"`{command}` removes {'them' if n > 1 else 'it'} (keeping a copy of the file)")
    if damaged and not backup:
        sys.exit(1)
