"""Analysis stage. Invariants guarded on small graphs exercising every dependency rule:
(1) masking equivalence: the pruned model computes what the original computes with the removed
channels' consumer weights zeroed (``analysis.oracle``); (2) removing nothing changes nothing;
(3) the pruned model passes the ONNX checker and runs; (4) predicted cost = measured cost."""

import numpy as np
import pytest

from graphs import G, check_invariants


def chain_with(op_builder, c=6):
    """conv -> <ops under test> -> conv -> head; the ops sit between producer and consumer."""
    g = G()
    y = g.conv("x", 3, c)
    y = op_builder(g, y, c)
    return g.model(g.head(g.conv(y, c, 4), 4))


UNARY = [
    ("Relu", {}), ("LeakyRelu", {"alpha": 0.1}), ("Sigmoid", {}), ("HardSigmoid", {}), ("HardSwish", {}),
    ("Tanh", {}), ("Softplus", {}), ("Erf", {}), ("Identity", {}), ("Elu", {}), ("Abs", {}), ("Neg", {}),
]


@pytest.mark.parametrize("op,attrs", UNARY, ids=[u[0] for u in UNARY])
def test_unary(op, attrs):
    check_invariants(chain_with(lambda g, y, c: g.op(op, [y], **attrs)))


def test_clip_and_dropout_and_cast():
    def ops(g, y, c):
        y = g.op("Clip", [y, g.const(np.float32(0)), g.const(np.float32(6))])
        y = g.op("Dropout", [y])
        return g.op("Cast", [y], to=1)

    check_invariants(chain_with(ops))


def test_batchnorm_and_instancenorm():
    def ops(g, y, c):
        y = g.bn(y, c)
        return g.op("InstanceNormalization", [y, g.w(c), g.w(c)])

    check_invariants(chain_with(ops))


@pytest.mark.parametrize("slope_shape", [(6, 1, 1), (1, 6, 1, 1)])
def test_prelu_per_channel(slope_shape):
    check_invariants(chain_with(lambda g, y, c: g.op("PRelu", [y, g.w(*slope_shape)])))


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min"])
def test_elementwise_with_per_channel_constant(op):
    def ops(g, y, c):
        const = g.const((np.random.default_rng(1).random((c, 1, 1)) + 0.5).astype(np.float32))
        y = g.op(op, [y, const])
        return g.op(op, [y, g.const(np.float32(2.0))])  # scalar broadcasts

    check_invariants(chain_with(ops))


def test_residual_identity_and_projection():
    g = G()
    a = g.cbr("x", 3, 8)
    b = g.op("Relu", [g.op("Add", [g.bn(g.conv(g.cbr(a, 8, 8), 8, 8), 8), a])])  # identity shortcut
    c = g.bn(g.conv(g.cbr(b, 8, 12, stride=2), 12, 12), 12)
    d = g.op("Relu", [g.op("Add", [c, g.bn(g.conv(b, 8, 12, k=1, stride=2), 12)])])  # projection
    analysis = check_invariants(g.model(g.head(d, 12)), seeds=range(6))
    # The identity-shortcut sum ties a, the second conv's output and the sum: one group.
    sizes = sorted(g.size for g in analysis.prunable_groups)
    assert 8 in sizes and 12 in sizes


def test_concat_and_split():
    g = G()
    a, b = g.conv("x", 3, 4), g.conv("x", 3, 6)
    cat = g.op("Concat", [a, b], axis=1)
    s1, s2 = g.op("Split", [g.op("Relu", [cat]), g.const(np.array([3, 7], dtype=np.int64))], n_out=2, axis=1)
    y = g.op("Add", [g.conv(s1, 3, 5), g.conv(s2, 7, 5)])
    check_invariants(g.model(g.head(y, 5)), seeds=range(6))


def test_split_equal_opset18_num_outputs():
    g = G(opset=18)
    a = g.conv("x", 3, 8)
    s1, s2 = g.op("Split", [a], n_out=2, axis=1, num_outputs=2)
    y = g.op("Concat", [g.conv(s1, 4, 4), g.conv(s2, 4, 4)], axis=1)
    check_invariants(g.model(g.head(y, 8)))


def test_split_attribute_opset11():
    g = G(opset=11)
    a = g.conv("x", 3, 8)
    s1, s2 = g.op("Split", [a], n_out=2, axis=1, split=[3, 5])
    y = g.op("Concat", [g.conv(s1, 3, 4), g.conv(s2, 5, 4)], axis=1)
    check_invariants(g.model(g.head(y, 8)))


def test_slice_channels():
    g = G()
    a = g.conv("x", 3, 10)
    i64 = lambda v: g.const(np.array(v, dtype=np.int64))
    first = g.op("Slice", [a, i64([0]), i64([4]), i64([1])])
    rest = g.op("Slice", [a, i64([4]), i64([2**62]), i64([1])])
    y = g.op("Add", [g.conv(first, 4, 5), g.conv(rest, 6, 5)])
    check_invariants(g.model(g.head(y, 5)), seeds=range(6))


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise(multiplier):
    g = G()
    a = g.cbr("x", 3, 6)
    dw = g.op("Relu", [g.conv(a, 6, 6 * multiplier, group=6)])
    y = g.conv(dw, 6 * multiplier, 5, k=1)
    analysis = check_invariants(g.model(g.head(y, 5)))
    assert any(g.size == 6 for g in analysis.prunable_groups)


def test_grouped_conv_is_prunable():
    """Grouped convs keep equal channel counts per group (local index l tied across groups)."""
    g = G()
    a = g.conv("x", 3, 8)
    y = g.conv(g.conv(a, 8, 8, group=2), 8, 4)
    analysis = check_invariants(g.model(g.head(y, 4)))
    assert not any("grouped" in r for grp in analysis.groups for r in grp.blocked)
    assert sorted(grp.size for grp in analysis.prunable_groups) == [4, 4, 4]


def test_squeeze_excitation():
    g = G()
    a = g.cbr("x", 3, 8)
    s = g.op("GlobalAveragePool", [a])
    s = g.op("Sigmoid", [g.conv(g.op("Relu", [g.conv(s, 8, 4, k=1)]), 4, 8, k=1)])
    y = g.op("Mul", [a, s])
    check_invariants(g.model(g.head(g.conv(y, 8, 6), 6)), seeds=range(6))


def test_flatten_into_gemm_vgg_style():
    g = G()
    a = g.op("MaxPool", [g.cbr("x", 3, 6)], kernel_shape=[2, 2], strides=[2, 2])
    flat = g.op("Flatten", [a], axis=1)  # 6 x 4 x 4 -> 96 features, 16 per channel
    h = g.op("Relu", [g.op("Gemm", [flat, g.w(10, 96), g.w(10)], transB=1)])
    analysis = check_invariants(g.model(g.op("Gemm", [h, g.w(3, 10), g.w(3)], transB=1)))
    assert sorted(g.size for g in analysis.prunable_groups) == [6, 10]


def test_reshape_constant_into_matmul():
    g = G()
    a = g.conv("x", 3, 4, stride=2)  # 4 x 4 x 4
    flat = g.op("Reshape", [a, g.const(np.array([-1, 64], dtype=np.int64))])
    y = g.op("Add", [g.op("MatMul", [flat, g.w(64, 7)]), g.w(7)])
    out = g.op("MatMul", [g.op("Relu", [y]), g.w(7, 3)])
    check_invariants(g.model(out, dynamic_batch=False))


def test_reshape_shape_entry_patched():
    g = G()
    a = g.conv("x", 3, 4)  # 1 x 4 x 8 x 8
    r = g.op("Reshape", [a, g.const(np.array([1, 4, 64], dtype=np.int64))])
    r = g.op("Reshape", [g.op("Relu", [r]), g.const(np.array([1, 4, 8, 8], dtype=np.int64))])
    check_invariants(g.model(g.head(g.conv(r, 4, 3), 3), dynamic_batch=False))


def test_pools_resize_pad():
    g = G()
    a = g.cbr("x", 3, 6)
    a = g.op("MaxPool", [a], kernel_shape=[2, 2], strides=[2, 2])
    a = g.op("AveragePool", [a], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    a = g.op("Resize", [a, "", g.const(np.array([1, 1, 2, 2], dtype=np.float32))], mode="nearest")
    a = g.op("Pad", [a, g.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64))])
    check_invariants(g.model(g.head(g.conv(a, 6, 4), 4)))


def test_resize_with_sizes_is_patched():
    g = G()
    a = g.conv("x", 3, 6)
    a = g.op("Resize", [a, "", "", g.const(np.array([1, 6, 16, 16], dtype=np.int64))], mode="nearest")
    check_invariants(g.model(g.head(g.conv(a, 6, 4), 4), dynamic_batch=False))


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_mean_spatial(keepdims):
    g = G()
    a = g.cbr("x", 3, 6)
    r = g.op("ReduceMean", [a], axes=[2, 3], keepdims=keepdims)
    if keepdims:
        r = g.op("Flatten", [r], axis=1)
    check_invariants(g.model(g.op("Gemm", [r, g.w(3, 6), g.w(3)], transB=1)))


def test_reduce_over_channels_blocks():
    g = G(opset=18)
    a = g.conv("x", 3, 6)
    r = g.op("ReduceMean", [a, g.const(np.array([1], dtype=np.int64))], keepdims=1)
    y = g.op("Mul", [g.conv(a, 6, 4), r])
    analysis = check_invariants(g.model(g.head(y, 4)))
    assert any("reduces over the channel axis" in r for grp in analysis.groups for r in grp.blocked)


def test_transpose_to_channels_last_matmul():
    g = G()
    a = g.conv("x", 3, 6)
    t = g.op("Transpose", [a], perm=[0, 2, 3, 1])  # N H W C
    m = g.op("Add", [g.op("MatMul", [t, g.w(6, 5)]), g.w(5)])  # pointwise linear on channels
    back = g.op("Transpose", [g.op("Relu", [m])], perm=[0, 3, 1, 2])
    check_invariants(g.model(g.head(back, 5)))


def test_conv_transpose():
    g = G()
    a = g.conv("x", 3, 6, stride=2)
    up = g.op("ConvTranspose", [a, g.w(6, 5, 2, 2), g.w(5)], kernel_shape=[2, 2], strides=[2, 2])
    check_invariants(g.model(g.head(g.conv(g.op("Relu", [up]), 5, 4), 4)), seeds=range(6))


def test_unknown_op_blocks_only_its_channels():
    g = G()
    a = g.conv("x", 3, 6)
    lrn = g.op("LRN", [a], size=3)  # no rule: blocks a's channels
    b = g.conv(g.op("Relu", [lrn]), 6, 8)
    analysis = check_invariants(g.model(g.head(g.conv(b, 8, 4), 4)))
    assert any("LRN" in r and "no pruning rule" in r for grp in analysis.groups for r in grp.blocked)
    assert any(g.size == 8 for g in analysis.prunable_groups)


def test_softmax_over_channels_blocks():
    g = G()
    a = g.conv("x", 3, 6)
    s = g.op("Softmax", [a], axis=1)
    analysis = check_invariants(g.model(g.head(g.conv(g.conv(s, 6, 5), 5, 4), 4)))
    assert any("normalises over the channel axis" in r for grp in analysis.groups for r in grp.blocked)


def test_shared_constant_ties_consumers():
    """Two convs reading one weight initializer must be pruned identically."""
    g = G()
    a, b = g.conv("x", 3, 6), g.conv("x", 3, 6)
    shared = g.w(4, 6, 3, 3)
    y = g.op("Add", [g.op("Conv", [a, shared], pads=[1] * 4), g.op("Conv", [b, shared], pads=[1] * 4)])
    check_invariants(g.model(g.head(y, 4)))


def test_graph_input_and_output_channels_never_change():
    g = G()
    out = g.conv(g.conv("x", 3, 6), 6, 4)  # the output is a feature map
    analysis = check_invariants(g.model(out))
    assert [grp.size for grp in analysis.prunable_groups] == [6]
