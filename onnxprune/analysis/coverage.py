"""Architecture coverage: how much of a model's convolution work the analysis can prune.

For one model, ``coverage_summary`` reports the MACs of all weighted layers and of the
convolutions, the share of each that pruning can reduce, what blocks the rest (by op type and by
exact reason, with MAC shares), and the outcome of compressing at a FLOPs target: the reduction
reached with the invariants checked on the result, or the exact unreachable-target message.
``format_coverage`` renders rows of several models as a text table (``onnxprune inspect
--summary`` prints it; ``benchmarks/coverage.py`` puts it in docs/COVERAGE.md).

A layer (Conv, ConvTranspose, Gemm, MatMul) counts as *prunable* when at least one of its weight
axes (output channels, input channels, or a depthwise channel axis) belongs to a prunable channel
group: its MACs then shrink with the plan. A MatMul of two computed operands (attention) has no
weight to slice and is never prunable.

    rows = [coverage_summary(path) for path in paths]
    print(format_coverage(rows))
"""

from __future__ import annotations

import re
import time

import numpy as np
import onnx

from .oracle import equivalent, masked_model
from .groups import Analysis
from ..errors import OnnxPruneError
from ..pipeline import compress, measured_cost, prepare
from ..settings import Settings, Target
from ..rewrite import random_inputs, rewrite, run

CONV_OPS = ("Conv", "ConvTranspose")


def coverage_summary(source, input_shapes=None, flops: float | None = 0.3, check: bool = True, seed: int = 0) -> dict:
    """Coverage of one model (path, ModelProto or Model) as plain data; never raises for a
    problem of the model: a load or analysis error is reported under ``error``.

    Keys: ``macs`` / ``conv_macs`` (at the analysis input shape), ``prunable_macs_share`` /
    ``prunable_conv_share``, ``groups`` (total, prunable), ``blockers_by_op`` (op type -> share
    of conv MACs it blocks), ``macs_blockers_by_op`` (the same over all MACs), ``blockers``
    (exact reasons with their share of conv MACs), ``compress`` (``ok``, ``reduction``,
    ``invariants`` or ``message``; absent when ``flops`` is None) and ``seconds``."""
    started = time.perf_counter()
    row: dict = {"model": "<proto>" if isinstance(source, onnx.ModelProto) else str(getattr(source, "path", None) or source)}
    try:
        model, analysis, cost = prepare(source, input_shapes)
    except OnnxPruneError as exc:
        row["error"] = str(exc)
        return row
    row.update(_macs(analysis, cost))
    if flops is not None:
        row["compress"] = _compress(model, flops, check, seed)
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


def _macs(analysis: Analysis, cost) -> dict:
    keep = analysis.full_keep()
    per_node = cost.per_node(keep)
    nodes = analysis.model.graph.nodes
    prunable_dims = {d for g in analysis.prunable_groups for d in g.dims}
    total = sum(c.macs for c in per_node.values())
    conv_macs = prunable_conv = prunable_all = 0
    blocked_by_op: dict[str, int] = {}
    blocked_by_reason: dict[str, int] = {}
    macs_blocked_by_op: dict[str, int] = {}
    reasons = _node_reasons(analysis)
    weight_dims: dict[int, list[int]] = {}
    for d in analysis.dims:
        if d.node is not None and d.role:
            weight_dims.setdefault(d.node, []).append(d.id)
    for i, c in per_node.items():
        if not c.macs:
            continue
        prunable = any(d in prunable_dims for d in weight_dims.get(i, []))
        if prunable:
            prunable_all += c.macs
        else:
            reason = reasons.get(i) or _no_group_reason(nodes[i], i in weight_dims)
            op = _reason_op(reason)
            macs_blocked_by_op[op] = macs_blocked_by_op.get(op, 0) + c.macs
        if nodes[i].op not in CONV_OPS:
            continue
        conv_macs += c.macs
        if prunable:
            prunable_conv += c.macs
            continue
        blocked_by_reason[reason] = blocked_by_reason.get(reason, 0) + c.macs
        blocked_by_op[op] = blocked_by_op.get(op, 0) + c.macs
    share = lambda v: round(v / conv_macs, 4) if conv_macs else 0.0  # noqa: E731
    return {
        "macs": int(total),
        "conv_macs": int(conv_macs),
        "prunable_conv_share": share(prunable_conv),
        "prunable_macs_share": round(prunable_all / total, 4) if total else 0.0,
        "groups": {"total": len(analysis.groups), "prunable": len(analysis.prunable_groups)},
        "blockers_by_op": {op: share(m) for op, m in sorted(blocked_by_op.items(), key=lambda x: -x[1])},
        "macs_blockers_by_op": {op: round(m / total, 4) for op, m in sorted(macs_blocked_by_op.items(), key=lambda x: -x[1])},
        "blockers": [{"reason": r, "conv_macs_share": share(m)} for r, m in sorted(blocked_by_reason.items(), key=lambda x: -x[1])],
    }


def _no_group_reason(node, has_weight: bool) -> str:
    if has_weight:
        return f"{node.op} '{node.name}' has no channel group"
    return f"{node.op} '{node.name}' has no constant weight to slice (its operands are computed)"


def _node_reasons(analysis: Analysis) -> dict[int, str]:
    """For each weighted node, the first blocking reason of its output channels (else inputs)."""
    out: dict[int, str] = {}
    rank = {"out": 0, "depthwise": 0, "in": 1}
    best: dict[int, int] = {}
    for g in analysis.groups:
        if not g.blocked:
            continue
        for did in g.dims:
            d = analysis.dims[did]
            if d.node is None or d.role not in rank:
                continue
            if d.node not in best or rank[d.role] < best[d.node]:
                best[d.node] = rank[d.role]
                out[d.node] = g.blocked[0]
    return out


def _reason_op(reason: str) -> str:
    """The op type a blocking reason names ("Reshape 'x' ..." -> Reshape), else its kind."""
    m = re.match(r"^(\w+) '", reason)
    if m:
        return m.group(1)
    if "graph input" in reason:
        return "graph input"
    if "graph output" in reason:
        return "graph output"
    m = re.search(r"comes from (\w+) '", reason)
    return m.group(1) if m else "other"


def _compress(model, flops: float, check: bool, seed: int) -> dict:
    try:
        result = compress(model, Settings(target=Target("flops", flops), seed=seed))
    except OnnxPruneError as exc:
        return {"ok": False, "message": str(exc)}
    out = {"ok": True, "reduction": result.summary["flops_reduction"], "invariants": []}
    if check:
        try:
            out["invariants"] = _check_invariants(result, seed)
        except AssertionError as exc:
            return {"ok": False, "reduction": out["reduction"], "message": f"invariant failed: {exc}"}
    return out


def _check_invariants(result, seed: int) -> list[str]:
    """Invariants on the compressed model beyond the checker/onnxruntime run that ``compress``
    does (3): predicted cost = measured cost (4), removing nothing changes nothing (2), and
    masking equivalence on the chosen plan (1). Returns the names of those checked; raises
    AssertionError naming the one that fails (also under ``python -O``)."""
    analysis = result.analysis
    shapes = analysis.model.input_shapes
    _require(measured_cost(result.model, shapes) == result.allocation.cost, "invariant 4: measured cost differs from the prediction")
    feeds = random_inputs(analysis.model.proto, shapes, seed=seed + 1)
    reference = run(analysis.model.proto, feeds)
    for a, b in zip(reference, run(rewrite(analysis, analysis.full_keep()), feeds)):
        _require(np.array_equal(a, b), "invariant 2: an empty plan changed the outputs")
    expected = run(masked_model(analysis, result.allocation.keep), feeds)
    for a, b in zip(expected, run(result.model, feeds)):
        _require(equivalent(a, b), "invariant 1: pruned outputs differ from the masked model")
    return ["checker+onnxruntime", "cost", "empty plan", "masking"]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


# --- text ---------------------------------------------------------------------------------------
def format_coverage(rows: list[dict], all_macs: bool = False) -> str:
    """A fixed-width table: model, source, conv GMACs, prunable share, result at the target,
    and the top blockers by op type (share of conv MACs).

    ``all_macs``: the table of ``onnxprune inspect --summary``: no source column, the MACs of
    every weighted layer (Conv, Gemm, MatMul) and their prunable share beside the conv columns,
    and blockers by share of all MACs."""
    if all_macs:
        width = max([34] + [len(_name(r)) for r in rows])
        header = (f"{'model':<{width}} {'GMACs':>8} {'prunable':>8} {'conv GMACs':>10} {'conv prunable':>13}  "
                  f"{'at target':<28} blockers (share of MACs)")
    else:
        width = 34
        header = f"{'model':<34} {'source':<12} {'conv GMACs':>10} {'prunable':>8}  {'at target':<28} blockers"
    lines = [header, "-" * len(header)]
    for r in rows:
        name = _name(r) if all_macs else _name(r)[:34]
        lead = f"{name:<{width}}" if all_macs else f"{name:<34} {str(r.get('source', ''))[:12]:<12}"
        if "error" in r:
            blank = f"{'':>8} {'':>8} {'':>10} {'':>13}" if all_macs else f"{'':>10} {'':>8}"
            lines.append(f"{lead} {blank}  error: {r['error']}")
            continue
        outcome = _outcome(r)
        if all_macs:
            blockers = ", ".join(f"{op} {v:.0%}" for op, v in list(r.get("macs_blockers_by_op", {}).items())[:3]) or "-"
            lines.append(f"{lead} {r['macs'] / 1e9:>8.3f} {r['prunable_macs_share']:>8.1%} {r['conv_macs'] / 1e9:>10.3f} "
                         f"{r['prunable_conv_share']:>13.1%}  {outcome:<28} {blockers}")
        else:
            blockers = ", ".join(f"{op} {v:.0%}" for op, v in list(r.get("blockers_by_op", {}).items())[:3]) or "-"
            lines.append(f"{lead} {r['conv_macs'] / 1e9:>10.3f} {r['prunable_conv_share']:>8.1%}  {outcome:<28} {blockers}")
    return "\n".join(lines) + "\n"


def _name(r: dict) -> str:
    return str(r.get("name") or r.get("model"))


def _outcome(r: dict) -> str:
    if "compress" not in r:
        return "-"
    c = r["compress"]
    if c.get("ok"):
        return f"-{c['reduction']:.1%} FLOPs" + (" ✓ invariants" if c.get("invariants") else "")
    return "unreachable" if "cannot remove" in c.get("message", "") else "failed"
