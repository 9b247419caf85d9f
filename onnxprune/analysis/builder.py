"""Channel dependency analysis: which channels of which tensors must be removed together.

Every channel of every tensor on its channel axis is an *atom*. A *dim* is one axis of one tensor
whose atoms take part in pruning: the channel axis of an activation, or an axis of a weight
(``Conv`` weight axis 0 = output channels, axis 1 = input channels). Each op type has a rule
(``rules.py``, one table) that ties atoms of its inputs and outputs together; union-find over the
ties gives *channels*: sets of atoms that must be kept or removed together. Channels touching
the same set of dims form a *ChannelGroup*. For Conv -> BN -> Relu -> Conv::

    group 0: conv1.W[axis 0] (out) ~ conv1.B ~ bn.scale/bias/mean/var ~ y1, y2, y3 ~ conv2.W[axis 1] (in)
    channel k of group 0 = {conv1.W[k], conv1.B[k], bn.*[k], y1[:,k], y2[:,k], y3[:,k], conv2.W[:,k]}

Atoms that reach a graph input or output, or an op without a rule, are *blocked*: their groups
are reported with a reason and never pruned.

Two kinds of tensors need more than one channel axis per tensor:

* a *spread* tensor carries its channels over several axes (channel shuffle's [N, g, C/g, H, W]):
  it keeps an index array (the source atom at each position of those axes) that Reshape and
  Transpose push along until one channel axis appears again; any other consumer blocks it;
* an *alias* is a weight computed from constants alone (``DequantizeLinear`` of int8 weights):
  its dims are the dims of the constant behind it, which the rewrite slices.

Shape values computed at run time (``Shape -> Gather -> Concat`` targets, chunk bounds) are
evaluated by ``shape_values.py``; after grouping, each value a rule depends on is proved to
follow the pruned counts, patched, or its channels are blocked.

    analysis = analyse(load_model("model.onnx"))
    [g.name for g in analysis.groups if g.prunable]
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx_graphsurgeon as gs

from ..model.graph import Model
from .shape_values import Expectation, Expr, ShapeValues

# Roles of weight dims; the criteria and the reconstruction look for them.
OUT = "out"  # output-channel axis of a weight (Conv W axis 0): a producer of channels
IN = "in"  # input-channel axis of a weight (Conv W axis 1): a consumer that contracts channels
BN_SCALE = "bn_scale"
DEPTHWISE = "depthwise"  # channel axis of a depthwise Conv weight: neither produced nor contracted


@dataclass
class Dim:
    """One axis of one tensor whose entries are atoms of the analysis."""

    id: int
    tensor: str
    axis: int
    size: int
    offset: int  # first atom id
    constant: bool
    role: str = ""
    node: int | None = None  # index of the node that gave the role (weights)
    blocked: str | None = None

    @property
    def label(self) -> str:
        return f"{self.tensor}[axis {self.axis}]"


@dataclass
class ChannelGroup:
    """Channels that are pruned by one decision each, with the tensors they live in.

    ``channel_atoms[d]`` lists, for dim ``d`` of the group, the channel (0..size-1) of every atom
    of ``d`` that belongs to the group, in the order of ``atom_index[d]`` (offsets within the dim).
    """

    id: int
    dims: list[int]
    size: int
    blocked: list[str] = field(default_factory=list)
    name: str = ""
    atom_index: dict[int, np.ndarray] = field(default_factory=dict)
    channel_atoms: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def prunable(self) -> bool:
        return not self.blocked and self.size > 1


@dataclass
class Spread:
    """Channels of ``src`` laid over several axes of a tensor.

    ``index`` has the sizes of ``axes`` (increasing) and holds the ``src`` atom at each position.
    Pruning shortens axis ``shrink`` only: the atoms at one position along it are tied, so a plan
    removes whole slices and the pruned tensor is a sub-array of the original.
    """

    src: Dim
    axes: tuple[int, ...]
    index: np.ndarray
    shrink: int
    chain: tuple[int, ...] = ()  # nodes that carried it, the spreading Reshape first
    origin: tuple | None = None  # (shape, channel axis) of the tensor that was spread
    deferred: list = field(default_factory=list)  # ties and checks needed unless it becomes a Gather

    def then(self, node_index: int, **changes) -> "Spread":
        """The spread one node further down the chain."""
        return replace(self, chain=self.chain + (node_index,), **changes)

    def settle(self) -> None:
        """Apply the deferred ties and checks (once, whichever branch asks first)."""
        actions, self.deferred[:] = list(self.deferred), []
        for action in actions:
            action()


class Builder:
    """What a rule sees: shapes and constants of the graph, and the operations on atoms."""

    def __init__(self, model: Model):
        self.model = model
        self.tensors = model.tensors
        self.dims: list[Dim] = []
        self.by_key: dict[tuple[str, int], Dim] = {}
        self.channel_axis: dict[str, int] = {}  # variable tensor -> axis defined by its producer
        self.refused: dict[str, str] = {}  # variable tensor -> why its producer defined no channels
        self.blocked_tensors: dict[str, str] = {}
        self.edges: list[tuple[np.ndarray, np.ndarray]] = []
        self.patches: list[tuple[int, object]] = []
        self.n_atoms = 0
        self.node: gs.Node | None = None  # the node whose rule runs
        self.spread: dict[str, Spread] = {}
        self.taken: set[str] = set()  # spread inputs the current rule followed
        self.aliases: dict[str, tuple[str, list[int | None]]] = {}  # tensor -> (constant, axis map)
        self.expectations: list[Expectation] = []
        self.shape_values = ShapeValues(self)

    # --- reading the graph -------------------------------------------------------------
    def shape(self, t: gs.Tensor) -> tuple[int, ...]:
        shape = t.shape
        if shape is None or any(not isinstance(d, (int, np.integer)) for d in shape):
            raise ShapeUnknown(t.name)
        return tuple(int(d) for d in shape)

    def rank(self, t: gs.Tensor) -> int:
        return len(self.shape(t))

    def is_const(self, t: gs.Tensor) -> bool:
        """A constant, or an alias of one (a weight dequantised from int8 constants)."""
        return isinstance(t, gs.Constant) or t.name in self.aliases

    def value(self, t: gs.Tensor) -> np.ndarray:
        return np.asarray(t.values)

    def axis_of(self, t: gs.Tensor) -> int | None:
        """The channel axis of a variable tensor as defined by its producer, if any."""
        return self.channel_axis.get(t.name)

    # --- atoms ----------------------------------------------------------------------------
    def _new_dim(self, t: gs.Tensor, axis: int, constant: bool) -> Dim:
        size = self.shape(t)[axis]
        d = Dim(len(self.dims), t.name, axis, size, self.n_atoms, constant)
        self.n_atoms += size
        self.dims.append(d)
        self.by_key[(t.name, axis)] = d
        if t.name in self.blocked_tensors:
            d.blocked = self.blocked_tensors[t.name]
        return d

    def define(self, t: gs.Tensor, axis: int) -> Dim:
        """Called by the producer's rule: the output tensor ``t`` carries channels on ``axis``."""
        axis = axis % self.rank(t)
        self.channel_axis[t.name] = axis
        return self._new_dim(t, axis, constant=False)

    def dim(self, t: gs.Tensor, axis: int, role: str = "") -> Dim:
        """The dim of ``t`` on ``axis``, created on first use.

        Constants can always be sliced. A variable tensor has atoms only where its producer's
        rule defined them; asking for another axis (or for a tensor nobody defined) returns a
        blocked dim whose reason says where the channels came from.
        """
        axis = axis % self.rank(t)
        if t.name in self.aliases:
            source, axes = self.aliases[t.name]
            if axes[axis] is not None:
                return self.dim(self.tensors[source], axes[axis], role)
        if t.name in self.spread:
            self.block(self.spread[t.name].src, self._spread_reason(t))
        d = self.by_key.get((t.name, axis))
        if d is None:
            d = self._new_dim(t, axis, constant=isinstance(t, gs.Constant))
            if not d.constant:
                d.blocked = self._undefined_reason(t, axis)
        if self.node is not None and not d.constant and t.name in self.channel_axis:
            defined = self.channel_axis[t.name]
            if defined != axis:
                self.block(self.by_key[(t.name, defined)], f"{self._who()} reads '{t.name}' on axis {axis}, but its channels are on axis {defined}")
        if role:
            d.role = role
            d.node = self.model.index_of(self.node) if self.node is not None else None
        return d

    def why_undefined(self, t: gs.Tensor) -> str:
        """Why the variable ``t`` has no channel axis (its producer's refusal, a graph input...)."""
        return self._undefined_reason(t, 1)

    def _undefined_reason(self, t: gs.Tensor, axis: int) -> str:
        if t.name in self.refused:
            return self.refused[t.name]
        if t.name in self.channel_axis:
            return f"'{t.name}' carries channels on axis {self.channel_axis[t.name]}, not {axis}"
        if not t.inputs:
            return f"'{t.name}' is a graph input"
        producer = t.inputs[0]
        return f"'{t.name}' comes from {producer.op} '{producer.name}', which defines no channels on axis {axis}"

    def tie(self, a: Dim, b: Dim, a_index=None, b_index=None) -> None:
        """Atoms ``a[a_index[i]]`` and ``b[b_index[i]]`` are the same channel (identity by default)."""
        if a_index is None and b_index is None and a.size != b.size:
            reason = f"{self._who()}: {a.label} has {a.size} channels but {b.label} has {b.size}"
            self.block(a, reason)
            self.block(b, reason)
            return
        ai = np.arange(a.size) if a_index is None else np.asarray(a_index, dtype=np.int64)
        bi = np.arange(b.size) if b_index is None else np.asarray(b_index, dtype=np.int64)
        self.edges.append((a.offset + ai, b.offset + bi))

    def block(self, d: Dim | gs.Tensor, reason: str) -> None:
        """Forbid pruning of a dim, or of every dim (present and future) of a tensor."""
        if isinstance(d, Dim):
            if d.blocked is None:
                d.blocked = reason
            return
        if d.name in self.spread:
            self.block(self.spread[d.name].src, reason)
        if d.name in self.aliases:
            self.block(self.tensors[self.aliases[d.name][0]], reason)
        self.blocked_tensors.setdefault(d.name, reason)
        for (name, _), dim in self.by_key.items():
            if name == d.name and dim.blocked is None:
                dim.blocked = reason

    def refuse(self, t: gs.Tensor, reason: str) -> None:
        """The current node defines no channels for its output ``t`` (consumers get ``reason``)."""
        self.refused.setdefault(t.name, reason)

    def block_node(self, reason: str) -> None:
        """Block every input that carries channels and define no output channels."""
        node = self.node
        for t in node.inputs:
            if t.name and (self.is_const(t) or t.name in self.channel_axis or t.name in self.spread):
                self.block(t, reason)
        for t in node.outputs:
            self.refuse(t, reason)

    def patch(self, fn) -> None:
        """Register ``fn(node_proto, ctx)``, run at rewrite time to fix attributes/shape constants."""
        self.patches.append((self.model.index_of(self.node), fn))

    # --- tensors with channels on several axes, and weights computed from constants --------
    def spread_of(self, t: gs.Tensor) -> Spread | None:
        """The spread of ``t`` (a rule that calls this follows it; any other use blocks it)."""
        s = self.spread.get(t.name)
        if s is not None:
            self.taken.add(t.name)
        return s

    def set_spread(self, t: gs.Tensor, spread: Spread) -> None:
        self.spread[t.name] = spread

    def _spread_reason(self, t: gs.Tensor) -> str:
        s = self.spread[t.name]
        return f"{self._who()} reads '{t.name}', whose channels are spread over axes {list(s.axes)}"

    def alias(self, t: gs.Tensor, source: gs.Tensor, axes: list[int | None]) -> None:
        """``t`` is computed from the constant ``source`` alone; its axis a is source axis axes[a]."""
        if source.name in self.aliases:
            source_name, inner = self.aliases[source.name]
            axes = [None if a is None else inner[a] for a in axes]
        else:
            source_name = source.name
        self.aliases[t.name] = (source_name, axes)

    # --- shape values computed at run time ---------------------------------------------------
    def int_values(self, t: gs.Tensor) -> np.ndarray | None:
        """Value of a shape-like input: a constant, or computed from static shapes (else None)."""
        if isinstance(t, gs.Constant):
            return np.asarray(t.values)
        return self.shape_values.values(t)

    def expect(self, pos: int, required: list, what: str, zero_copies: gs.Tensor | None = None, node: gs.Node | None = None) -> bool:
        """Input ``pos`` of the current node must become ``required`` (per element) after pruning.

        A constant input is patched at rewrite time; a computed one is checked after grouping.
        ``zero_copies``: a Reshape input whose size an entry 0 copies. Returns False (and blocks
        the node) if the input cannot be evaluated.
        """
        current = self.node
        self.node = node or self.node  # a check deferred until a channel shuffle was understood
        try:
            return self._expect(pos, required, what, zero_copies)
        finally:
            self.node = current

    def _expect(self, pos, required, what, zero_copies) -> bool:
        t = self.node.inputs[pos]
        r = self.shape_values.of(t)
        if r is None:
            self.block_node(f"{self._who()}: {what} is computed at run time by ops onnxprune cannot evaluate")
            return False
        elems = r[1]
        if isinstance(t, gs.Constant):
            index = self.model.index_of(self.node)
            elems = [Expr(e.value, "lit", (), (index, pos, i, ())) for i, e in enumerate(elems)]
        if zero_copies is not None:
            shape = self.shape(zero_copies)
            elems = [Expr(shape[i], "size", (zero_copies.name, i)) if e.value == 0 and i < len(shape) else e
                     for i, e in enumerate(elems)]
        self.expectations.append(Expectation(self.model.index_of(self.node), pos, elems, list(required), f"{self._who()}: {what}"))
        return True

    def _who(self) -> str:
        return f"{self.node.op} '{self.node.name}'" if self.node is not None else "graph"


class ShapeUnknown(Exception):
    """A rule needs a tensor shape that inference could not give (the node is blocked)."""
