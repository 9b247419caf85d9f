"""Small ONNX graphs built in code, one per dependency rule, and the invariant checks.

``check_invariants`` is the oracle of the dependency analysis (DESIGN.md invariant 1): the
pruned model must compute what the original computes when the consumers' weights of the removed
channels are zeroed. Any rule that ties the wrong atoms, or forgets one, breaks it.
"""

from __future__ import annotations


import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune import analyse, load_model, measured_cost, verify
from onnxprune.analysis.oracle import assert_equivalent
from onnxprune.analysis.oracle import masked_model as masked  # noqa: F401  (the tests' name for it)
from onnxprune.rewrite import rewrite
from onnxprune.cost import CostModel
from onnxprune.rewrite import random_inputs
from onnxprune.runtime.session import run


class G:
    """A tiny graph builder: ``g.conv(x, 8)`` appends a Conv with random weights."""

    def __init__(self, seed: int = 0, opset: int = 17):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.opset, self.n = [], [], opset, 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def const(self, array, prefix: str = "c") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def w(self, *shape, scale: float = 0.5) -> str:
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32), "w")

    def op(self, op_type: str, inputs, n_out: int = 1, **attrs):
        outs = [self.name(op_type.lower() + "_") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.name(op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    # common layers -----------------------------------------------------------------------
    def conv(self, x, cin, cout, k=3, group=1, bias=True, stride=1):
        inputs = [x, self.w(cout, cin // group, k, k)] + ([self.w(cout)] if bias else [])
        return self.op("Conv", inputs, kernel_shape=[k, k], pads=[k // 2] * 4, group=group, strides=[stride, stride])

    def bn(self, x, c):
        scale = self.const((self.rng.random(c) + 0.5).astype(np.float32))
        bias = self.const(self.rng.standard_normal(c).astype(np.float32))
        mean = self.const(self.rng.standard_normal(c).astype(np.float32) * 0.1)
        var = self.const((self.rng.random(c) + 0.5).astype(np.float32))
        return self.op("BatchNormalization", [x, scale, bias, mean, var])

    def cbr(self, x, cin, cout, **kw):
        return self.op("Relu", [self.bn(self.conv(x, cin, cout, **kw), cout)])

    def head(self, x, c, classes=5):
        """GlobalAveragePool -> Flatten -> Gemm."""
        flat = self.op("Flatten", [self.op("GlobalAveragePool", [x])], axis=1)
        return self.op("Gemm", [flat, self.w(classes, c), self.w(classes)], transB=1)

    def model(self, out, in_shape=(1, 3, 8, 8), dynamic_batch=True) -> onnx.ModelProto:
        dims = ["batch", *in_shape[1:]] if dynamic_batch else list(in_shape)
        graph = helper.make_graph(
            self.nodes, "test", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], self.inits,
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = 8
        inferred = onnx.shape_inference.infer_shapes(m).graph
        m.graph.output[0].CopyFrom(inferred.output[0])
        m.graph.value_info.extend(inferred.value_info)  # stale after pruning, like exporters' value_info
        onnx.checker.check_model(m, full_check=True)
        return m


def random_keep(analysis, rng) -> np.ndarray:
    """Keep a random non-empty subset of each prunable group (sometimes the whole group)."""
    kept = {}
    for g in analysis.prunable_groups:
        if rng.random() < 0.2:
            continue
        k = int(rng.integers(1, g.size + 1))
        kept[g.id] = np.sort(rng.choice(g.size, size=k, replace=False))
    return analysis.keep_vector(kept)


def check_invariants(proto: onnx.ModelProto, seeds=range(4), input_shapes=None, min_prunable: int = 1):
    """Invariants 1-4 over random plans; returns the analysis for further asserts."""
    model = load_model(proto, input_shapes)
    analysis = analyse(model)
    assert len(analysis.prunable_groups) >= min_prunable, [g.blocked for g in analysis.groups]
    cost = CostModel(analysis)
    feeds = random_inputs(model.proto, model.input_shapes, seed=123)
    reference = run(model.proto, feeds)

    # Invariant 2: removing nothing changes nothing.
    same = rewrite(analysis, analysis.full_keep())
    for a, b in zip(reference, run(same, feeds)):
        np.testing.assert_array_equal(a, b)

    for seed in seeds:
        keep = random_keep(analysis, np.random.default_rng(seed))
        pruned = rewrite(analysis, keep)
        verify(model.proto, pruned, model.input_shapes)  # invariant 3 (checker, runs, names/shapes)
        expected = run(masked(analysis, keep), feeds)
        for a, b in zip(expected, run(pruned, feeds)):  # invariant 1
            assert_equivalent(a, b)
        assert measured_cost(pruned, model.input_shapes) == cost.evaluate(keep)  # invariant 4
    return analysis
