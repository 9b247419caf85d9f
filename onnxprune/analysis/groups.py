"""Grouping: run every op's rule over the graph, join the tied atoms into channels (union-find),
and the channels into groups; then prove, patch or block every run-time shape value a rule
depends on. The result is an :class:`Analysis` (README, "How it works": analysis)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..model.graph import Model
from .builder import OUT, Builder, ChannelGroup, Dim, ShapeUnknown
from .rules import RULES, unknown_op
from .shape_values import Forms, exclusive_path, patchable_literal, static


@dataclass
class Analysis:
    """The result: dims, groups, and the maps from atoms to (group, channel)."""

    model: Model
    dims: list[Dim]
    groups: list[ChannelGroup]
    patches: list[tuple[int, object]]
    atom_channel: np.ndarray  # atom -> global channel id (index into a keep vector)
    group_offsets: np.ndarray  # group -> first global channel id
    by_key: dict[tuple[str, int], Dim]

    @property
    def n_channels(self) -> int:
        return int(self.group_offsets[-1])

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def full_keep(self) -> np.ndarray:
        return np.ones(self.n_channels, dtype=bool)

    def keep_vector(self, kept: dict[int, np.ndarray]) -> np.ndarray:
        """Global keep vector from ``{group id: kept channel indices}`` (others kept whole)."""
        keep = self.full_keep()
        for gid, channels in kept.items():
            start, stop = self.group_offsets[gid], self.group_offsets[gid + 1]
            mask = np.zeros(stop - start, dtype=bool)
            mask[np.asarray(channels, dtype=np.int64)] = True
            keep[start:stop] = mask
        return keep

    def kept_atoms(self, keep: np.ndarray) -> np.ndarray:
        return keep[self.atom_channel]

    def kept_sizes(self, keep: np.ndarray) -> np.ndarray:
        """Size of every dim after pruning."""
        atoms = self.kept_atoms(keep).astype(np.int64)
        if not self.dims:
            return np.zeros(0, dtype=np.int64)
        return np.add.reduceat(atoms, np.array([d.offset for d in self.dims])) if atoms.size else np.zeros(len(self.dims), dtype=np.int64)

    def kept_index(self, keep_atoms: np.ndarray, d: Dim) -> np.ndarray:
        return np.flatnonzero(keep_atoms[d.offset : d.offset + d.size])

    def group_of(self, d: Dim) -> list[ChannelGroup]:
        return [g for g in self.groups if d.id in g.atom_index]


def analyse(model: Model) -> Analysis:
    """Run every op's rule in graph order and group the tied atoms into channel groups."""
    b = Builder(model)
    for node in model.graph.nodes:
        b.node = node
        b.taken = set()
        try:
            RULES.get(node.op, unknown_op)(node, b)
        except ShapeUnknown as exc:
            b.block_node(f"{node.op} '{node.name}': shape of '{exc}' is unknown")
        for t in node.inputs:
            if t.name in b.spread and t.name not in b.taken:
                b.block(b.spread[t.name].src, b._spread_reason(t))
    b.node = None
    for spread in b.spread.values():  # shuffles that did not become a Gather keep their ties
        spread.settle()
    for out in model.graph.outputs:
        axis = b.axis_of(out)
        if axis is not None:
            b.block(b.by_key[(out.name, axis)], f"reaches graph output '{out.name}'")
        b.block(out, f"reaches graph output '{out.name}'")
    analysis = _group(model, b)
    _check_expectations(analysis, b)
    return analysis


def _check_expectations(analysis: Analysis, b: Builder) -> None:
    """Prove each run-time shape value follows the pruned counts, else patch it, else block.

    An element computed from sizes that equals its requirement for every plan (compared as affine
    functions of the channels' keep indicators) stays as it is, dynamic batch included. One that
    must change is patched: a literal in place; a computed one that depends on channel counts
    only (``(C + 1) // 2`` of a chunk) is replaced by a constant, the whole input if all its
    elements are such, else its entry of the Concat that builds the vector. Otherwise the
    groups of the channels involved are blocked.
    """
    forms = Forms(analysis, b)
    for ex in b.expectations:
        pending = []
        for i, (elem, req) in enumerate(zip(ex.elems, ex.required)):
            want = forms.required(req)
            if want is None:
                continue
            have = forms.of(elem)
            if have.exact:
                diff = have.plus(want, -1)
                if not diff.channels() and diff.const == 0:
                    continue  # equal for every plan (x[:, -2:]'s -2 is not: it counts from the end)
            elif not (have.channels() | want.channels()):
                continue  # depends on no prunable channel: stays right
            pending.append((i, elem, req, want, have))
        if not pending:
            continue
        node = analysis.model.graph.nodes[ex.node]
        if all(static(forms, e) for e in ex.elems) and node.inputs[ex.pos] not in analysis.model.graph.inputs:
            overrides = {i: req for i, _, req, _, _ in pending}
            analysis.patches.append((ex.node, _replace_input(ex.pos, _typed_values(b, node.inputs[ex.pos]), overrides)))
            continue
        failing: set[int] = set()
        for i, elem, req, want, have in pending:
            if patchable_literal(b, elem, ex):
                analysis.patches.append((elem.origin[0], _literal_patch(elem.origin, req)))
            elif elem.origin and static(forms, elem) and _static_entry(b, forms, elem):
                entry = analysis.model.graph.nodes[elem.origin[0]].inputs[elem.origin[1]]
                analysis.patches.append((elem.origin[0], _replace_input(elem.origin[1], _typed_values(b, entry), {elem.origin[2]: req})))
            else:
                failing |= want.channels() | have.channels()
        if failing:
            reason = f"{ex.what} is computed at run time and would not follow the pruned channel count"
            for gid in {int(forms.channel_group[c]) for c in failing}:
                if reason not in analysis.groups[gid].blocked:
                    analysis.groups[gid].blocked.append(reason)


def _static_entry(b: Builder, forms: Forms, elem) -> bool:
    """The Concat input an element entered holds only static values and leads here alone."""
    node = b.model.graph.nodes[elem.origin[0]]
    r = b.shape_values.of(node.inputs[elem.origin[1]])
    return r is not None and all(static(forms, e) for e in r[1]) and exclusive_path(b, elem.origin)


def _typed_values(b: Builder, t: gs.Tensor) -> np.ndarray:
    values = b.int_values(t)
    try:
        return values.astype(np.dtype(t.dtype)) if t.dtype is not None else values
    except TypeError:
        return values


def _replace_input(pos: int, original: np.ndarray, overrides: dict):
    """Point input ``pos`` at a constant: the original values with some entries set to the
    kept sizes they must take (a computed bound becomes a literal)."""
    original = np.asarray(original)

    def fix(node, ctx) -> None:
        name = node.input[pos]
        values = (ctx.constant(name) if name in ctx.inits else original).copy()
        flat = values.reshape(-1)
        for i, req in overrides.items():
            flat[i] = req.at(ctx)
        ctx.replace_constant(node, pos, values, f"{node.name or node.output[0]}_{pos}")

    return fix


def _literal_patch(origin, req):
    """Set one entry of a constant input (a shape literal) to the requirement's value."""
    _, pos, flat, _ = origin

    def fix(node, ctx) -> None:
        values = ctx.constant(node.input[pos]).copy()
        values.reshape(-1)[flat] = req.at(ctx)
        ctx.replace_constant(node, pos, values, f"{node.name or node.output[0]}_shape")

    return fix


def _group(model: Model, b: Builder) -> Analysis:
    n = b.n_atoms
    if b.edges:
        u = np.concatenate([e[0] for e in b.edges])
        v = np.concatenate([e[1] for e in b.edges])
    else:
        u = v = np.zeros(0, dtype=np.int64)
    adjacency = coo_matrix((np.ones(len(u), dtype=np.int8), (u, v)), shape=(n, n))
    n_comp, comp = connected_components(adjacency, directed=False)

    sizes = np.array([d.size for d in b.dims], dtype=np.int64)
    atom_dim = np.repeat(np.arange(len(b.dims)), sizes)
    # Signature of a component = the sorted set of dims it touches.
    pairs = np.unique(comp.astype(np.int64) * max(len(b.dims), 1) + atom_dim)
    pair_comp, pair_dim = np.divmod(pairs, max(len(b.dims), 1))
    bounds = np.flatnonzero(np.diff(pair_comp)) + 1
    comp_dims = np.split(pair_dim, bounds)
    comp_ids = pair_comp[np.r_[0, bounds]] if len(pairs) else np.zeros(0, dtype=np.int64)

    first_atom = np.full(n_comp, n, dtype=np.int64)
    np.minimum.at(first_atom, comp, np.arange(n))

    signature_group: dict[tuple, int] = {}
    comp_group = np.zeros(n_comp, dtype=np.int64)
    members: list[list[int]] = []
    for cid, dims in sorted(zip(comp_ids.tolist(), comp_dims), key=lambda x: first_atom[x[0]]):
        key = tuple(dims.tolist())
        gid = signature_group.setdefault(key, len(signature_group))
        if gid == len(members):
            members.append([])
        comp_group[cid] = gid
        members[gid].append(cid)

    comp_channel = np.zeros(n_comp, dtype=np.int64)
    for comps in members:
        comp_channel[comps] = np.arange(len(comps))
    group_sizes = np.array([len(m) for m in members], dtype=np.int64)
    group_offsets = np.concatenate([[0], np.cumsum(group_sizes)])
    atom_group = comp_group[comp]
    atom_channel = group_offsets[atom_group] + comp_channel[comp]

    groups = []
    for (key, gid) in signature_group.items():
        g = ChannelGroup(gid, list(key), int(group_sizes[gid]))
        for did in key:
            d = b.dims[did]
            local = np.flatnonzero(atom_group[d.offset : d.offset + d.size] == gid)
            g.atom_index[did] = local
            g.channel_atoms[did] = comp_channel[comp[d.offset + local]]
            if d.blocked and d.blocked not in g.blocked:
                g.blocked.append(d.blocked)
        g.name = _group_name(model, b.dims, g)
        groups.append(g)
    groups.sort(key=lambda g: g.id)
    return Analysis(model, b.dims, groups, b.patches, atom_channel, group_offsets, b.by_key)


def _group_name(model: Model, dims: list[Dim], g: ChannelGroup) -> str:
    """Name a group after the nodes producing its channels, else its first tensor."""
    producers = [dims[d] for d in g.dims if dims[d].role == OUT and dims[d].node is not None]
    if producers:
        names = [model.graph.nodes[p.node].name or f"node{p.node}" for p in producers]
        return "+".join(names[:3]) + ("+..." if len(names) > 3 else "")
    return dims[g.dims[0]].tensor
