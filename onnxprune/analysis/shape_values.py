"""Values of shape tensors, and proofs that they follow the pruned channel counts.

Exporters compute Reshape targets, Slice bounds and Split sizes at run time: a dynamic batch
makes torch emit ``Shape -> Gather -> Unsqueeze -> Concat`` chains, and ``x.chunk(2, 1)`` becomes
``Slice`` with bounds ``(Shape(x)[1] + 1) // 2``. Their inputs' shapes are static in the analysis
graph, so each element is evaluated here to an expression tree over *sizes* (``Shape(t)[axis]``)
and *literals* (initializer entries)::

    Concat(Unsqueeze(Gather(Shape(x), 0)), [2], Unsqueeze(Div(Gather(Shape(x), 1), 2)), ...)
    -> [size(x, 0), lit 2, size(x, 1) // 2, ...]

A rule states what each element must become after pruning (``Kept(dim)``, ``Prefix(dim, stop)``,
``Const``). Once the channels are grouped, ``check`` rewrites both sides as affine functions of
the channels' keep indicators and compares them: an element computed from sizes must match for
*every* plan (else the groups of the mismatching channels are blocked), a literal that must
change is patched at rewrite time, provided the path from the initializer to the consumer is
its alone. Floor division is exact only where every channel's coefficient is divisible by the
divisor, which is what the rules' ties across blocks guarantee (a chunk's halves, a shuffle's
groups).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import onnx_graphsurgeon as gs

# Ops that move values without computing: an initializer entry that reaches a consumer through
# these alone can be patched in place.
_PRESERVING = ("Identity", "Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Concat", "Slice", "Gather")
_COMPARE = {"Equal": np.equal, "Greater": np.greater, "Less": np.less, "GreaterOrEqual": np.greater_equal,
            "LessOrEqual": np.less_equal, "Max": np.maximum, "Min": np.minimum, "Mod": np.mod}


@dataclass(frozen=True, eq=False)
class Expr:
    """One element of a shape tensor: its value at the analysis shapes and how it was computed.

    ``op`` is ``lit`` (an initializer entry), ``size`` (args: tensor name, axis),
    ``add``/``sub``/``mul``/``div`` (two Exprs; ``div`` is integer floor division) or ``opaque``
    (args: the Exprs it depends on). ``origin`` = (node index, input position, flat index, path of
    tensors to here) says where the element can be replaced: for a literal, the node that reads
    its initializer; for a computed element, the Concat that gathers it into a shape vector.
    """

    value: object
    op: str
    args: tuple = ()
    origin: tuple | None = None


def lit(value, origin=None) -> Expr:
    return Expr(value, "lit", (), origin)


class ShapeValues:
    """Evaluates shape tensors of the analysis graph element-wise (memoised per tensor)."""

    def __init__(self, builder):
        self.b = builder
        self.memo: dict[str, tuple[tuple[int, ...], list[Expr]] | None] = {}

    def of(self, t: gs.Tensor) -> tuple[tuple[int, ...], list[Expr]] | None:
        """(shape, flat elements) of ``t``, or None where some input is not computable here."""
        if t.name in self.memo:
            return self.memo[t.name]
        self.memo[t.name] = None  # guards against cycles
        result = self._evaluate(t)
        self.memo[t.name] = result
        return result

    def values(self, t: gs.Tensor) -> np.ndarray | None:
        r = self.of(t)
        return None if r is None else np.array([e.value for e in r[1]]).reshape(r[0])

    def _evaluate(self, t: gs.Tensor):
        if isinstance(t, gs.Constant):
            array = np.asarray(t.values)
            if array.dtype.kind not in "iufb" or array.size > 64:
                return None
            return array.shape, [lit(v.item()) for v in array.reshape(-1)]
        if not t.inputs:
            return None
        node = t.inputs[0]
        fn = _OPS.get(node.op)
        if fn is None:
            return None
        try:
            return fn(self, node, t)
        except (ValueError, IndexError, TypeError, KeyError, ZeroDivisionError):
            return None

    # helpers for the op table ---------------------------------------------------------------
    def inputs(self, node: gs.Node, count: int | None = None):
        """Evaluated inputs of ``node`` (the first ``count``), literals stamped with where they enter."""
        out = []
        index = self.b.model.index_of(node)
        for pos, t in enumerate(node.inputs[:count]):
            if not t.name:
                out.append(None)
                continue
            r = self.of(t)
            if r is None:
                raise ValueError(t.name)
            shape, elems = r
            if isinstance(t, gs.Constant):
                elems = [lit(e.value, (index, pos, i, ())) for i, e in enumerate(elems)]
            elif node.op == "Concat":
                elems = [e if e.origin else Expr(e.value, e.op, e.args, (index, pos, i, ())) for i, e in enumerate(elems)]
            out.append((shape, elems))
        return out

    def ints(self, node: gs.Node, pos: int, attr: str | None = None) -> list[int] | None:
        if attr is not None and attr in node.attrs:
            v = node.attrs[attr]
            return list(v) if isinstance(v, (list, tuple)) else [v]
        if pos < len(node.inputs) and node.inputs[pos].name:
            r = self.of(node.inputs[pos])
            if r is None:
                raise ValueError(node.inputs[pos].name)
            return [int(e.value) for e in r[1]]
        return None


def _passing(node: gs.Node, t: gs.Tensor, elems: list[Expr]) -> list[Expr]:
    """Elements that pass a value-preserving op keep their origin and record the tensor."""
    return [Expr(e.value, e.op, e.args, e.origin[:3] + (e.origin[3] + (t.name,),)) if e.origin else e for e in elems]


def _shape(sv: ShapeValues, node, t):
    x = node.inputs[0]
    shape = sv.b.shape(x)
    r = len(shape)
    start = int(node.attrs.get("start", 0))
    end = node.attrs.get("end")
    start = max(0, min(r, start + r if start < 0 else start))
    end = r if end is None else max(0, min(r, int(end) + r if int(end) < 0 else int(end)))
    elems = [Expr(shape[a], "size", (x.name, a)) for a in range(start, end)]
    return (len(elems),), elems


def _size(sv: ShapeValues, node, t):
    x = node.inputs[0]
    shape = sv.b.shape(x)
    acc = lit(1)
    for a, n in enumerate(shape):
        acc = Expr(acc.value * n, "mul", (acc, Expr(n, "size", (x.name, a))))
    return (), [acc]


def _identity(sv: ShapeValues, node, t):
    shape, elems = sv.inputs(node, 1)[0]
    if node.op == "Cast":
        to = node.attrs.get("to")
        kind = "f" if to in (1, 10, 11, 16) else "i"
        elems = [Expr(float(e.value) if kind == "f" else int(e.value), e.op, e.args, e.origin) for e in elems]
    return _out_shape(sv, t, shape, len(elems)), _passing(node, t, elems)


def _out_shape(sv: ShapeValues, t, fallback, n):
    try:
        shape = sv.b.shape(t)
    except Exception:
        return fallback if int(np.prod(fallback)) == n else (n,)
    return shape if int(np.prod(shape)) == n else (n,)


def _concat(sv: ShapeValues, node, t):
    parts = sv.inputs(node)
    elems = [e for p in parts for e in p[1]]
    if any(len(p[0]) > 1 for p in parts):
        raise ValueError("only 1-D shape tensors are concatenated")
    return (len(elems),), _passing(node, t, elems)


def _gather(sv: ShapeValues, node, t):
    (shape, elems), (ishape, idx) = sv.inputs(node)
    if len(shape) != 1 or int(node.attrs.get("axis", 0)) != 0:
        raise ValueError("only 1-D gathers")
    picks = [int(i.value) % len(elems) for i in idx]
    out = [elems[i] for i in picks]
    if len(set(picks)) != len(picks):  # a duplicated element could not be patched twice
        out = [Expr(e.value, e.op, e.args) for e in out]
    return tuple(ishape), _passing(node, t, out)


def _slice(sv: ShapeValues, node, t):
    shape, elems = sv.inputs(node, 1)[0]
    if len(shape) != 1:
        raise ValueError("only 1-D slices")
    starts, ends = sv.ints(node, 1, "starts"), sv.ints(node, 2, "ends")
    steps = sv.ints(node, 4) or [1]
    out = elems[slice(starts[0], ends[0], steps[0])]
    return (len(out),), _passing(node, t, out)


def _arith(op: str):
    def evaluate(sv: ShapeValues, node, t):
        (sa, ea), (sb, eb) = sv.inputs(node)
        n = max(len(ea), len(eb))
        if len(ea) not in (1, n) or len(eb) not in (1, n):
            raise ValueError("broadcast")
        out = []
        for i in range(n):
            a, b = ea[i % len(ea)], eb[i % len(eb)]
            out.append(combine(op, a, b))
        return (tuple(sa) if len(ea) == n else tuple(sb)), out

    return evaluate


def combine(op: str, a: Expr, b: Expr) -> Expr:
    x, y = a.value, b.value
    floats = isinstance(x, float) or isinstance(y, float)
    if op == "add":
        return Expr(x + y, "add", (a, b))
    if op == "sub":
        return Expr(x - y, "sub", (a, b))
    if op == "mul":
        return Expr(x * y, "mul", (a, b))
    if floats:
        return Expr(x / y, "opaque", (a, b))
    return Expr(int(np.trunc(x / y)) if (x < 0) != (y < 0) else x // y, "div", (a, b))


def _elementwise_opaque(sv: ShapeValues, node, t):
    parts = sv.inputs(node)
    arrays = [np.array([e.value for e in p[1]]).reshape(p[0]) for p in parts]
    if node.op == "Where":
        value = np.where(*arrays)
    elif node.op in ("Neg", "Abs", "Floor", "Ceil", "Sqrt", "Not"):
        value = {"Neg": np.negative, "Abs": np.abs, "Floor": np.floor, "Ceil": np.ceil, "Sqrt": np.sqrt,
                 "Not": np.logical_not}[node.op](arrays[0])
    else:
        value = _COMPARE[node.op](*arrays)
    deps = tuple(e for p in parts for e in p[1])
    flat = np.asarray(value).reshape(-1)
    return np.shape(value), [Expr(v.item(), "opaque", deps) for v in flat]


def _reduce(sv: ShapeValues, node, t):
    (shape, elems), = sv.inputs(node, 1)
    if len(shape) > 1:
        raise ValueError("only 1-D reductions")
    values = np.array([e.value for e in elems])
    value = {"ReduceProd": np.prod, "ReduceSum": np.sum, "ReduceMax": np.max, "ReduceMin": np.min}[node.op](values)
    out_shape = (1,) if int(node.attrs.get("keepdims", 1)) else ()
    return out_shape, [Expr(value.item(), "opaque", tuple(elems))]


def _constant_of_shape(sv: ShapeValues, node, t):
    (shape, elems), = sv.inputs(node)
    dims = tuple(int(e.value) for e in elems)
    value = node.attrs.get("value")
    fill = np.asarray(value.values).reshape(-1)[0].item() if value is not None else 0.0
    n = int(np.prod(dims))
    if n > 64:
        raise ValueError("large")
    return dims, [Expr(fill, "opaque", tuple(elems)) for _ in range(n)]


_OPS = {
    "Shape": _shape,
    "Size": _size,
    "Identity": _identity,
    "Cast": _identity,
    "Unsqueeze": _identity,
    "Squeeze": _identity,
    "Reshape": _identity,
    "Flatten": _identity,
    "Concat": _concat,
    "Gather": _gather,
    "Slice": _slice,
    "Add": _arith("add"),
    "Sub": _arith("sub"),
    "Mul": _arith("mul"),
    "Div": _arith("div"),
    "ReduceProd": _reduce,
    "ReduceSum": _reduce,
    "ReduceMax": _reduce,
    "ReduceMin": _reduce,
    "ConstantOfShape": _constant_of_shape,
    **{op: _elementwise_opaque for op in [*_COMPARE, "Where", "Neg", "Abs", "Floor", "Ceil", "Sqrt", "Not"]},
}


# --- what an element must become -----------------------------------------------------------------
@dataclass(frozen=True)
class Const:
    """The element must keep its value."""

    value: object

    def at(self, ctx):
        return self.value


@dataclass(frozen=True)
class Kept:
    """The element must equal the kept size of ``dim`` times ``num / den`` (an exact integer).

    ``dim`` is a Dim, or a (tensor, axis) key for a dim that may never be created (an alias's
    axis nobody slices: its size does not change).
    """

    dim: object
    num: int = 1
    den: int = 1

    def resolve(self, by_key):
        return by_key.get(self.dim) if isinstance(self.dim, tuple) else self.dim

    def at(self, ctx) -> int:
        d = self.resolve(ctx.analysis.by_key)
        return ctx.kept_size(d) * self.num // self.den


@dataclass(frozen=True)
class Prefix:
    """The element must equal the number of kept atoms of ``dim`` before ``stop`` (a Slice bound)."""

    dim: object
    stop: int

    def at(self, ctx) -> int:
        return int(np.searchsorted(ctx.kept_index(self.dim), self.stop))


@dataclass
class Expectation:
    """Input ``pos`` of node ``node`` (evaluated to ``elems``) must become ``required`` after pruning."""

    node: int
    pos: int
    elems: list[Expr]
    required: list  # Const | Kept | Prefix | None (any value) per element
    what: str


# --- affine forms over the channels' keep indicators ---------------------------------------------
@dataclass
class Form:
    """``sum(coef[c] * keep[c]) + const`` over prunable channels c; ``exact=False``: not affine,
    ``deps`` lists the channels it may depend on."""

    coef: dict = field(default_factory=dict)
    const: Fraction = Fraction(0)
    exact: bool = True
    deps: frozenset = frozenset()

    def channels(self) -> set[int]:
        return {c for c, k in self.coef.items() if k} | set(self.deps)

    def scaled(self, k: Fraction) -> "Form":
        return Form({c: v * k for c, v in self.coef.items()}, self.const * k, self.exact, self.deps)

    def plus(self, other: "Form", sign: int = 1) -> "Form":
        coef = dict(self.coef)
        for c, v in other.coef.items():
            coef[c] = coef.get(c, 0) + sign * v
        return Form({c: v for c, v in coef.items() if v}, self.const + sign * other.const,
                    self.exact and other.exact, self.deps | other.deps)


def _const_form(value) -> Form:
    """A constant (ints and finite floats are compared exactly; anything else is opaque)."""
    try:
        return Form(const=Fraction(value))
    except (OverflowError, ValueError, TypeError):
        return _opaque()


def _opaque(*forms: Form) -> Form:
    deps = frozenset().union(*(f.channels() for f in forms)) if forms else frozenset()
    return Form({}, Fraction(0), False, deps)


class Forms:
    """Turns Exprs and requirements into Forms, given the grouped analysis."""

    def __init__(self, analysis, builder):
        self.a = analysis
        self.b = builder
        self.channel_group = np.searchsorted(analysis.group_offsets, np.arange(analysis.n_channels), side="right") - 1
        self.memo: dict[int, Form] = {}

    def prunable(self, channel: int) -> bool:
        return self.a.groups[self.channel_group[channel]].prunable

    def atoms(self, d, stop: int | None = None) -> Form:
        """Kept count of the atoms ``d[0:stop]`` as a form."""
        channels = self.a.atom_channel[d.offset : d.offset + (d.size if stop is None else max(0, min(stop, d.size)))]
        form = Form()
        for c, n in zip(*np.unique(channels, return_counts=True)):
            if self.prunable(int(c)):
                form.coef[int(c)] = Fraction(int(n))
            else:
                form.const += int(n)
        return form

    def static(self, e: Expr) -> bool:
        """A size that no input dimension changes: a channel axis of the analysis, or a constant's."""
        tensor, axis = e.args
        t = self.b.tensors.get(tensor)
        if t is None or t in self.b.model.graph.inputs:
            return False
        if isinstance(t, gs.Constant) or tensor in self.b.aliases:
            return True
        d = self.a.by_key.get((tensor, axis))
        spread = self.b.spread.get(tensor)
        return (d is not None and self.b.channel_axis.get(tensor) == axis) or (spread is not None and axis in spread.axes)

    def size(self, tensor: str, axis: int, value) -> Form:
        d = self.a.by_key.get((tensor, axis))
        if d is not None:
            return self.atoms(d)
        spread = self.b.spread.get(tensor)
        if spread is not None and axis == spread.shrink:
            return self.atoms(spread.src).scaled(Fraction(value, spread.src.size))
        alias = self.b.aliases.get(tensor)
        if alias is not None and alias[1][axis] is not None:
            return self.size(alias[0], alias[1][axis], value)
        return Form(const=Fraction(value))

    def of(self, e: Expr) -> Form:
        key = id(e)
        if key not in self.memo:
            self.memo[key] = self._of(e)
        return self.memo[key]

    def _of(self, e: Expr) -> Form:
        if e.op == "lit":
            return _const_form(e.value)
        if e.op == "size":
            return self.size(e.args[0], e.args[1], e.value)
        if e.op == "opaque":
            return _opaque(*(self.of(x) for x in e.args))
        a, b = self.of(e.args[0]), self.of(e.args[1])
        if not (a.exact and b.exact):
            return _opaque(a, b)
        if e.op in ("add", "sub"):
            return a.plus(b, 1 if e.op == "add" else -1)
        if e.op == "mul":
            if not b.coef:
                return a.scaled(b.const)
            if not a.coef:
                return b.scaled(a.const)
            return _opaque(a, b)
        # floor division by a constant: exact when every channel's coefficient is a multiple
        if b.coef or b.const == 0:
            return _opaque(a, b)
        q = b.const
        if all((v / q).denominator == 1 for v in a.coef.values()) and a.const.denominator == 1:
            return Form({c: v / q for c, v in a.coef.items()}, Fraction(int(a.const // q)))
        return _opaque(a, b)

    def required(self, r) -> Form | None:
        if r is None:
            return None
        if isinstance(r, Const):
            return _const_form(r.value)
        if isinstance(r, Kept):
            d = r.resolve(self.a.by_key)
            return Form() if d is None else self.atoms(d).scaled(Fraction(r.num, r.den))
        return self.atoms(r.dim, r.stop)


def exclusive_path(builder, origin) -> bool:
    """The tensors an element passed on its way to the consumer feed nothing else."""
    tensors = builder.tensors
    outputs = {o.name for o in builder.model.graph.outputs}
    for name in origin[3]:
        t = tensors.get(name)
        if t is None or len(t.outputs) != 1 or name in outputs:
            return False
    return True


def patchable_literal(builder, e: Expr, expectation: Expectation) -> bool:
    """A literal can be patched if it enters through value-preserving ops used only here."""
    if e.op != "lit" or e.origin is None:
        return False
    node = builder.model.graph.nodes[e.origin[0]]
    if not isinstance(node.inputs[e.origin[1]], gs.Constant):
        return False  # a computed element that entered a Concat: see ``static``
    if e.origin[0] != expectation.node and node.op not in _PRESERVING:
        return False
    return exclusive_path(builder, e.origin)


def static(forms: "Forms", e: Expr) -> bool:
    """Computed from literals and channel counts only: the same for every input of the model,
    so it may be replaced by the value it must take after pruning."""
    if e.op == "lit":
        return True
    if e.op == "size":
        return forms.static(e)
    return all(static(forms, x) for x in e.args)
