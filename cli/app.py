"""The ``onnxprune`` command: a thin click front end over the library.

Exit codes: 0 success, 1 failure (a one-line ``error: ...`` on stderr), 2 usage error,
130 interrupted. Only this module prints.
"""

from __future__ import annotations

import sys

import click

from onnxprune import __version__
from onnxprune.errors import OnnxPruneError

from .apply import apply
from .compress import compress
from .evaluate import evaluate
from .finetune import finetune
from .inspect import inspect
from .profile import profile
from .sensitivity import sensitivity


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="onnxprune")
@click.option("--debug", is_flag=True, help="Show the Python traceback of an internal error.")
@click.pass_context
def cli(ctx, debug):
    """Structured channel pruning of ONNX CNNs: ONNX in, smaller ONNX out.

    onnxprune finds coupled channels (residual adds, concats, depthwise convs, flatten->linear),
    scores them, picks per-layer ratios to meet a FLOPs or parameter target, removes the
    channels from the graph and checks the result with onnx.checker and onnxruntime.
    """
    ctx.ensure_object(dict)["debug"] = debug


for command in (compress, apply, inspect, sensitivity, evaluate, finetune, profile):
    cli.add_command(command)


def run(argv=None) -> None:
    """Run the CLI: one-line errors, documented exit codes, no tracebacks."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        rv = cli.main(args=argv, prog_name="onnxprune", standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("error: interrupted; no output was written", err=True)
        sys.exit(130)
    except OnnxPruneError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # a bug: still one line unless --debug
        if debug:
            raise
        first = (str(exc).splitlines() or [""])[0][:300]
        click.echo(f"error: internal error ({type(exc).__name__}: {first}); rerun with --debug and report it", err=True)
        sys.exit(1)
