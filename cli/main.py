"""The ``onnxprune`` command: a thin click front end over the library.

Exit codes: 0 success, 1 failure (a one-line ``error: ...`` on stderr), 2 usage error,
130 interrupted. Only this module prints.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from onnxprune import __version__
from onnxprune.errors import OnnxPruneError

EXAMPLES_COMPRESS = """
\b
Examples:
  onnxprune compress model.onnx --flops 0.3
  onnxprune compress model.onnx --params 0.5 --round-to 8 -o small.onnx --json
  onnxprune compress model.onnx --flops 0.3 --input-shape input:1,3,320,320
"""


def parse_input_shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]] | None:
    """``NAME:1,3,224,224`` (repeatable) -> ``{"NAME": (1, 3, 224, 224)}``."""
    shapes = {}
    for v in values:
        name, sep, dims = v.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.split(","))
            if any(d <= 0 for d in shapes[name]):
                raise ValueError
        except ValueError:
            raise click.BadParameter(f"{v!r}: expected NAME:D0,D1,... with positive integers", param_hint="--input-shape")
    return shapes or None


def output_path(model: str, output: str | None, suffix: str, force: bool) -> Path:
    """Default beside the input (``model.pruned.onnx``); never the input; existing needs --force."""
    src = Path(model)
    out = Path(output) if output else src.with_name(src.stem + suffix)
    if src.exists() and out.exists() and os.path.samefile(src, out):
        raise OnnxPruneError(f"output {out} is the input model; choose another path with -o")
    if out.exists() and not force:
        raise OnnxPruneError(f"{out} exists; pass --force to overwrite it")
    return out


input_shape_option = click.option(
    "--input-shape", "input_shapes", multiple=True, metavar="NAME:D0,D1,...",
    help="Concrete shape for an input with symbolic dimensions (repeatable). A symbolic batch defaults to 1.",
)


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


@cli.command(epilog=EXAMPLES_COMPRESS)
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--flops", type=float, help="Fraction of MACs to remove, e.g. 0.3.")
@click.option("--params", type=float, help="Fraction of parameters to remove (instead of --flops).")
@click.option("-o", "--output", type=click.Path(), help="Pruned model path [default: MODEL.pruned.onnx].")
@click.option("--plan", "plan_path", type=click.Path(), help="Plan JSON path [default: OUTPUT with .plan.json].")
@click.option("--criterion", type=click.Choice(["l1", "l2", "fpgm", "bn_scale", "random"]), help="Channel score [default: l1].")
@click.option("--allocation", type=click.Choice(["uniform"]), default="uniform", show_default=True,
              help="uniform: one ratio for every group, found by binary search (ACRA).")
@click.option("--max-ratio", type=float, default=0.8, show_default=True, help="Most of any group's channels that may go.")
@click.option("--min-channels", type=int, default=1, show_default=True, help="Fewest channels any group keeps.")
@click.option("--round-to", type=int, default=1, show_default=True, help="Kept channel counts are multiples of N (fast kernels).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random choices (random criterion, checks).")
@input_shape_option
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
def compress(model, flops, params, output, plan_path, criterion, allocation, max_ratio, min_channels, round_to, seed,
             input_shapes, force, as_json, quiet):
    """Prune MODEL to remove a fraction of its FLOPs (MACs) or parameters."""
    from onnxprune import Limits, Settings, Target, compress as run_compress, save_model
    from onnxprune.graph import write_bytes_atomic

    if (flops is None) == (params is None):
        raise click.UsageError("give exactly one of --flops or --params")
    target = Target("flops", flops) if flops is not None else Target("params", params)
    out = output_path(model, output, ".pruned.onnx", force)
    plan_out = Path(plan_path) if plan_path else out.with_suffix(".plan.json")
    settings = Settings(target, criterion, allocation, Limits(max_ratio, min_channels, round_to), seed)
    result = run_compress(model, settings, parse_input_shapes(input_shapes))
    save_model(result.model, out)
    write_bytes_atomic(plan_out, result.plan.to_json().encode())
    summary = {**result.summary, "output": str(out), "plan": str(plan_out)}
    if as_json:
        click.echo(json.dumps(summary, indent=1))
    elif not quiet:
        click.echo(format_summary(summary))


def format_summary(s: dict) -> str:
    g, seconds = s["groups"], s["seconds"]
    return "\n".join([
        f"MACs     {s['macs_before']:>15,} -> {s['macs_after']:>15,}  (-{s['flops_reduction']:.1%})",
        f"params   {s['params_before']:>15,} -> {s['params_after']:>15,}  (-{s['params_reduction']:.1%})",
        f"target   remove {s['target']['fraction']:.0%} of {s['target']['kind']}; achieved {s['achieved']:.1%}"
        f" with {s['allocation']} ratio {s['uniform_ratio']:.3f}, criterion {s['criterion']}",
        f"groups   {g['pruned']} pruned of {g['prunable']} prunable ({g['total']} total, {g['blocked']} blocked); "
        f"{s['channels']['removed']} of {s['channels']['prunable']} channels removed",
        f"time     {sum(seconds.values()):.2f} s (" + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()) + ")",
        f"wrote    {s['output']} and {s['plan']}",
    ])


@cli.command()
@click.argument("model", type=click.Path())
@click.argument("plan", type=click.Path())
@click.option("-o", "--output", type=click.Path(), help="Pruned model path [default: MODEL.pruned.onnx].")
@input_shape_option
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def apply(model, plan, output, input_shapes, force, as_json):
    """Reproduce a pruned model from MODEL and a PLAN written by compress (byte-identical)."""
    from onnxprune import Plan, apply_plan, save_model

    try:
        text = Path(plan).read_text()
    except OSError as exc:
        raise OnnxPruneError(f"{plan}: cannot read plan ({exc.strerror})") from exc
    out = output_path(model, output, ".pruned.onnx", force)
    pruned = apply_plan(model, Plan.from_json(text), parse_input_shapes(input_shapes))
    save_model(pruned, out)
    if as_json:
        click.echo(json.dumps({"output": str(out)}))
    else:
        click.echo(f"wrote {out}")


@cli.command()
@click.argument("model", type=click.Path())
@input_shape_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("-o", "--output", type=click.Path(), help="Write the report to a file instead of stdout.")
def inspect(model, input_shapes, fmt, as_json, output):
    """Per-layer FLOPs/params, the channel groups, and every blocked group with its reason."""
    from onnxprune import inspect_model
    from onnxprune.graph import write_bytes_atomic

    report = inspect_model(model, parse_input_shapes(input_shapes))
    text = json.dumps(report, indent=1) if (as_json or fmt == "json") else format_inspect(report)
    if output:
        write_bytes_atomic(output, (text + "\n").encode())
    else:
        click.echo(text)


def format_inspect(r: dict) -> str:
    m = r["model"]
    lines = [
        f"model    {m['path']}  opset {m['opset']}  IR {m['ir_version']}  {m['nodes']} nodes  producer {m['producer'] or '?'}",
        f"inputs   " + ", ".join(f"{k} {v}" for k, v in m["inputs"].items()) + f"   outputs {', '.join(m['outputs'])}",
        f"MACs     {r['macs']:,}   params {r['params']:,}   prunable MACs {r['prunable_macs_share']:.1%}",
        "",
        f"{'layer':<44} {'op':<14} {'output':<20} {'MACs':>14} {'params':>10}  groups (out/in)",
    ]
    for l in r["layers"]:
        shape = "x".join(str(d) for d in (l["output_shape"] or []))
        status = "" if l["prunable"] else "  [blocked]"
        lines.append(
            f"{_short(l['name'], 44):<44} {l['op']:<14} {shape:<20} {l['macs']:>14,} {l['params']:>10,}  "
            f"{','.join(map(str, l['out_groups'])) or '-'}/{','.join(map(str, l['in_groups'])) or '-'}{status}"
        )
    lines += ["", f"{'group':>5} {'channels':>8}  status    name"]
    for g in r["groups"]:
        status = "prunable" if g["prunable"] else "blocked "
        lines.append(f"{g['id']:>5} {g['size']:>8}  {status}  {_short(g['name'], 60)}")
        for reason in g["blocked"]:
            lines.append(f"{'':>16}  - {reason}")
    if r["blockers"]:
        lines += ["", "blockers by share of MACs they pin:"]
        lines += [f"  {b['macs_share']:6.1%}  {b['reason']}" for b in r["blockers"]]
    return "\n".join(lines)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


def main(argv=None) -> None:
    """Entry point: one-line errors, documented exit codes, no tracebacks."""
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


if __name__ == "__main__":
    main()
