"""Torch stage. Invariant: the ONNX -> torch bridge (onnxprune.torch.module, op table in ops.py)
computes what onnxruntime computes, and write-back round-trips bit-exactly:

* every op of the table on a one-node graph built with onnx.helper, with its attribute variants;
* torchvision classification models (random init) exported by both exporters;
* gradients, write_back round trips, BN modes, errors.
"""

from __future__ import annotations

import io
import subprocess
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from onnxprune.errors import DataError, ModelError  # noqa: E402
from onnxprune.torch import SUPPORTED_OPS, to_torch, write_back  # noqa: E402

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------------------------
# Helpers


@dataclass
class Init:
    """A node input stored as an initializer (rather than a graph input)."""

    value: np.ndarray


def randn(*shape, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def i64(*values) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def make_model(nodes, inputs: dict, inits: dict, outputs: list[str], opset: int) -> onnx.ModelProto:
    """A model from nodes, named graph inputs (arrays), initializers and output names."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in inputs.items()],
        [o if isinstance(o, onnx.ValueInfoProto) else helper.make_empty_tensor_value_info(o) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 17 else 10
    return model


def ort_run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def torch_run(model: onnx.ModelProto, feeds: dict, **kwargs) -> list[np.ndarray]:
    module = to_torch(model, **kwargs).eval()
    with torch.no_grad():
        out = module(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def assert_close(got: list[np.ndarray], want: list[np.ndarray], tol: float = 1e-4) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape, (g.shape, w.shape)
        assert g.dtype == w.dtype, (g.dtype, w.dtype)
        if w.dtype == bool or np.issubdtype(w.dtype, np.integer):
            np.testing.assert_array_equal(g, w)
        elif w.size:
            scale = max(1.0, float(np.abs(w).max()))
            assert float(np.abs(g.astype(np.float64) - w).max()) <= tol * scale


def reference_run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, feeds)


def check_op(op: str, inputs: list, attrs=None, opset: int = 17, n_out: int = 1, tol: float = 1e-4, ref: bool = False):
    """Run a one-node graph with onnxruntime (or, where it lacks the variant, the ONNX
    reference evaluator) and with the bridge, and compare the outputs."""
    names, feeds, inits = [], {}, {}
    for i, value in enumerate(inputs):
        if value is None:
            names.append("")
        elif isinstance(value, Init):
            names.append(f"c{i}")
            inits[f"c{i}"] = value.value
        else:
            names.append(f"x{i}")
            feeds[f"x{i}"] = value
    outputs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outputs, **(attrs or {}))
    model = make_model([node], feeds, inits, outputs, opset)
    want = reference_run(model, feeds) if ref else ort_run(model, feeds)
    assert_close(torch_run(model, feeds), want, tol)


def case(op, inputs, attrs=None, opset=17, n_out=1, id=None, tol=1e-4, ref=False):
    return pytest.param(op, inputs, attrs or {}, opset, n_out, tol, ref, id=id or op)


# --------------------------------------------------------------------------------------------
# One case per op / attribute variant

X4 = randn(2, 4, 7, 9)
W = randn(6, 4, 3, 3)
B6 = randn(6)
POS = np.abs(randn(2, 3, 4, 5)) + 0.1

CASES = [
    # Conv
    case("Conv", [X4, Init(W), Init(B6)], {"pads": [1, 1, 1, 1]}, id="conv-pads-bias"),
    case("Conv", [X4, Init(W)], {}, id="conv-nobias"),
    case("Conv", [X4, Init(randn(6, 2, 3, 3))], {"group": 2, "strides": [2, 2]}, id="conv-group-stride"),
    case("Conv", [X4, Init(randn(4, 1, 3, 3)), Init(randn(4))], {"group": 4, "dilations": [2, 2], "pads": [2, 2, 2, 2]}, id="conv-depthwise-dilated"),
    case("Conv", [X4, Init(W)], {"pads": [1, 0, 2, 1]}, id="conv-asym-pads"),
    case("Conv", [X4, Init(W)], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, id="conv-same-upper"),
    case("Conv", [X4, Init(randn(6, 4, 2, 2))], {"auto_pad": "SAME_LOWER", "strides": [1, 1]}, id="conv-same-lower"),
    case("Conv", [X4, Init(W)], {"auto_pad": "VALID", "strides": [2, 1]}, id="conv-valid"),
    case("Conv", [randn(2, 3, 11), Init(randn(5, 3, 3)), Init(randn(5))], {"pads": [1, 2], "strides": [2]}, id="conv-1d"),
    case("Conv", [randn(1, 2, 5, 6, 7), Init(randn(3, 2, 3, 3, 3))], {"pads": [1] * 6}, id="conv-3d"),
    # ConvTranspose
    case("ConvTranspose", [X4, Init(randn(4, 3, 3, 3)), Init(randn(3))], {"strides": [2, 2]}, id="convT-stride"),
    case("ConvTranspose", [X4, Init(randn(4, 3, 3, 3))], {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, id="convT-outpad"),
    case("ConvTranspose", [X4, Init(randn(4, 2, 3, 3)), Init(randn(4))], {"group": 2, "strides": [2, 1], "pads": [0, 1, 2, 1]}, id="convT-group-asym"),
    case("ConvTranspose", [X4, Init(randn(4, 3, 3, 3))], {"dilations": [2, 2], "strides": [3, 2]}, id="convT-dilated"),
    case("ConvTranspose", [X4, Init(randn(4, 3, 3, 3)), Init(randn(3))], {"strides": [2, 2], "output_shape": [15, 18]}, id="convT-output-shape"),
    case("ConvTranspose", [X4, Init(randn(4, 3, 4, 4))], {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, id="convT-same-upper"),
    case("ConvTranspose", [X4, Init(randn(4, 3, 3, 3))], {"strides": [2, 2], "auto_pad": "SAME_LOWER"}, id="convT-same-lower"),
    case("ConvTranspose", [randn(2, 3, 6), Init(randn(3, 2, 4)), Init(randn(2))], {"strides": [2], "pads": [1, 1]}, id="convT-1d"),
    # Gemm / MatMul
    case("Gemm", [randn(3, 5), Init(randn(4, 5)), Init(randn(4))], {"transB": 1}, id="gemm-linear"),
    case("Gemm", [randn(5, 3), Init(randn(5, 4)), Init(randn(1, 4))], {"transA": 1, "alpha": 0.5, "beta": 2.0}, id="gemm-transA-alpha-beta"),
    case("Gemm", [randn(3, 5), Init(randn(4, 5)), Init(randn(3, 4))], {"transB": 1, "beta": 0.5}, id="gemm-full-C"),
    case("Gemm", [randn(3, 5), Init(randn(5, 4))], {}, id="gemm-noC"),
    case("MatMul", [randn(3, 5), Init(randn(5, 4))], id="matmul-2d"),
    case("MatMul", [randn(2, 3, 5), Init(randn(5, 4))], id="matmul-batched"),
    case("MatMul", [randn(2, 3, 5), randn(2, 5, 4)], id="matmul-two-inputs"),
    # Normalisation
    case("BatchNormalization", [X4, Init(randn(4)), Init(randn(4)), Init(randn(4)), Init(np.abs(randn(4)) + 0.5)], {"epsilon": 1e-3}, opset=9, id="bn-opset9"),
    case("BatchNormalization", [X4, Init(randn(4)), Init(randn(4)), Init(randn(4)), Init(np.abs(randn(4)) + 0.5)], {"momentum": 0.8, "training_mode": 0}, opset=14, id="bn-opset14"),
    case("BatchNormalization", [randn(5, 4), Init(randn(4)), Init(randn(4)), Init(randn(4)), Init(np.abs(randn(4)) + 0.5)], {}, opset=15, id="bn-opset15-2d"),
    case("InstanceNormalization", [X4, Init(randn(4)), Init(randn(4))], {"epsilon": 1e-4}),
    case("LayerNormalization", [randn(2, 3, 8), Init(randn(8)), Init(randn(8))], {}, id="layernorm-last"),
    case("LayerNormalization", [randn(2, 3, 4, 5), Init(randn(3, 4, 5))], {"axis": 1, "epsilon": 1e-3}, id="layernorm-axis1-nobias"),
    case("LRN", [X4], {"size": 3, "alpha": 1e-2, "beta": 0.75, "bias": 2.0}, id="lrn-odd"),
    # Activations
    case("Relu", [X4]),
    case("LeakyRelu", [X4], {"alpha": 0.2}),
    case("PRelu", [X4, Init(randn(4, 1, 1))], id="prelu-channel"),
    case("PRelu", [X4, Init(randn(1))], id="prelu-scalar"),
    case("Clip", [X4], {"min": -0.5, "max": 0.7}, opset=6, id="clip-attrs"),
    case("Clip", [X4, Init(np.float32(0.0)), Init(np.float32(6.0))], opset=13, id="clip-inputs"),
    case("Clip", [X4, None, Init(np.float32(0.3))], opset=13, id="clip-max-only"),
    case("Clip", [X4, Init(np.float32(-0.3))], opset=13, id="clip-min-only"),
    case("Clip", [X4], opset=13, id="clip-none"),
    case("Sigmoid", [X4]),
    case("HardSigmoid", [X4], {"alpha": 0.3, "beta": 0.4}),
    case("HardSwish", [X4 * 4]),
    case("Tanh", [X4]),
    case("Softplus", [X4]),
    case("Softsign", [X4]),
    case("Erf", [X4]),
    case("Elu", [X4], {"alpha": 0.7}),
    case("Celu", [X4], {"alpha": 1.3}),
    case("Selu", [X4]),
    case("Gelu", [X4], {}, opset=20, id="gelu"),
    case("Gelu", [X4], {"approximate": "tanh"}, opset=20, id="gelu-tanh"),
    case("Mish", [X4], opset=18),
    case("ThresholdedRelu", [X4], {"alpha": 0.5}),
    case("Softmax", [X4], {"axis": 1}, opset=11, id="softmax-opset11-coerced"),
    case("Softmax", [X4], {}, opset=13, id="softmax-opset13"),
    case("LogSoftmax", [X4], {"axis": 2}, opset=13, id="logsoftmax"),
    # Element-wise math
    case("Exp", [X4]),
    case("Log", [POS]),
    case("Sqrt", [POS]),
    case("Neg", [X4]),
    case("Abs", [X4]),
    case("Reciprocal", [POS]),
    case("Floor", [X4]),
    case("Ceil", [X4]),
    case("Sign", [X4]),
    case("Pow", [POS, randn(4, 5)], id="pow-tensor"),
    case("Pow", [X4, Init(np.int64(2))], id="pow-int-exponent"),
    case("Add", [X4, Init(randn(4, 1, 1))], id="add-broadcast"),
    case("Sub", [Init(randn(9)), X4], id="sub-broadcast"),
    case("Mul", [X4, randn(2, 4, 7, 9)]),
    case("Div", [X4, np.abs(randn(4, 1, 1)) + 0.5], id="div-float"),
    case("Div", [i64(7, -7, 9, 4), i64(2, 2, -4, 4)], id="div-int"),
    case("Max", [X4, randn(4, 1, 1), randn(9)], id="max-variadic"),
    case("Min", [X4, randn(9)], id="min"),
    case("Sum", [X4, randn(9), randn(7, 9)]),
    case("Mean", [X4, randn(9)]),
    case("Einsum", [randn(2, 3, 4), randn(2, 4, 5)], {"equation": "bij,bjk->bik"}, opset=12),
    case("Identity", [X4]),
    case("Dropout", [X4], {}, opset=13),
    case("Dropout", [X4], {}, opset=13, n_out=2, id="dropout-mask"),
    case("Cast", [X4 * 3], {"to": TensorProto.INT64}, id="cast-float-int"),
    case("Cast", [i64(1, -2, 3)], {"to": TensorProto.FLOAT}, id="cast-int-float"),
    case("Cast", [np.array([0.0, 1.5, -2.0], np.float32)], {"to": TensorProto.BOOL}, id="cast-bool"),
    case("CastLike", [i64(1, 2), np.zeros(1, np.float32)], opset=15),
    # Comparisons and logic
    case("Equal", [i64(1, 2, 3), i64(1, 0, 3)]),
    case("Less", [X4, randn(9)]),
    case("LessOrEqual", [X4, randn(9)], opset=16),
    case("Greater", [X4, randn(9)]),
    case("GreaterOrEqual", [X4, randn(9)], opset=16),
    case("Not", [np.array([True, False])]),
    case("And", [np.array([True, False, True]), np.array([True, True, False])]),
    case("Or", [np.array([True, False, False]), np.array([True, True, False])]),
    case("Xor", [np.array([True, False, False]), np.array([True, True, False])]),
    case("Where", [X4 > 0, X4, randn(9)]),
    case("ArgMax", [X4], {"axis": 1}, id="argmax"),
    case("ArgMax", [np.array([[1, 3, 3], [2, 2, 0]], np.float32)], {"axis": 1, "keepdims": 0, "select_last_index": 1}, id="argmax-last"),
    case("ArgMin", [X4], {"axis": -1, "keepdims": 0}),
    # Pooling
    case("MaxPool", [X4], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, id="maxpool"),
    case("MaxPool", [X4], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, id="maxpool-ceil"),
    case("MaxPool", [X4], {"kernel_shape": [2, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}, id="maxpool-ceil-pads"),
    case("MaxPool", [X4], {"kernel_shape": [3, 3], "pads": [0, 2, 1, 0]}, id="maxpool-asym-pads"),
    case("MaxPool", [X4], {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, id="maxpool-same-upper"),
    case("MaxPool", [X4], {"kernel_shape": [3, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER"}, id="maxpool-same-lower"),
    case("MaxPool", [X4], {"kernel_shape": [2, 2], "dilations": [2, 2], "pads": [1, 1, 1, 1]}, id="maxpool-dilated"),
    case("MaxPool", [randn(2, 3, 10)], {"kernel_shape": [3], "strides": [2]}, id="maxpool-1d"),
    case("AveragePool", [X4], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, id="avgpool-exclude-pad"),
    case("AveragePool", [X4], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1}, id="avgpool-include-pad"),
    case("AveragePool", [X4], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}, id="avgpool-ceil"),
    case("AveragePool", [X4], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}, id="avgpool-ceil-pads"),
    case("AveragePool", [X4], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1, "count_include_pad": 1}, id="avgpool-ceil-pads-include"),
    case("AveragePool", [X4], {"kernel_shape": [3, 3], "pads": [0, 2, 1, 0]}, id="avgpool-asym-exclude"),
    case("AveragePool", [X4], {"kernel_shape": [3, 3], "pads": [0, 2, 1, 0], "count_include_pad": 1}, id="avgpool-asym-include"),
    case("AveragePool", [X4], {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, id="avgpool-same-upper"),
    case("AveragePool", [randn(2, 3, 10)], {"kernel_shape": [4], "strides": [3], "pads": [1, 2]}, id="avgpool-1d-asym"),
    case("GlobalAveragePool", [X4]),
    case("GlobalMaxPool", [X4]),
    # Reductions
    case("ReduceMean", [X4], {"axes": [2, 3]}, opset=13, id="reducemean-attr"),
    case("ReduceMean", [X4, Init(i64(-1))], {"keepdims": 0}, opset=18, id="reducemean-input"),
    case("ReduceSum", [X4, Init(i64(1))], {}, opset=13, id="reducesum-input"),
    case("ReduceSum", [X4], {"keepdims": 0}, opset=13, id="reducesum-all"),
    case("ReduceSum", [X4, Init(np.zeros(0, np.int64))], {"noop_with_empty_axes": 1}, opset=13, id="reducesum-noop"),
    case("ReduceMax", [X4], {"axes": [1], "keepdims": 0}, opset=13, id="reducemax-attr"),
    case("ReduceMax", [X4, Init(i64(0, 2))], {}, opset=18, id="reducemax-input"),
    case("ReduceMin", [X4], {"axes": [3]}, opset=13),
    case("ReduceSumSquare", [X4], {"axes": [1]}, opset=13),
    case("ReduceL2", [X4], {"axes": [2, 3]}, opset=13),
    case("ReduceLogSumExp", [X4], {"axes": [1]}, opset=13),
    # Shapes and data movement
    case("Flatten", [X4], {}, id="flatten"),
    case("Flatten", [X4], {"axis": 0}, id="flatten-0"),
    case("Flatten", [X4], {"axis": -1}, id="flatten-neg"),
    case("Reshape", [X4, Init(i64(0, -1, 9))], id="reshape-zero-infer"),
    case("Reshape", [X4, Init(i64(2, 4, 63))], {"allowzero": 1}, opset=14, id="reshape-allowzero"),
    case("Squeeze", [randn(2, 1, 3, 1)], {"axes": [1]}, opset=11, id="squeeze-attr"),
    case("Squeeze", [randn(2, 1, 3, 1), Init(i64(-1, 1))], opset=13, id="squeeze-input"),
    case("Squeeze", [randn(2, 1, 3, 1)], opset=13, id="squeeze-all"),
    case("Unsqueeze", [randn(2, 3)], {"axes": [0, 3]}, opset=11, id="unsqueeze-attr"),
    case("Unsqueeze", [randn(2, 3), Init(i64(-1, 1))], opset=13, id="unsqueeze-input"),
    case("Transpose", [X4], {"perm": [0, 2, 3, 1]}, id="transpose"),
    case("Transpose", [X4], {}, id="transpose-default"),
    case("Concat", [X4, randn(2, 3, 7, 9)], {"axis": 1}, id="concat"),
    case("Concat", [X4, randn(2, 4, 7, 2)], {"axis": -1}, id="concat-neg"),
    case("Split", [X4], {"axis": 1, "split": [1, 3]}, opset=11, n_out=2, id="split-attr"),
    case("Split", [X4, Init(i64(2, 7))], {"axis": 3}, opset=13, n_out=2, id="split-input"),
    case("Split", [X4], {"axis": 1}, opset=13, n_out=2, id="split-equal"),
    case("Split", [X4], {"axis": 1, "num_outputs": 2}, opset=18, n_out=2, id="split-num-outputs"),
    case("Split", [X4], {"axis": 2, "num_outputs": 4}, opset=18, n_out=4, id="split-num-outputs-uneven"),
    case("Slice", [X4], {"starts": [1, 0], "ends": [3, -1], "axes": [2, 3]}, opset=9, id="slice-attrs"),
    case("Slice", [X4, Init(i64(1)), Init(i64(4)), Init(i64(1))], opset=13, id="slice-inputs"),
    case("Slice", [X4, Init(i64(0, -2)), Init(i64(2**62, 1)), Init(i64(3, 2)), Init(i64(2, -1))], opset=13, id="slice-steps-neg"),
    case("Slice", [X4, Init(i64(-1)), Init(i64(-2**62)), Init(i64(2)), Init(i64(-2))], opset=13, id="slice-reverse"),
    case("Slice", [X4, Init(i64(5)), Init(i64(100))], opset=13, id="slice-no-axes"),
    case("Pad", [X4, Init(i64(0, 0, 1, 2, 0, 0, 3, 0)), Init(np.float32(1.5))], opset=13, id="pad-constant"),
    case("Pad", [X4, Init(i64(0, 0, 2, 1, 0, 0, 1, 3))], {"mode": "reflect"}, opset=13, id="pad-reflect"),
    case("Pad", [X4, Init(i64(0, 0, 2, 1, 0, 0, 1, 3))], {"mode": "edge"}, opset=13, id="pad-edge"),
    case("Pad", [X4], {"pads": [0, 1, 1, 0, 0, 1, 0, 2], "value": -1.0}, opset=2, id="pad-attrs"),
    case("Pad", [X4, Init(i64(1, 2, 3, 0)), None, Init(i64(2, 3))], {"mode": "edge"}, opset=18, id="pad-axes"),
    case("Pad", [X4, Init(i64(0, 0, -1, 1, 0, 0, 2, -2))], opset=13, id="pad-negative"),
    case("Pad", [X4, Init(i64(0, 0, 2, 1, 0, 0, 1, 3))], {"mode": "wrap"}, opset=19, id="pad-wrap"),
    case("Gather", [X4, Init(np.int64(1))], {"axis": 1}, id="gather-scalar"),
    case("Gather", [X4, Init(i64([0, -1], [2, 1]))], {"axis": 3}, id="gather-2d-neg"),
    case("GatherElements", [randn(3, 4), Init(i64([0, 1, 3, -1], [2, 2, 0, 1], [1, 1, 1, 1]))], {"axis": 1}),
    case("Shape", [X4], id="shape"),
    case("Shape", [X4], {"start": 1, "end": -1}, opset=15, id="shape-start-end"),
    case("Size", [X4]),
    case("ConstantOfShape", [Init(i64(2, 3))], {"value": numpy_helper.from_array(np.array([1.5], np.float32))}, id="constant-of-shape"),
    case("ConstantOfShape", [Init(i64(4))], {}, id="constant-of-shape-default"),
    case("Expand", [randn(4, 1, 1), Init(i64(2, 1, 3, 5))], id="expand-bidirectional"),
    case("Tile", [randn(2, 3), Init(i64(2, 3))]),
    case("Range", [Init(np.float32(1)), Init(np.float32(7)), Init(np.float32(1.5))]),
    case("DepthToSpace", [randn(2, 8, 3, 4)], {"blocksize": 2}, id="depth-to-space-dcr"),
    case("DepthToSpace", [randn(2, 8, 3, 4)], {"blocksize": 2, "mode": "CRD"}, id="depth-to-space-crd"),
    case("SpaceToDepth", [randn(2, 3, 4, 6)], {"blocksize": 2}),
    # Resize / Upsample
    case("Resize", [X4, None, Init(np.array([1, 1, 2, 2], np.float32))], {"mode": "nearest"}, opset=13, id="resize-nearest-half-pixel"),
    case("Resize", [X4, None, Init(np.array([1, 1, 2, 3], np.float32))], {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, opset=13, id="resize-nearest-asym-floor"),
    case("Resize", [X4, None, Init(np.array([1, 1, 1.5, 0.6], np.float32))], {"mode": "nearest", "nearest_mode": "round_prefer_ceil"}, opset=13, id="resize-nearest-prefer-ceil"),
    case("Resize", [X4, None, Init(np.array([1, 1, 2.5, 0.5], np.float32))], {"mode": "nearest", "nearest_mode": "ceil", "coordinate_transformation_mode": "align_corners"}, opset=13, id="resize-nearest-ceil-align"),
    case("Resize", [X4, None, Init(np.array([1, 1, 2, 2], np.float32))], {"mode": "linear"}, opset=13, id="resize-linear-half-pixel"),
    case("Resize", [X4, None, Init(np.array([1, 1, 0.5, 0.7], np.float32))], {"mode": "linear"}, opset=13, id="resize-linear-down"),
    case("Resize", [X4, None, Init(np.array([1, 1, 2, 2], np.float32))], {"mode": "linear", "coordinate_transformation_mode": "align_corners"}, opset=13, id="resize-linear-align-corners"),
    case("Resize", [X4, None, Init(np.array([1, 1, 3, 1.5], np.float32))], {"mode": "linear", "coordinate_transformation_mode": "asymmetric"}, opset=13, id="resize-linear-asym"),
    case("Resize", [X4, None, None, Init(i64(2, 4, 1, 13))], {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}, opset=13, id="resize-linear-sizes-pytorch"),
    case("Resize", [X4, None, None, Init(i64(2, 4, 14, 20))], {"mode": "nearest"}, opset=13, id="resize-nearest-sizes"),
    case("Resize", [X4, None, Init(np.array([1, 1, 2, 1.5], np.float32))], {"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"}, opset=19, id="resize-half-pixel-symmetric"),
    case("Resize", [X4, None, Init(np.array([2, 3], np.float32))], {"mode": "nearest", "axes": [2, 3]}, opset=18, id="resize-axes"),
    case("Resize", [X4, None, None, Init(i64(20, 20))], {"mode": "linear", "axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"}, opset=18, id="resize-not-larger"),
    case("Resize", [X4, None, None, Init(i64(20, 20))], {"mode": "nearest", "axes": [2, 3], "keep_aspect_ratio_policy": "not_smaller"}, opset=18, id="resize-not-smaller"),
    case("Resize", [X4, Init(np.array([1, 1, 2, 2], np.float32))], {"mode": "nearest"}, opset=10, id="resize-opset10-nearest"),
    case("Resize", [X4, Init(np.array([1, 1, 0.5, 0.5], np.float32))], {"mode": "nearest"}, opset=10, id="resize-opset10-nearest-down"),
    case("Resize", [X4, Init(np.array([1, 1, 2, 1.5], np.float32))], {"mode": "linear"}, opset=10, id="resize-opset10-linear"),
    case("Upsample", [X4, Init(np.array([1, 1, 2, 2], np.float32))], {"mode": "nearest"}, opset=9, id="upsample-nearest"),
    case("Upsample", [X4, Init(np.array([1, 1, 2, 3], np.float32))], {"mode": "linear"}, opset=9, id="upsample-linear"),
    case("Upsample", [X4], {"mode": "nearest", "scales": [1.0, 1.0, 2.0, 2.0]}, opset=7, id="upsample-opset7"),
]


@pytest.mark.parametrize("op, inputs, attrs, opset, n_out, tol, ref", CASES)
def test_op_matches_onnxruntime(op, inputs, attrs, opset, n_out, tol, ref):
    check_op(op, inputs, attrs, opset, n_out, tol, ref)


def test_every_table_op_has_a_case():
    covered = {p.values[0] for p in CASES}
    assert set(SUPPORTED_OPS) - covered <= {"Constant"}  # Constant: test_constant_nodes


def test_lrn_even_size_follows_the_spec():
    """onnxruntime only takes odd sizes (and the reference evaluator is wrong), so use numpy:
    the window of channel c is [c - floor((size-1)/2), c + ceil((size-1)/2)]."""
    x, size, alpha, beta, bias = randn(2, 5, 3, 3), 4, 0.3, 0.6, 1.5
    square_sum = np.zeros_like(x)
    for c in range(5):
        lo, hi = max(0, c - (size - 1) // 2), min(4, c + size // 2)
        square_sum[:, c] = (x[:, lo : hi + 1] ** 2).sum(1)
    want = x / (bias + alpha / size * square_sum) ** beta
    node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=alpha, beta=beta, bias=bias)
    assert_close(torch_run(make_model([node], {"x": x}, {}, ["y"], 17), {"x": x}), [want])


def test_constant_nodes():
    """Constant nodes in all attribute forms feed other nodes."""
    nodes = [
        helper.make_node("Constant", [], ["t"], value=numpy_helper.from_array(randn(4, 1, 1))),
        helper.make_node("Constant", [], ["f"], value_float=0.5),
        helper.make_node("Constant", [], ["fs"], value_floats=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]),
        helper.make_node("Constant", [], ["shape"], value_ints=[2, -1]),
        helper.make_node("Add", ["x", "t"], ["a"]),
        helper.make_node("Mul", ["a", "f"], ["b"]),
        helper.make_node("Sub", ["b", "fs"], ["c"]),
        helper.make_node("Reshape", ["c", "shape"], ["y"]),
    ]
    feeds = {"x": X4}
    model = make_model(nodes, feeds, {}, ["y"], 17)
    assert_close(torch_run(model, feeds), ort_run(model, feeds))


# --------------------------------------------------------------------------------------------
# torchvision models

ZOO = {  # name -> input size (the smallest that keeps every feature map non-empty, roughly)
    "resnet18": 64,
    "resnet50": 64,
    "mobilenet_v2": 64,
    "mobilenet_v3_small": 64,
    "efficientnet_b0": 64,
    "densenet121": 64,
    "googlenet": 64,
    "shufflenet_v2_x1_0": 64,
    "regnet_y_400mf": 64,
}
ZOO_ERRORS: dict[str, tuple[float, float]] = {}


def _torchvision():
    """Import torchvision with a CPU torch: its CUDA build needs the nms op schemas defined."""
    if "torchvision" not in sys.modules:
        try:
            lib = torch.library.Library("torchvision", "DEF")
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _torchvision.lib = lib  # keep the registration alive
        except RuntimeError:
            pass  # a real torchvision build already defines them
    return pytest.importorskip("torchvision")


def export(module: torch.nn.Module, x: torch.Tensor, dynamo: bool) -> onnx.ModelProto:
    """Export in memory with the classic (dynamo=False) or the dynamo exporter."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            pytest.importorskip("onnxscript")
            return torch.onnx.export(module, (x,), dynamo=True, verbose=False).model_proto
        buf = io.BytesIO()
        torch.onnx.export(module, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"])
        return onnx.load_from_string(buf.getvalue())


_ZOO_CACHE: dict[tuple[str, bool, bool], tuple[onnx.ModelProto, np.ndarray]] = {}


def realistic_bn(net: torch.nn.Module) -> torch.nn.Module:
    """Give BN layers trained-looking parameters and statistics.

    Fresh BN layers (scale 1, bias 0, mean 0, var 1) make deep random networks shrink their
    activations towards zero (so, e.g., ReLU6's upper bound is never reached) and make the
    exporter merge the identical tensors; this keeps activations O(1) and tensors distinct.
    """
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.8, 1.6)
                m.bias.normal_(0.0, 0.3)
    return net


def zoo_model(name: str, dynamo: bool, fresh: bool = False) -> tuple[onnx.ModelProto, np.ndarray]:
    """A random-init torchvision model exported to ONNX, and an input for it (cached).

    ``fresh`` keeps torchvision's BN initialisation: the classic exporter then shares the
    identical tensors between layers through Identity nodes (tied parameters).
    """
    key = (name, dynamo, fresh)
    if key not in _ZOO_CACHE:
        tv = _torchvision()
        torch.manual_seed(0)
        kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
        net = getattr(tv.models, name)(**kwargs).eval()
        net = net if fresh else realistic_bn(net)
        x = torch.randn(2, 3, ZOO[name], ZOO[name])
        _ZOO_CACHE[key] = (export(net, x, dynamo), x.numpy())
    return _ZOO_CACHE[key]


def zoo_errors(model: onnx.ModelProto, x: np.ndarray) -> tuple[float, float]:
    """Max absolute and relative (to the output's max magnitude) error vs onnxruntime."""
    (want,) = ort_run(model, {model.graph.input[0].name: x})
    (got,) = torch_run(model, {model.graph.input[0].name: x})
    err = float(np.abs(got - want).max())
    return err, err / float(np.abs(want).max())


HEAVY = {"resnet50", "densenet121"}
ZOO_PARAMS = [
    pytest.param(name, False, id=f"{name}-classic", marks=[pytest.mark.slow] if name in HEAVY else []) for name in ZOO
] + [
    pytest.param(name, True, id=f"{name}-dynamo", marks=pytest.mark.slow) for name in ("resnet18", "mobilenet_v2")
]


@pytest.mark.parametrize("name, dynamo", ZOO_PARAMS)
def test_zoo_matches_onnxruntime(name, dynamo):
    model, x = zoo_model(name, dynamo)
    abs_err, rel_err = zoo_errors(model, x)
    ZOO_ERRORS[f"{name}-{'dynamo' if dynamo else 'classic'}"] = (abs_err, rel_err)
    assert rel_err < 1e-4, (abs_err, rel_err)


@pytest.mark.parametrize(
    "name, dynamo, fresh",
    [
        ("resnet18", False, False),
        ("mobilenet_v2", False, False),
        ("resnet18", False, True),  # biases shared through Identity nodes
        pytest.param("densenet121", False, True, marks=pytest.mark.slow),  # BN statistics tied to weights
        pytest.param("resnet18", True, False, marks=pytest.mark.slow),
    ],
)
def test_zoo_gradients_reach_every_parameter(name, dynamo, fresh):
    model, x = zoo_model(name, dynamo, fresh)
    if fresh and not dynamo:
        assert any(n.op_type == "Identity" for n in model.graph.node)
    module = to_torch(model).train()
    out = module(torch.from_numpy(x))
    (out - out.detach().roll(1, dims=0)).square().mean().backward()
    grads = [p.grad for p in module.weights.values()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    nonzero = sum(bool(g.abs().sum() > 0) for g in grads)
    assert nonzero >= 0.9 * len(grads)


@pytest.mark.parametrize(
    "name, dynamo, fresh",
    [
        ("resnet18", False, False),
        ("resnet18", False, True),
        ("mobilenet_v2", False, False),
        ("shufflenet_v2_x1_0", False, False),
        pytest.param("resnet18", True, False, marks=pytest.mark.slow),
    ],
)
def test_zoo_write_back_round_trip_is_bit_exact(name, dynamo, fresh):
    model, _ = zoo_model(name, dynamo, fresh)
    before = model.SerializeToString()
    assert write_back(to_torch(model), model).SerializeToString() == before
    assert model.SerializeToString() == before


@pytest.mark.parametrize("name, dynamo", [("mobilenet_v2", False), pytest.param("resnet18", True, marks=pytest.mark.slow)])
def test_zoo_write_back_after_training_matches_onnxruntime(name, dynamo):
    model, x = zoo_model(name, dynamo)
    module = to_torch(model)
    sgd_step(module, torch.from_numpy(x), lr=0.01)
    tuned = write_back(module, model)
    onnx.checker.check_model(tuned, full_check=True)
    with torch.no_grad():
        want = module.eval()(torch.from_numpy(x)).numpy()
    (got,) = ort_run(tuned, {tuned.graph.input[0].name: x})
    (before,) = ort_run(model, {model.graph.input[0].name: x})
    scale = float(np.abs(want).max())
    assert float(np.abs(got - want).max()) < 1e-4 * scale
    assert float(np.abs(before - want).max()) > 1e-3 * scale  # the step did change the model


# --------------------------------------------------------------------------------------------
# Training-related behaviour on small models


class TinyNet(torch.nn.Module):
    """Conv-BN-ReLU, pre-activation BN (kept as a BatchNormalization node), PReLU, pool, Linear."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.act = torch.nn.PReLU(8)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        x = self.conv2(self.act(self.bn(torch.relu(self.conv(x)))))
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


def tiny_model(dynamo: bool = False) -> onnx.ModelProto:
    torch.manual_seed(1)
    net = TinyNet().eval()
    with torch.no_grad():  # non-trivial BN statistics, so nothing is merged by the exporter
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.2, 0.2)
    return export(net, torch.randn(4, 3, 12, 12), dynamo)


def sgd_step(module, x: torch.Tensor, lr: float = 0.1) -> None:
    opt = torch.optim.SGD(module.parameters(), lr=lr)
    module.train()
    module(x).square().mean().backward()
    opt.step()


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_tiny_net_parameters_and_write_back_after_training(dynamo):
    model = tiny_model(dynamo)
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" in ops and "PRelu" in ops
    before = model.SerializeToString()
    module = to_torch(model)
    trained_names = {name for name, _ in module.onnx_parameters()}
    initializer_names = {t.name for t in model.graph.initializer}
    assert trained_names <= initializer_names
    x = torch.randn(4, 3, 12, 12)
    sgd_step(module, x)
    tuned = write_back(module, model)
    assert model.SerializeToString() == before  # the argument is not modified
    onnx.checker.check_model(tuned, full_check=True)
    # Same structure; every trained initializer keeps name, dtype and shape, and changed.
    assert [n.SerializeToString() for n in tuned.graph.node] == [n.SerializeToString() for n in model.graph.node]
    assert (tuned.ir_version, tuned.opset_import, tuned.producer_name) == (model.ir_version, model.opset_import, model.producer_name)
    old = {t.name: t for t in model.graph.initializer}
    for t in tuned.graph.initializer:
        assert (t.data_type, list(t.dims)) == (old[t.name].data_type, list(old[t.name].dims))
        changed = not np.array_equal(numpy_helper.to_array(t), numpy_helper.to_array(old[t.name]))
        assert changed == (t.name in trained_names), t.name
    module.eval()
    with torch.no_grad():
        want = module(x).numpy()
    (got,) = ort_run(tuned, {tuned.graph.input[0].name: x.numpy()})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_frozen_bn_uses_running_statistics_in_training_mode():
    model = tiny_model()
    module = to_torch(model)
    x = torch.randn(4, 3, 12, 12)
    stats = {k: v.clone() for k, v in module.constants.named_buffers()}
    with torch.no_grad():
        train_out = module.train()(x)
        eval_out = module.eval()(x)
    torch.testing.assert_close(train_out, eval_out, rtol=0, atol=0)
    for k, v in module.constants.named_buffers():
        assert torch.equal(v, stats[k])
    # BN scale and bias are trainable parameters.
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    params = {name for name, _ in module.onnx_parameters()}
    assert {bn.input[1], bn.input[2]} <= params and not {bn.input[3], bn.input[4]} & params


def test_train_bn_updates_running_statistics_and_writes_them_back():
    model = tiny_model()
    module = to_torch(model, train_bn=True)
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    x = torch.randn(4, 3, 12, 12) * 2 + 1
    with torch.no_grad():
        module.train()(x)
        train_out = module(x)
        module.eval()
        eval_out = module(x)
    assert not torch.allclose(train_out, eval_out)  # batch vs running statistics
    mean = module.tensor(bn.input[3])
    old_mean = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == bn.input[3]))
    assert not np.allclose(mean.numpy(), old_mean)
    tuned = write_back(module, model)
    new_mean = numpy_helper.to_array(next(t for t in tuned.graph.initializer if t.name == bn.input[3]))
    np.testing.assert_array_equal(new_mean, mean.numpy())
    (got,) = ort_run(tuned, {tuned.graph.input[0].name: x.numpy()})
    np.testing.assert_allclose(got, eval_out.numpy(), rtol=1e-4, atol=1e-5)


def test_train_bn_refuses_statistics_shared_with_weights():
    """At random init the exporter merges BN bias and running mean (both zeros)."""
    x, scale, zeros, ones = randn(2, 3, 4, 4), randn(3), np.zeros(3, np.float32), np.ones(3, np.float32)
    node = helper.make_node("BatchNormalization", ["x", "s", "z", "z", "o"], ["y"])
    model = make_model([node], {"x": x}, {"s": scale, "z": zeros, "o": ones}, ["y"], 15)
    to_torch(model)  # fine with frozen statistics
    with pytest.raises(ModelError, match="train_bn"):
        to_torch(model, train_bn=True)
    module = to_torch(model)  # the shared tensor trains and stays consistent
    sgd_step(module, torch.from_numpy(x))
    tuned = write_back(module, model)
    assert_close(ort_run(tuned, {"x": x}), [module.eval()(torch.from_numpy(x)).detach().numpy()])


def test_weights_in_constant_nodes_are_trained_and_written_back():
    w, slope = randn(4, 3, 3, 3), [0.1, 0.2, 0.3, 0.4]
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w)),
        helper.make_node("Constant", [], ["slope"], value_floats=slope),
        helper.make_node("Constant", [], ["shape"], value_ints=[4, 1, 1]),
        helper.make_node("Reshape", ["slope", "shape"], ["slope3"]),
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("PRelu", ["c", "slope3"], ["y"]),
    ]
    x = randn(2, 3, 5, 5)
    model = make_model(nodes, {"x": x}, {}, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 5, 5])], 17)
    module = to_torch(model)
    assert {name for name, _ in module.onnx_parameters()} == {"w"}  # slope reaches PRelu via Reshape
    assert write_back(module, model).SerializeToString() == model.SerializeToString()
    sgd_step(module, torch.from_numpy(x))
    tuned = write_back(module, model)
    new_w = numpy_helper.to_array(tuned.graph.node[0].attribute[0].t)
    np.testing.assert_array_equal(new_w, module.tensor("w").detach().numpy())
    assert not np.array_equal(new_w, w)
    onnx.checker.check_model(tuned, full_check=True)
    assert_close(ort_run(tuned, {"x": x}), [module.eval()(torch.from_numpy(x)).detach().numpy()])


def test_value_float_constant_weight_written_back():
    nodes = [
        helper.make_node("Constant", [], ["slope"], value_floats=[0.25]),
        helper.make_node("PRelu", ["x", "slope"], ["y"]),
    ]
    x = randn(2, 3)
    model = make_model(nodes, {"x": x}, {}, ["y"], 17)
    module = to_torch(model)
    module(torch.from_numpy(x)).sum().backward()
    with torch.no_grad():
        module.tensor("slope").add_(0.5)
    tuned = write_back(module, model)
    assert list(tuned.graph.node[0].attribute[0].floats) == [0.75]


def test_identity_shared_weights_stay_tied():
    """The classic exporter shares identical initializers through Identity nodes."""
    w = randn(3, 3)
    nodes = [
        helper.make_node("Identity", ["w"], ["w1"]),
        helper.make_node("Identity", ["w"], ["w2"]),
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["y"]),
    ]
    x = randn(2, 3)
    model = make_model(nodes, {"x": x}, {"w": w}, ["y"], 17)
    module = to_torch(model)
    assert [name for name, _ in module.onnx_parameters()] == ["w"]
    sgd_step(module, torch.from_numpy(x))
    tuned = write_back(module, model)
    assert_close(ort_run(tuned, {"x": x}), [module.eval()(torch.from_numpy(x)).detach().numpy()])


def test_matmul_add_bias_is_trainable_and_dtype_preserved():
    """A Linear on 3-D input exports as MatMul + Add; float64 tensors stay float64."""
    x, w, b = randn(2, 3, 4, dtype=np.float64), randn(4, 5, dtype=np.float64), randn(5, dtype=np.float64)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])]
    model = make_model(nodes, {"x": x}, {"w": w, "b": b}, ["y"], 17)
    module = to_torch(model)
    assert {name for name, _ in module.onnx_parameters()} == {"w", "b"}
    assert module.tensor("w").dtype == torch.float64
    sgd_step(module, torch.from_numpy(x))
    tuned = write_back(module, model)
    assert all(t.data_type == TensorProto.DOUBLE for t in tuned.graph.initializer)
    assert_close(ort_run(tuned, {"x": x}), [module.eval()(torch.from_numpy(x)).detach().numpy()], tol=1e-10)


def test_float_data_initializer_round_trip_keeps_storage():
    """Initializers stored in float_data (not raw_data) survive an untrained round trip."""
    w = randn(3, 4)
    tensor = helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.reshape(-1).tolist(), raw=False)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [tensor],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    module = to_torch(model)
    assert write_back(module, model).SerializeToString() == model.SerializeToString()
    with torch.no_grad():
        module.tensor("w").mul_(2)
    tuned = write_back(module, model)
    np.testing.assert_array_equal(numpy_helper.to_array(tuned.graph.initializer[0]), w * 2)


# --------------------------------------------------------------------------------------------
# Inputs, outputs and errors


def two_output_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Sub", ["a", "b"], ["d"])]
    return make_model(nodes, {"a": randn(3), "b": randn(3)}, {}, ["d", "r"], 17)


def test_forward_by_position_name_and_numpy_and_tuple_outputs():
    module = to_torch(two_output_model())
    a, b = randn(3), randn(3)
    d, r = module(torch.from_numpy(a), torch.from_numpy(b))
    d2, r2 = module(b=b, a=a)
    np.testing.assert_allclose(d.numpy(), a - b)
    np.testing.assert_allclose(r.numpy(), np.maximum(a, 0))
    assert torch.equal(d, d2) and torch.equal(r, r2)


def test_forward_input_errors():
    module = to_torch(two_output_model())
    with pytest.raises(DataError, match="missing"):
        module(torch.zeros(3))
    with pytest.raises(DataError, match="unexpected"):
        module(torch.zeros(3), torch.zeros(3), c=torch.zeros(3))
    with pytest.raises(DataError):
        module(torch.zeros(3), torch.zeros(3), torch.zeros(3))


@pytest.mark.parametrize(
    "node, shown",
    [
        (helper.make_node("NonMaxSuppression", ["x", "x"], ["y"]), "op NonMaxSuppression is"),
        (helper.make_node("FusedConv", ["x"], ["y"], domain="com.microsoft"), "op com.microsoft.FusedConv is"),
    ],
)
def test_unsupported_op_fails_at_build_time(node, shown):
    model = make_model([node], {"x": randn(1, 4, 4)}, {}, ["y"], 17)
    with pytest.raises(ModelError) as info:
        to_torch(model)
    message = str(info.value)
    assert shown in message and "not supported by the torch bridge" in message
    assert "supported: " in message and "Conv" in message and "Resize" in message


def test_all_unsupported_ops_are_named_once():
    nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"]), helper.make_node("NonZero", ["x"], ["y"]), helper.make_node("NonZero", ["v"], ["z"])]
    model = make_model(nodes, {"x": randn(5), "k": i64(2)}, {}, ["y", "z", "i"], 17)
    with pytest.raises(ModelError, match=r"ops NonZero, TopK are not supported"):
        to_torch(model)


@pytest.mark.parametrize(
    "op, inputs, attrs",
    [
        ("Resize", ["x", "", "s"], {"mode": "cubic"}),
        ("Resize", ["x", "", "s"], {"antialias": 1}),
        ("MaxPool", ["x"], {"kernel_shape": [2, 2]}),  # with an Indices output, below
        ("AveragePool", ["x"], {"kernel_shape": [2, 2], "dilations": [2, 2]}),
    ],
)
def test_unsupported_variants_fail_at_build_time(op, inputs, attrs):
    outputs = ["y", "idx"] if op == "MaxPool" else ["y"]
    node = helper.make_node(op, inputs, outputs, **attrs)
    model = make_model([node], {"x": X4}, {"s": np.ones(4, np.float32)}, outputs, 19)
    with pytest.raises(ModelError, match="not supported"):
        to_torch(model)


def test_model_local_functions_are_inlined():
    fn = helper.make_function(
        "local",
        "Swish",
        ["x"],
        ["y"],
        [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])],
        [helper.make_opsetid("", 17)],
    )
    graph = helper.make_graph(
        [helper.make_node("Swish", ["x"], ["y"], domain="local")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)], functions=[fn])
    model.ir_version = 8
    x = randn(2, 3)
    assert_close(torch_run(model, {"x": x}), ort_run(model, {"x": x}))


def test_import_without_torch_raises_dependency_error():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from onnxprune.errors import DependencyError\n"
        "try:\n    import onnxprune.torch\nexcept DependencyError as e:\n    print('OK', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("OK"), out.stderr
    assert "pip install 'onnxprune[torch]'" in out.stdout


def test_awkward_initializer_names_get_unique_safe_keys():
    """Names with dots/colons, or equal to Module attributes, still map back exactly."""
    names = ["layer.0.weight", "layer_0_weight", "onnx::MatMul_7", "forward", "keys"]
    inits = {name: randn(3, 3) for name in names}
    nodes, prev = [], "x"
    for i, name in enumerate(names):
        nodes.append(helper.make_node("MatMul", [prev, name], [f"h{i}"]))
        prev = f"h{i}"
    x = randn(2, 3)
    model = make_model(nodes, {"x": x}, inits, [prev], 17)
    module = to_torch(model)
    assert sorted(name for name, _ in module.onnx_parameters()) == sorted(names)
    assert all("." not in key for key in module.weights.keys())
    assert_close(torch_run(model, {"x": x}), ort_run(model, {"x": x}))
    sgd_step(module, torch.from_numpy(x), lr=0.01)
    tuned = write_back(module, model)
    for t in tuned.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(t), module.tensor(t.name).detach().numpy())


def test_write_back_rejects_foreign_inputs():
    with pytest.raises(ModelError, match="to_torch"):
        write_back(torch.nn.Linear(2, 2), two_output_model())
    w = randn(3, 3)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": randn(2, 3)}, {"w": w}, ["y"], 17)
    other = make_model([helper.make_node("MatMul", ["x", "v"], ["y"])], {"x": randn(2, 3)}, {"v": w}, ["y"], 17)
    with pytest.raises(ModelError, match="no initializer"):
        write_back(to_torch(model), other)
    wrong_shape = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": randn(2, 3)}, {"w": randn(3, 4)}, ["y"], 17)
    module = to_torch(model)
    with torch.no_grad():
        module.tensor("w").add_(1)
    with pytest.raises(ModelError, match="shape"):
        write_back(module, wrong_shape)


@pytest.mark.parametrize("elem", [TensorProto.FLOAT16, TensorProto.BFLOAT16])
def test_half_precision_initializers_keep_their_type(elem):
    w = randn(3, 4)
    tensor = helper.make_tensor("w", elem, w.shape, w.astype(np.float32).reshape(-1).tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", elem, [2, 3])],
        [helper.make_tensor_value_info("y", elem, [2, 4])],
        [tensor],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    module = to_torch(model)
    param = module.tensor("w")
    assert param.dtype == {TensorProto.FLOAT16: torch.float16, TensorProto.BFLOAT16: torch.bfloat16}[elem]
    assert write_back(module, model).SerializeToString() == model.SerializeToString()
    with torch.no_grad():
        param.mul_(2)
    out = write_back(module, model).graph.initializer[0]
    assert out.data_type == elem and list(out.dims) == [3, 4]
    np.testing.assert_array_equal(numpy_helper.to_array(out).astype(np.float32), param.detach().float().numpy())
