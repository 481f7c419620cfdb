"""The `relu-doctor` command line: click options in, library calls, output and exit codes.

Exit codes (as ruff): 0 the command ran; 1 `check` found the model unhealthy; 2 usage
error or bad input. Errors are one `Error:` line on stderr; `--debug` adds the traceback.
Importing this module loads neither torch nor pandas, so `--help` is instant.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import click
from click.core import ParameterSource

from relu_doctor import __version__
from relu_doctor.config import load_config
from relu_doctor.errors import ReluDoctorError

EXIT_OK, EXIT_UNHEALTHY, EXIT_ERROR = 0, 1, 2
# click >= 8.2 raises this for a group called without a command; older clicks print help.
_NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _fail(message: str, debug: bool) -> NoReturn:
    if debug:
        traceback.print_exc()
    click.echo(f"Error: {message}", err=True)
    sys.exit(EXIT_ERROR)


def _flag(name: str) -> str:
    """The command-line flag of a library parameter named in an error message."""
    return "--format" if name == "fmt" else "--" + name.replace("_", "-")


def _config_origin(exc: click.ClickException) -> str:
    """Say so when a bad value came from pyproject.toml rather than the command line."""
    ctx, param = getattr(exc, "ctx", None), getattr(exc, "param", None)
    if ctx is None or param is None or param.name is None:
        return ""
    if ctx.get_parameter_source(param.name) == ParameterSource.DEFAULT_MAP:
        return " (set in [tool.relu-doctor] of pyproject.toml)"
    return ""


class DoctorGroup(click.Group):
    """Turns every error into one `Error:` line and an exit code (no usage dump)."""

    def main(self, args: Any = None, *pargs: Any, **kwargs: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv
        kwargs["standalone_mode"] = False
        try:
            code = super().main(argv, *pargs, **kwargs)
        except _NO_ARGS_IS_HELP as exc:  # `relu-doctor` alone: help, not an error
            click.echo(exc.ctx.get_help() if exc.ctx else "")
            sys.exit(EXIT_OK)
        except click.UsageError as exc:
            ctx = exc.ctx
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _fail(exc.format_message() + _config_origin(exc) + hint, debug)
        except click.ClickException as exc:
            _fail(exc.format_message(), debug)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        except ReluDoctorError as exc:
            _fail(exc.render(_flag), debug)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        except Exception as exc:  # a bug: still one line, traceback with --debug
            _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug)", debug)
        sys.exit(code if isinstance(code, int) else EXIT_OK)


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

    Defaults for every option can be set in [tool.relu-doctor] of the nearest pyproject.toml.
    """
    config = load_config()
    if config:
        ctx.default_map = {"scan": config}


def scan_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by the commands that scan a model."""
    options = [
        click.option(
            "--arch",
            metavar="MODULE:CALLABLE",
            help="Builds the model that a state dict fills (also path/to/file.py:Name).",
        ),
        click.option(
            "--trust",
            is_flag=True,
            help="Allow a pickle to run code (only for files you trust). Also RELU_DOCTOR_TRUST=1.",
        ),
        click.option(
            "--input-shape",
            metavar="SHAPE",
            help="One sample's shape for synthetic inputs, e.g. 784 or 3,32,32.",
        ),
        click.option(
            "--data",
            metavar="FILE|MODULE:CALLABLE",
            help="Your data: .pt .npy .npz .csv .parquet, or a callable that returns "
            "an iterable of batches.",
        ),
        click.option(
            "--batch-size", type=int, default=32, show_default=True, help="Samples per batch."
        ),
        click.option(
            "--batches",
            type=int,
            default=None,
            help="Batches to scan [default: 8 synthetic, or all of --data].",
        ),
        click.option(
            "--seed", type=int, default=0, show_default=True, help="Seed of the synthetic inputs."
        ),
        click.option(
            "--device",
            type=click.Choice(["auto", "cpu", "cuda"]),
            default="auto",
            show_default=True,
            help="Where to run the scan.",
        ),
        click.option(
            "--mode",
            type=click.Choice(["eval", "train"]),
            default="eval",
            show_default=True,
            help="Module mode during the scan (restored after).",
        ),
        click.option(
            "--grad/--no-grad",
            default=True,
            show_default=True,
            help="Also run a backward pass for gradient norms.",
        ),
        click.option(
            "--eps",
            type=float,
            default=0.0,
            show_default=True,
            help="A unit fires on a sample when an output element is > eps.",
        ),
        click.option(
            "--near-dead",
            type=float,
            default=0.01,
            show_default=True,
            help="Firing rate below which a live unit counts as near-dead.",
        ),
        click.option(
            "--tau",
            type=float,
            default=0.025,
            show_default=True,
            help="ReDo dormant threshold on the normalised activation score.",
        ),
        click.option(
            "--unit-dim",
            type=int,
            default=None,
            help="Dim that holds the units of every site [default: features of "
            "(N,F), channels of conv outputs, last dim after a Linear].",
        ),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["table", "csv", "json", "markdown"]),
            default=None,
            help="Output format [default: table, or from -o's extension].",
        ),
        click.option(
            "-o",
            "--output",
            metavar="FILE",
            help="Write the report to FILE (.csv .json .md .txt); the table still prints.",
        ),
        click.option(
            "--per-unit", metavar="FILE", help="Write one row per unit to FILE (.csv .json .md)."
        ),
        click.option("--debug", is_flag=True, help="Show tracebacks."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command()
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@scan_options
def scan(models: tuple[str, ...], **opts: Any) -> int:
    """Scan MODEL(s) and print a per-site table of dead, near-dead and dormant units.

    MODEL is a saved model (a pickle of torch.nn parts, a state dict with --arch, TorchScript,
    a torch.export .pt2, .safetensors with --arch) or a MODULE:CALLABLE factory. Several
    models are scanned one after the other (e.g. checkpoints of one run).

    Exit code 0 whatever the model's health; 2 on bad input.
    """
    from relu_doctor.commands import run_scan

    ctx = click.get_current_context()
    if opts.get("output") and ctx.get_parameter_source("fmt") != ParameterSource.COMMANDLINE:
        opts["fmt"] = None  # a configured format is for stdout; -o follows its extension
    return run_scan(list(models), opts)


if __name__ == "__main__":
    main()
