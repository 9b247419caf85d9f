"""Layers the user protects from pruning (``--exclude PATTERN``, issue 15.14).

Torch-Pruning's ``ignored_layers`` and NNI's ``exclude`` keep chosen layers whole; here a pattern
(a shell glob, case-sensitive) names layers by their node name or by the name of one of their
weights. Every channel group whose output channels such a layer produces is marked blocked, with
the pattern as the reason, before scoring and allocation: its channels all stay, and the rest of
the model meets the target (or the target error says that the exclusion caps it).

    excluded = exclude_groups(analysis, ("backbone.conv1*", "head.*"))   # {pattern: [group ids]}
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from ..analysis import Analysis
from ..errors import OnnxPruneError

PRODUCER_ROLES = ("out", "depthwise")


def layer_names(analysis: Analysis, node_index: int) -> list[str]:
    """The names a pattern may match for a layer: its node name and its constant inputs (weights)."""
    import onnx_graphsurgeon as gs

    node = analysis.model.graph.nodes[node_index]
    names = [node.name] if node.name else []
    return names + [t.name for t in node.inputs if isinstance(t, gs.Constant) and t.name]


def exclude_groups(analysis: Analysis, patterns) -> dict[str, list[int]]:
    """Block every group produced by a layer that matches one of ``patterns``; a pattern that
    matches no layer at all raises OnnxPruneError (a typo must not pass silently)."""
    patterns = tuple(patterns or ())
    if not patterns:
        return {}
    matched: dict[str, list[int]] = {p: [] for p in patterns}
    any_layer: dict[str, bool] = {p: False for p in patterns}
    for group in analysis.groups:
        for d in group.dims:
            dim = analysis.dims[d]
            if dim.role not in PRODUCER_ROLES or dim.node is None:
                continue
            names = layer_names(analysis, dim.node)
            for p in patterns:
                if any(fnmatchcase(n, p) for n in names):
                    any_layer[p] = True
                    if group.id not in matched[p]:
                        matched[p].append(group.id)
    missing = [p for p, hit in any_layer.items() if not hit and not _matches_any_node(analysis, p)]
    if missing:
        examples = ", ".join(n.name for n in analysis.model.graph.nodes[:4] if n.name)
        raise OnnxPruneError(f"--exclude {missing[0]!r} matches no node or weight name (names look like: {examples})")
    for p, gids in matched.items():
        for gid in gids:
            reason = f"excluded by --exclude {p!r}"
            if reason not in analysis.groups[gid].blocked:
                analysis.groups[gid].blocked.append(reason)
    return matched


def _matches_any_node(analysis: Analysis, pattern: str) -> bool:
    """A pattern naming a layer that produces no prunable channels (a pool, an activation) is
    not a typo: it protects nothing and says so through the empty group list."""
    return any(fnmatchcase(n.name or "", pattern) or any(fnmatchcase(t.name or "", pattern) for t in n.inputs)
               for n in analysis.model.graph.nodes)
