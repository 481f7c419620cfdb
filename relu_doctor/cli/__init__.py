"""The ``relu-doctor`` command line: click options in, library calls, output and exit codes.

Exit codes (as ruff): 0 the command ran; 1 ``check`` found the model unhealthy; 2 usage
error or bad input. Errors are one ``Error:`` line on stderr; ``--debug`` adds the
traceback. Importing this package loads neither torch nor pandas, so ``--help`` is
instant; each command's body is imported when it runs.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any, NoReturn

import click
from click.core import ParameterSource

from relu_doctor import __version__
from relu_doctor.cli import options
from relu_doctor.cli.check_options import check_options
from relu_doctor.cli.config import Config, check_keys, defaults_for, read_config
from relu_doctor.errors import ReluDoctorError

EXIT_OK, EXIT_ERROR = 0, 2
CONFIG_ORIGIN = " (set in [tool.relu-doctor] of pyproject.toml)"
# click >= 8.2 raises this for a group called without a command; older clicks print help.
_NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _fail(message: str) -> NoReturn:
    if options.DEBUG["on"]:
        traceback.print_exc()
    click.echo(f"Error: {message}", err=True)
    sys.exit(EXIT_ERROR)


def _from_config(ctx: click.Context | None, name: str | None) -> str:
    """Say so when a bad value came from pyproject.toml rather than the command line."""
    if ctx is None or name is None or name not in ctx.params:
        return ""
    return CONFIG_ORIGIN if ctx.get_parameter_source(name) == ParameterSource.DEFAULT_MAP else ""


class DoctorGroup(click.Group):
    """Turns every error into one ``Error:`` line and an exit code (no usage dump)."""

    def main(self, args: Any = None, *pargs: Any, **kwargs: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        ARGV[:] = argv
        options.DEBUG["on"] = False
        kwargs["standalone_mode"] = False
        try:
            code = super().main(argv, *pargs, **kwargs)
        except _NO_ARGS_IS_HELP as exc:  # `relu-doctor` alone: help, not an error
            click.echo(exc.ctx.get_help() if exc.ctx else "")
            sys.exit(EXIT_OK)
        except click.UsageError as exc:
            ctx, param = exc.ctx, getattr(exc, "param", None)
            origin = _from_config(ctx, getattr(param, "name", None))
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _fail(exc.format_message() + origin + hint)
        except click.ClickException as exc:
            _fail(exc.format_message())
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        except ReluDoctorError as exc:
            _fail(render_error(exc) + _from_config(RUNNING.get("ctx"), exc.param))
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        except Exception as exc:  # a bug: still one line, traceback with --debug
            hint = "" if options.DEBUG["on"] else " (rerun with --debug)"
            _fail(f"internal error: {type(exc).__name__}: {exc}{hint}")
        sys.exit(code if isinstance(code, int) else EXIT_OK)


#: The context of the command being run (for error messages after it is torn down).
RUNNING: dict[str, click.Context] = {}
#: The arguments of this run, as typed.
ARGV: list[str] = []


def render_error(exc: ReluDoctorError) -> str:
    """A library error in the words of the running command: parameters as its flags."""
    ctx = RUNNING.get("ctx")
    params = list(ctx.command.params) if ctx is not None else []
    params += [p for c in main.commands.values() for p in c.params]
    return exc.render(lambda name, value: options.spell(params, name, value))


@click.group(cls=DoctorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="relu-doctor")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Find dying ReLU units in PyTorch models, explain why they died, and what to do.

    \b
    Examples:
      relu-doctor scan model.pt
      relu-doctor scan model.pt --input-shape 3,32,32 --format json -o report.json
      relu-doctor scan weights.pt --arch mypkg.models:Net --data batches.pt
      relu-doctor check ckpt_*.pt --max-dead 0.05 --junit junit.xml
      relu-doctor explain RD101

    Defaults for every option can be set in [tool.relu-doctor] of the nearest pyproject.toml.
    """
    assert isinstance(ctx.command, click.Group)
    commands = ctx.command.commands
    try:
        config = read_config(commands=commands)
    except ReluDoctorError as exc:  # reported when a command runs, never before --help
        ctx.meta["config_error"] = exc
        return
    ctx.meta["config"] = config
    ctx.default_map = {name: defaults_for(config, name, cmd) for name, cmd in commands.items()}


def start(ctx: click.Context, opts: dict[str, Any]) -> None:
    """What every command does first: remember its context, report a broken config, and
    keep a configured ``format`` for stdout (``-o`` files follow their extension)."""
    RUNNING["ctx"] = ctx
    if opts.get("output") and ctx.get_parameter_source("fmt") != ParameterSource.COMMANDLINE:
        opts["fmt"] = None
    root = ctx.find_root()
    error = root.meta.get("config_error")
    if error is not None:
        raise error
    config: Config | None = root.meta.get("config")
    if config is not None and isinstance(root.command, click.Group):
        check_keys(config, root.command.commands)


@main.command(
    cls=options.GroupedCommand,
    epilog=options.examples(
        "relu-doctor scan model.pt",
        "relu-doctor scan model.pt --data val.npz --batches 20 --top 10",
        "relu-doctor scan weights.pt --arch 'mypkg.models:Net(num_classes=10)'",
        "relu-doctor scan model.pt -o report.json -o report.csv --html report.html -q",
    ),
)
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@options.scan_options("scan")
@click.pass_context
def scan(ctx: click.Context, models: tuple[str, ...], **opts: Any) -> int:
    """Scan MODEL(s) and print a per-site table of dead, near-dead and dormant units.

    MODEL is a saved model (a pickle of torch.nn parts, a state dict with --arch, TorchScript,
    a torch.export .pt2, .safetensors with --arch) or a MODULE:CALLABLE factory. Several
    models are scanned one after the other on the same inputs (e.g. checkpoints of one run).

    Exit code 0 whatever the model's health; 2 on bad input.
    """
    start(ctx, opts)
    from relu_doctor.cli.scan import run_scan

    return run_scan(list(models), opts)


@main.command(
    cls=options.GroupedCommand,
    epilog=options.examples(
        "relu-doctor fix model.pt --to reinit -o fixed.pt",
        "relu-doctor fix model.pt --to leaky_relu --sites features.2,features.5 -o fixed.pt",
        "relu-doctor fix weights.pt --arch mypkg.models:Net --to reinit -o fixed_weights.pt",
    ),
)
@click.argument("model", metavar="MODEL")
@options.fix_options()
@options.scan_options("fix")
@click.pass_context
def fix(ctx: click.Context, model: str, **opts: Any) -> int:
    """Repair the dying units of MODEL and prove the repaired model is better, not broken.

    Scans MODEL, repairs the chosen sites on a copy, writes it to OUT in MODEL's form, scans
    it again on the very same inputs and prints a before/after table: dead, near-dead and
    gradient-passing units per site, the largest output change, the loss where the data has
    targets. Nothing to fix: says so, writes nothing, exit 0.

    Exit code 0 when repaired or nothing to fix; 2 on bad input or when no chosen site
    could be repaired (each with the reason; nothing written).
    """
    start(ctx, opts)
    from relu_doctor.cli.fix import run_fix

    return run_fix(model, opts)


@main.command(
    cls=options.GroupedCommand,
    epilog="""\b
Examples:
  relu-doctor check model.pt
  relu-doctor check ckpt_*.pt --max-dead 0.05 --max-layer-dead 0.3
  relu-doctor check model.pt --baseline last_good.json --write-baseline next.json
  relu-doctor check model.pt --junit junit.xml --sarif relu.sarif -o summary.md
  relu-doctor check model.pt --format github --ignore RD4""",
)
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@options.scan_options("check")
@check_options()
@click.pass_context
def check(ctx: click.Context, models: tuple[str, ...], **opts: Any) -> int:
    """Gate MODEL(s) for CI: scan each like `scan`, judge it by the rules, and exit 1 when
    one is unhealthy.

    The table is followed by each model's findings (rule, site, measured value against its
    limit, fix) and a verdict line. A finding of severity error (or --fail-on warning) makes
    a model unhealthy. Rules: `relu-doctor rules`; one rule: `relu-doctor explain RD101`.
    Thresholds can be set in [tool.relu-doctor] or [tool.relu-doctor.check] of
    pyproject.toml; the report says where each came from.

    Exit code 0 every model healthy, 1 a model unhealthy, 2 bad input or a model that could
    not be scanned (2 wins over 1; the other models are still reported).
    """
    start(ctx, opts)
    from relu_doctor.cli.check import run_check

    return run_check(ctx, list(models), opts)


class ReferenceCommand(click.Command):
    """A command that scans nothing and reads no config (``rules``, ``explain``)."""

    configurable = False


@main.command(
    cls=ReferenceCommand,
    epilog="""\b
Examples:
  relu-doctor explain RD101
  relu-doctor explain dead-model""",
)
@click.argument("rule", metavar="RULE")
@click.pass_context
def explain(ctx: click.Context, rule: str) -> int:
    """Explain the rule RULE of `check` (a code like RD101, or a name like dead-site): what
    it does, why it matters, what to do, its threshold and references.

    Exit code 0; 2 for an unknown rule.
    """
    RUNNING["ctx"] = ctx
    from relu_doctor.cli.rules import run_explain

    return run_explain(rule)


@main.command(
    cls=ReferenceCommand,
    epilog="""\b
Examples:
  relu-doctor rules
  relu-doctor rules --format json
  relu-doctor rules --format markdown > docs/rules.md""",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "markdown"]),
    default="table",
    show_default=True,
    help="table: one line per rule; json: every record; markdown: the docs page.",
)
@click.pass_context
def rules(ctx: click.Context, fmt: str) -> int:
    """List the rules of `check`: code, name, severity, what it judges (site or model), its
    threshold option with the default, and a summary.

    Exit code 0.
    """
    RUNNING["ctx"] = ctx
    from relu_doctor.cli.rules import run_rules

    return run_rules(fmt)
