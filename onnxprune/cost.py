"""Cost model: MACs and parameters as closed-form functions of the kept channels.

FLOPs here are **multiply-accumulates (MACs)** of Conv, ConvTranspose, Gemm, MatMul and
two-operand Einsum at the analysis input shape (batch 1 unless the model fixes another); elementwise
ops, pooling and normalisation are not counted. A weight dequantised from integer constants (QDQ
models) counts like the float weight it stands for. **Parameters** are the elements of every floating-point
initializer of rank >= 1 (weights, biases, BatchNorm statistics; scalars such as Clip bounds are
settings, not parameters).

Every cost term is ``coefficient * product of dim sizes``, so evaluating a candidate plan is one
gather and one product over a few hundred terms: the allocator's binary search calls it
thousands of times without rewriting anything.

    cost = CostModel(analysis)
    cost.evaluate(analysis.full_keep())   # Cost(macs=..., params=...)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from .analysis import Analysis


@dataclass(frozen=True)
class Cost:
    macs: int
    params: int

    def reduction(self, base: "Cost", kind: str) -> float:
        before, after = (base.macs, self.macs) if kind == "flops" else (base.params, self.params)
        return 1.0 - after / before if before else 0.0


@dataclass
class _Terms:
    node: np.ndarray  # node index of each term
    coef: np.ndarray  # float64
    dims: np.ndarray  # [terms, k] dim ids, -1 = factor 1

    def values(self, sizes: np.ndarray) -> np.ndarray:
        ext = np.append(sizes, 1).astype(np.float64)
        return self.coef * np.prod(ext[self.dims], axis=1) if len(self.coef) else self.coef


class CostModel:
    def __init__(self, analysis: Analysis):
        self.analysis = analysis
        graph = analysis.model.graph
        self._nodes = list(graph.nodes)
        macs, params = [], []
        seen: set[str] = set()
        for i, node in enumerate(self._nodes):
            term = self._mac_term(node)
            if term is not None:
                macs.append((i, *term))
            for t in node.inputs:
                quantized = node.op == "DequantizeLinear" and t is node.inputs[0]  # int8 weights
                if isinstance(t, gs.Constant) and t.name not in seen and (is_float(t) or quantized) and len(t.shape) > 0:
                    seen.add(t.name)
                    shape = tuple(t.shape)
                    params.append((i, *self._factors(t, shape, range(len(shape)))))
        self.mac_terms = _pack(macs)
        self.param_terms = _pack(params)

    def _factors(self, t, shape, axes) -> tuple[float, list[int]]:
        """Split prod(shape[axes]) into a fixed coefficient and the dims that pruning shrinks."""
        coef, dims = 1.0, []
        for a in axes:
            d = self.analysis.by_key.get((t.name, a))
            if d is None:
                coef *= shape[a]
            else:
                dims.append(d.id)
        return coef, dims

    def _mac_term(self, node: gs.Node):
        try:
            w = _weight(node.inputs[1]) if len(node.inputs) > 1 else None
            if node.op == "Conv" and w is not None:
                y = node.outputs[0]
                coef, dims = self._factors(w, tuple(w.shape), (0, 1))
                return coef * np.prod(y.shape[:1] + y.shape[2:]) * np.prod(w.shape[2:]), dims
            if node.op == "ConvTranspose" and w is not None:
                x = node.inputs[0]
                coef, dims = self._factors(w, tuple(w.shape), (0, 1))
                return coef * np.prod(x.shape[:1] + x.shape[2:]) * np.prod(w.shape[2:]), dims
            if node.op == "Gemm" and w is not None:
                a = node.inputs[0]
                rows = a.shape[1] if node.attrs.get("transA", 0) else a.shape[0]
                coef, dims = self._factors(w, tuple(w.shape), (0, 1))
                return coef * rows, dims
            if node.op == "Einsum":
                return self._einsum_term(node)
            if node.op == "MatMul":
                x, y = node.inputs[0], node.outputs[0]
                if w is not None and len(w.shape) == 2:
                    coef, dims = self._factors(w, tuple(w.shape), (0, 1))
                    return coef * np.prod(x.shape[:-1]), dims
                return float(np.prod(y.shape) * x.shape[-1]), []
        except (TypeError, IndexError):  # unknown shapes: not counted
            return None
        return None

    def _einsum_term(self, node: gs.Node):
        """MACs of a two-operand Einsum: the product of the sizes of all its letters, each letter's
        size taken from the first operand (or the output) whose axis the analysis tracks."""
        from .analysis.rules import einsum_terms  # the rule's parser: one reading of the equation

        class _Shapes:  # the parser asks only for ranks
            rank = staticmethod(lambda t: len(t.shape))

        terms, out = einsum_terms(node, _Shapes)
        if terms is None or len(terms) != 2:
            return None
        coef, dims, seen = 1.0, [], set()
        for term, t in [*zip(terms, node.inputs), (out, node.outputs[0])]:
            t = _weight(t) or t
            for axis, letter in enumerate(term):
                if letter in seen:
                    continue
                seen.add(letter)
                d = self.analysis.by_key.get((t.name, axis))
                if d is None:
                    coef *= t.shape[axis]
                else:
                    dims.append(d.id)
        return coef, dims

    def sizes(self, keep: np.ndarray) -> np.ndarray:
        return self.analysis.kept_sizes(keep)

    def evaluate(self, keep: np.ndarray) -> Cost:
        sizes = self.sizes(keep)
        return Cost(
            int(round(self.mac_terms.values(sizes).sum())),
            int(round(self.param_terms.values(sizes).sum())),
        )

    def per_node(self, keep: np.ndarray) -> dict[int, Cost]:
        """MACs and parameters of each node (parameters counted at their first consumer)."""
        sizes = self.sizes(keep)
        macs = np.zeros(len(self._nodes))
        params = np.zeros(len(self._nodes))
        np.add.at(macs, self.mac_terms.node, self.mac_terms.values(sizes))
        np.add.at(params, self.param_terms.node, self.param_terms.values(sizes))
        return {i: Cost(int(round(m)), int(round(p))) for i, (m, p) in enumerate(zip(macs, params)) if m or p}


def _pack(terms) -> _Terms:
    width = max((len(t[2]) for t in terms), default=1) or 1
    dims = np.full((len(terms), width), -1, dtype=np.int64)
    for row, t in enumerate(terms):
        dims[row, : len(t[2])] = t[2]
    return _Terms(
        np.array([t[0] for t in terms], dtype=np.int64),
        np.array([t[1] for t in terms], dtype=np.float64),
        dims,
    )


def _weight(t: gs.Tensor) -> gs.Constant | None:
    """The constant weight of a layer: an initializer, or the integers a DequantizeLinear of
    constants turns into it (QDQ models); None for a weight computed at run time."""
    if isinstance(t, gs.Constant):
        return t
    producer = t.inputs[0] if t.inputs else None
    if producer is not None and producer.op == "DequantizeLinear" and isinstance(producer.inputs[0], gs.Constant):
        return producer.inputs[0]
    return None


def is_float(t: gs.Constant) -> bool:
    try:
        return np.issubdtype(np.dtype(t.dtype), np.floating)
    except TypeError:
        return False
