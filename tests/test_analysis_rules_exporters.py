"""Analysis stage. Invariants 1-4 (masking equivalence, empty plan, valid model, predicted =
measured cost) for the rules that cover what real exporters emit: grouped convolutions, channel
shuffles (static and with run-time shape chains), chunks with computed bounds, strided slices,
normalisations, Einsum, Expand/Tile/Gather and QDQ graphs (zero points as the oracle's zeros)."""


import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graphs import G, check_invariants, random_keep
from onnxprune import analyse, load_model, measured_cost, verify
from onnxprune.analysis.oracle import assert_equivalent, masked_model
from onnxprune.rewrite import rewrite
from onnxprune.cost import CostModel
from onnxprune.rewrite import random_inputs
from onnxprune.runtime.session import run

I64 = np.int64


def i64(g, values):
    return g.const(np.array(values, dtype=I64))


def reasons(analysis):
    return [r for grp in analysis.groups for r in grp.blocked]


def attr(model, node_name, name):
    node = next(n for n in model.graph.node if n.name == node_name)
    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == name)


# --- grouped convolution ------------------------------------------------------------------------
@pytest.mark.parametrize("cin,cout,group", [(8, 8, 2), (8, 12, 4), (12, 6, 3), (8, 16, 2)])
def test_grouped_conv(cin, cout, group):
    """Input channel l of every group is weight atom l; outputs are tied across groups."""
    g = G()
    a = g.cbr("x", 3, cin)
    y = g.op("Relu", [g.bn(g.conv(a, cin, cout, group=group), cout)])
    analysis = check_invariants(g.model(g.head(g.conv(y, cout, 4, k=1), 4)), seeds=range(6))
    sizes = sorted(grp.size for grp in analysis.prunable_groups)
    assert cin // group in sizes and cout // group in sizes  # one decision per within-group index


def test_grouped_conv_keeps_group_count():
    g = G()
    a = g.conv("x", 3, 8)
    grouped = g.conv(a, 8, 8, group=4)
    model = g.model(g.head(grouped, 8))
    analysis = analyse(load_model(model))
    pruned = rewrite(analysis, random_keep(analysis, np.random.default_rng(0)))
    conv = next(n for n in pruned.graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i == 4 for a in n.attribute))
    assert conv is not None


def test_resnext_block():
    """1x1 -> grouped 3x3 -> 1x1 with an identity shortcut (ResNeXt/RegNet bottleneck)."""
    g = G(seed=3)
    a = g.cbr("x", 3, 8)
    b = g.cbr(g.cbr(a, 8, 16, k=1), 16, 16, group=4)
    y = g.op("Relu", [g.op("Add", [g.bn(g.conv(b, 16, 8, k=1), 8), a])])
    check_invariants(g.model(g.head(y, 8)), seeds=range(6))


@pytest.mark.parametrize("cin,cout,group", [(8, 6, 2), (6, 6, 6), (4, 8, 4)])
def test_grouped_and_depthwise_conv_transpose(cin, cout, group):
    g = G()
    a = g.conv("x", 3, cin, stride=2)
    w, bias = g.w(cin, cout // group, 2, 2), g.w(cout)
    up = g.op("ConvTranspose", [a, w, bias], kernel_shape=[2, 2], strides=[2, 2], group=group)
    check_invariants(g.model(g.head(g.conv(g.op("Relu", [up]), cout, 4), 4)), seeds=range(6))


# --- channel shuffle and shape chains ------------------------------------------------------------
def shuffle_static(g, y, c, groups=2):
    r = g.op("Reshape", [y, i64(g, [1, groups, c // groups, 8, 8])])
    t = g.op("Transpose", [r], perm=[0, 2, 1, 3, 4])
    return g.op("Reshape", [t, i64(g, [1, c, 8, 8])])


def shape_entry(g, x, axis):
    """Unsqueeze(Gather(Shape(x), axis)): how torch exports x.size(axis) with a dynamic batch."""
    return g.op("Unsqueeze", [g.op("Gather", [g.op("Shape", [x]), i64(g, axis)], axis=0), i64(g, [0])])


def shuffle_dynamic(g, y, groups=2):
    """torchvision's channel_shuffle as the classic exporter writes it for a dynamic batch."""
    n, c, h, w = (shape_entry(g, y, a) for a in range(4))
    per = g.op("Unsqueeze", [g.op("Div", [g.op("Gather", [g.op("Shape", [y]), i64(g, 1)], axis=0), i64(g, groups)]), i64(g, [0])])
    r = g.op("Reshape", [y, g.op("Concat", [n, i64(g, [groups]), per, h, w], axis=0)])
    t = g.op("Transpose", [r], perm=[0, 2, 1, 3, 4])
    return g.op("Reshape", [t, g.op("Concat", [n, c, h, w], axis=0)])


def chunk_dynamic(g, y):
    """x.chunk(2, 1): Slice bounds (C + 1) // 2 and 2 * that, computed from Shape(x)."""
    size = g.op("Gather", [g.op("Shape", [y]), i64(g, [1])], axis=0)
    half = g.op("Div", [g.op("Add", [size, i64(g, [1])]), i64(g, [2])])
    first = g.op("Slice", [y, i64(g, [0]), g.op("Mul", [half, i64(g, [1])]), i64(g, [1])])
    second = g.op("Slice", [y, g.op("Mul", [half, i64(g, [1])]), g.op("Mul", [half, i64(g, [2])]), i64(g, [1])])
    return first, second


@pytest.mark.parametrize("dynamic", [False, True])
def test_channel_shuffle(dynamic):
    g = G()
    a = g.cbr("x", 3, 8)
    s = shuffle_dynamic(g, a) if dynamic else shuffle_static(g, a, 8)
    analysis = check_invariants(g.model(g.head(g.conv(s, 8, 4), 4), dynamic_batch=dynamic), seeds=range(6))
    assert not any("spread" in r for r in reasons(analysis))
    assert 8 in [grp.size for grp in analysis.prunable_groups]  # every channel its own decision
    pruned = rewrite(analysis, random_keep(analysis, np.random.default_rng(0)))
    ops = [n.op_type for n in pruned.graph.node]
    assert "Transpose" not in ops and ops.count("Identity") == 2  # the shuffle became one Gather


def test_shufflenet_unit_dynamic():
    """Chunk -> branch -> Concat -> shuffle, twice, as in ShuffleNetV2 with a dynamic batch."""
    g = G(seed=2)
    y = g.cbr("x", 3, 8)
    for _ in range(2):
        x1, x2 = chunk_dynamic(g, y)
        b = g.cbr(g.op("Relu", [g.bn(g.conv(g.cbr(x2, 4, 6, k=1), 6, 6, group=6), 6)]), 6, 4, k=1)
        y = shuffle_dynamic(g, g.op("Concat", [x1, b], axis=1))
    analysis = check_invariants(g.model(g.head(g.conv(y, 8, 4), 4)), seeds=range(8))
    assert not [r for r in reasons(analysis) if "computed at run time" in r]


def test_chunk_with_computed_bounds_becomes_constant():
    g = G()
    a = g.conv("x", 3, 8)
    x1, x2 = chunk_dynamic(g, a)
    y = g.op("Add", [g.conv(x1, 4, 5), g.conv(x2, 4, 5)])
    model = g.model(g.head(y, 5))
    analysis = check_invariants(model, seeds=range(6))
    keep = random_keep(analysis, np.random.default_rng(1))
    pruned = rewrite(analysis, keep)
    slices = [n for n in pruned.graph.node if n.op_type == "Slice"]
    inits = {t.name for t in pruned.graph.initializer}
    assert all(n.input[1] in inits and n.input[2] in inits for n in slices)


def test_split_with_computed_sizes():
    g = G(opset=13)
    a = g.conv("x", 3, 8)
    half = g.op("Div", [g.op("Gather", [g.op("Shape", [a]), i64(g, [1])], axis=0), i64(g, [2])])
    s1, s2 = g.op("Split", [a, g.op("Concat", [half, half], axis=0)], n_out=2, axis=1)
    y = g.op("Concat", [g.conv(s1, 4, 3), g.conv(s2, 4, 3)], axis=1)
    check_invariants(g.model(g.head(y, 6)), seeds=range(6))


def test_split_uneven_num_outputs_opset18():
    g = G(opset=18)
    a = g.conv("x", 3, 7)
    s1, s2 = g.op("Split", [a], n_out=2, axis=1, num_outputs=2)  # sizes 4 and 3
    y = g.op("Concat", [g.conv(s1, 4, 4), g.conv(s2, 3, 4)], axis=1)
    check_invariants(g.model(g.head(y, 8)))


def test_dynamic_flatten_reshape_and_zero_entries():
    g = G()
    a = g.cbr("x", 3, 6)
    keep_nc = g.op("Reshape", [a, i64(g, [0, 0, -1])])  # [N, C, H*W]; 0 copies N and C
    back = g.op("Reshape", [g.op("Relu", [keep_nc]), g.op("Concat", [shape_entry(g, a, 0), shape_entry(g, a, 1), i64(g, [8, 8])], axis=0)])
    flat = g.op("Reshape", [g.op("GlobalAveragePool", [back]), g.op("Concat", [shape_entry(g, a, 0), i64(g, [-1])], axis=0)])
    out = g.op("Gemm", [flat, g.w(3, 6), g.w(3)], transB=1)
    check_invariants(g.model(out), seeds=range(6))


def test_resize_with_computed_sizes():
    g = G()
    a = g.cbr("x", 3, 6)
    nc = g.op("Slice", [g.op("Shape", [a]), i64(g, [0]), i64(g, [2])])
    sizes = g.op("Concat", [nc, i64(g, [16, 16])], axis=0)
    up = g.op("Resize", [a, "", "", sizes], mode="nearest")
    check_invariants(g.model(g.head(g.conv(up, 6, 4), 4)), seeds=range(6))


def test_shuffle_with_a_second_reader_keeps_its_reshapes():
    """If a shuffle's inner tensor feeds something else, the chain stays and the halves are tied."""
    g = G()
    a = g.cbr("x", 3, 8)
    r = g.op("Reshape", [a, i64(g, [1, 2, 4, 8, 8])])
    t = g.op("Transpose", [r], perm=[0, 2, 1, 3, 4])
    s = g.op("Reshape", [t, i64(g, [1, 8, 8, 8])])
    s2 = g.op("Reshape", [g.op("Relu", [t]), i64(g, [1, 8, 8, 8])])
    y = g.op("Add", [g.conv(s, 8, 4), g.conv(s2, 8, 4)])
    analysis = check_invariants(g.model(g.head(y, 4), dynamic_batch=False), seeds=range(6))
    assert 4 in [grp.size for grp in analysis.prunable_groups]  # channel l tied to l + C/2


def test_spread_channels_reaching_other_ops_block_with_reason():
    """[N, C, H, W] -> [N, g, C/g, H, W] fed to a Softmax over one of its channel axes cannot be followed."""
    g = G()
    a = g.conv("x", 3, 8)
    r = g.op("Reshape", [a, i64(g, [1, 2, 4, 8, 8])])
    s = g.op("Softmax", [r], axis=2)
    back = g.op("Reshape", [s, i64(g, [1, 8, 8, 8])])
    analysis = check_invariants(g.model(g.head(g.conv(back, 8, 4), 4), dynamic_batch=False))
    assert any("spread over axes" in r for r in reasons(analysis))


# --- slices with steps, gathers, expand, tile ---------------------------------------------------
def test_focus_spatial_steps_pass_channels():
    """YOLOv5 Focus: four strided spatial slices concatenated on channels."""
    g = G()
    a = g.cbr("x", 3, 4)
    parts = []
    for dy, dx in [(0, 0), (1, 0), (0, 1), (1, 1)]:
        parts.append(g.op("Slice", [a, i64(g, [dy, dx]), i64(g, [2**62, 2**62]), i64(g, [2, 3]), i64(g, [2, 2])]))
    y = g.op("Concat", parts, axis=1)
    analysis = check_invariants(g.model(g.head(g.conv(y, 16, 5), 5)), seeds=range(6))
    assert 4 in [grp.size for grp in analysis.prunable_groups]


@pytest.mark.parametrize("start,end,step", [(0, 2**62, 2), (1, 2**62, 2), (1, 8, 3), (0, 9, 4)])
def test_slice_with_step_on_channels(start, end, step):
    g = G()
    a = g.cbr("x", 3, 10)
    s = g.op("Slice", [a, i64(g, [start]), i64(g, [end]), i64(g, [1]), i64(g, [step])])
    n = len(range(*slice(start, end, step).indices(10)))
    y = g.op("Add", [g.conv(s, n, 4), g.conv(a, 10, 4)])
    check_invariants(g.model(g.head(y, 4)), seeds=range(8))


def test_slice_reversing_channels_blocks():
    g = G()
    a = g.conv("x", 3, 6)
    s = g.op("Slice", [a, i64(g, [-1]), i64(g, [-(2**62)]), i64(g, [1]), i64(g, [-1])])
    analysis = check_invariants(g.model(g.head(g.conv(g.conv(s, 6, 5), 5, 4), 4)))
    assert any("reverse order" in r for r in reasons(analysis))


def test_gather_channels_with_constant_indices():
    g = G()
    a = g.cbr("x", 3, 6)
    picked = g.op("Gather", [a, i64(g, [5, 0, 2, 2, 1])], axis=1)  # a permutation with a repeat
    y = g.op("Add", [g.conv(picked, 5, 4), g.conv(a, 6, 4)])
    check_invariants(g.model(g.head(y, 4)), seeds=range(8))


def test_expand_and_tile_of_per_channel_constants():
    g = G()
    a = g.cbr("x", 3, 6)
    scale = g.op("Expand", [g.const(np.random.default_rng(0).random((1, 6, 1, 1)).astype(np.float32)), i64(g, [1, 6, 8, 8])])
    bias = g.op("Tile", [g.const(np.random.default_rng(1).random((1, 6, 1, 1)).astype(np.float32)), i64(g, [1, 1, 8, 8])])
    y = g.op("Add", [g.op("Mul", [a, scale]), bias])
    check_invariants(g.model(g.head(g.conv(y, 6, 4), 4), dynamic_batch=False), seeds=range(6))


def test_tile_on_channels_and_expand_of_features():
    g = G()
    a = g.cbr("x", 3, 4)
    t = g.op("Tile", [a, i64(g, [1, 2, 1, 1])])  # channel j*4 + i is channel i
    e = g.op("Expand", [g.op("GlobalAveragePool", [t]), i64(g, [1, 8, 8, 8])])
    check_invariants(g.model(g.head(g.conv(g.op("Mul", [t, e]), 8, 5), 5), dynamic_batch=False), seeds=range(6))


def test_unsqueezed_bias_is_sliced():
    """Exporters that write a bias [C] as Unsqueeze(bias) -> [1, C, 1, 1] before an Add."""
    g = G()
    a = g.conv("x", 3, 6, bias=False)
    bias = g.op("Unsqueeze", [g.w(6), i64(g, [0, 2, 3])])
    check_invariants(g.model(g.head(g.conv(g.op("Add", [a, bias]), 6, 4), 4)), seeds=range(6))


# --- normalisation ------------------------------------------------------------------------------
def test_convnext_block_layernorm_over_channels_is_reported():
    """Transpose -> LayerNorm(channels) -> MatMul -> Gelu -> MatMul -> Transpose: the LayerNorm pins
    the residual stream; the MLP's hidden channels stay prunable."""
    g = G()
    a = g.conv("x", 3, 8)
    dw = g.conv(a, 8, 8, k=7, group=8)
    t = g.op("Transpose", [dw], perm=[0, 2, 3, 1])
    ln = g.op("LayerNormalization", [t, g.w(8), g.w(8)], axis=-1)
    h = g.op("Gelu", [g.op("Add", [g.op("MatMul", [ln, g.w(8, 32)]), g.w(32)])]) if g.opset >= 20 else \
        g.op("Relu", [g.op("Add", [g.op("MatMul", [ln, g.w(8, 32)]), g.w(32)])])
    m = g.op("Add", [g.op("MatMul", [h, g.w(32, 8)]), g.w(8)])
    y = g.op("Add", [g.op("Transpose", [m], perm=[0, 3, 1, 2]), a])
    analysis = check_invariants(g.model(g.head(y, 8)), seeds=range(6))
    assert any("LayerNormalization" in r and "normalises over the channel axis" in r for r in reasons(analysis))
    assert 32 in [grp.size for grp in analysis.prunable_groups]


def test_layernorm_over_spatial_axis_passes_channels():
    g = G()
    a = g.cbr("x", 3, 6)
    ln = g.op("LayerNormalization", [a, g.w(8), g.w(8)], axis=-1)  # normalises over W only
    check_invariants(g.model(g.head(g.conv(ln, 6, 4), 4)))


@pytest.mark.parametrize("groups", [2, 6])
def test_group_normalization_prunes_whole_groups(groups):
    g = G(opset=21)
    a = g.cbr("x", 3, 6)
    gn = g.op("GroupNormalization", [a, g.w(6), g.w(6)], num_groups=groups)
    out = g.head(g.conv(g.op("Relu", [gn]), 6, 4), 4)
    # onnx's shape inference stops at GroupNormalization-21, so the output is declared here
    graph = helper.make_graph(g.nodes, "test", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", 5])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 8
    analysis = check_invariants(model, seeds=range(6))
    assert groups in [grp.size for grp in analysis.prunable_groups]



# --- channels-last transformer blocks (ViT [N, L, C], Swin [N, H, W, C]) ---------------------------
def gelu(g, h, kind):
    """GELU as exporters write it: one Gelu op (opset 20) or torch's Erf chain."""
    if kind == "Gelu":
        return g.op("Gelu", [h])
    s = g.op("Div", [h, g.const(np.array(1.4142135, dtype=np.float32))])
    e = g.op("Add", [g.op("Erf", [s]), g.const(np.array(1.0, dtype=np.float32))])
    return g.op("Mul", [g.op("Mul", [h, e]), g.const(np.array(0.5, dtype=np.float32))])


def linear(g, x, cin, cout, kind="MatMul"):
    """x @ W + b over the last axis (torch's Linear), as MatMul or as Einsum."""
    if kind == "Einsum":
        y = g.op("Einsum", [x, g.w(cin, cout)], equation="...c,cd->...d")
    else:
        y = g.op("MatMul", [x, g.w(cin, cout)])
    return g.op("Add", [y, g.w(cout)])


def mlp_block(g, x, c, act="erf", norm=True, first="MatMul"):
    """x + fc2(GELU(fc1(LayerNorm(x)))) with fc1: C -> 4C over the last (channel) axis."""
    h = g.op("LayerNormalization", [x, g.w(c), g.w(c)], axis=-1) if norm else x
    h = gelu(g, linear(g, h, c, 4 * c, first), act)
    return g.op("Add", [x, linear(g, h, 4 * c, c)])


def hidden_groups(analysis, c):
    """Prunable groups of 4C channels that the first MatMul produces and the second consumes."""
    out = []
    for grp in analysis.prunable_groups:
        roles = {analysis.dims[d].role for d in grp.dims}
        if grp.size == 4 * c and {"out", "in"} <= roles:
            out.append(grp)
    return out


@pytest.mark.parametrize("norm", [False, True], ids=["no-norm", "layernorm"])
@pytest.mark.parametrize("act", ["erf", "Gelu"])
def test_token_mlp_hidden_channels(norm, act):
    """[N, L, C] graph input -> (LayerNorm over C) -> MLP -> residual Add, twice: the channels
    are on the last axis; a LayerNorm's output carries none, and the MatMul after it produces
    its 4C hidden channels instead of reading the token axis as the channel axis."""
    g = G(opset=20 if act == "Gelu" else 17)
    c = 8
    x = mlp_block(g, mlp_block(g, "x", c, act, norm), c, act, norm)
    analysis = check_invariants(g.model(x, in_shape=(1, 5, c)), seeds=range(6))
    assert len(hidden_groups(analysis, c)) == 2, [(grp.size, grp.blocked) for grp in analysis.groups]


def test_token_mlp_with_einsum_after_layernorm():
    g = G()
    c = 6
    x = mlp_block(g, mlp_block(g, "x", c, first="Einsum"), c, first="Einsum")
    analysis = check_invariants(g.model(x, in_shape=(1, 4, c)), seeds=range(6))
    assert len(hidden_groups(analysis, c)) == 2


def vit_stream(g, c, patch=2):
    """Conv patch embedding -> Reshape [N, C, L] -> Transpose [N, L, C]: channels on axis 2."""
    p = g.conv("x", 3, c, k=patch, stride=patch)
    p = g.op("Reshape", [p, i64(g, [0, c, -1])])
    return g.op("Transpose", [p], perm=[0, 2, 1])


def test_vit_encoder_mlp_hidden_channels():
    """ViT: the residual stream (patch embedding's channels) is pinned by the LayerNorms over
    it, with the LayerNorm named; the MLP hidden channels of every block are prunable."""
    g = G()
    c = 8
    x = vit_stream(g, c)
    for _ in range(2):
        x = mlp_block(g, x, c)
    head = g.op("MatMul", [g.op("ReduceMean", [x], axes=[1], keepdims=0), g.w(c, 5)])
    analysis = check_invariants(g.model(head), seeds=range(6))
    assert len(hidden_groups(analysis, c)) == 2
    stream = next(grp for grp in analysis.groups if grp.size == c and any(analysis.dims[d].role == "out" and
                  analysis.dims[d].tensor.startswith("w") and len(analysis.model.tensors[analysis.dims[d].tensor].shape) == 4
                  for d in grp.dims))
    assert any("LayerNormalization" in r and "normalises over the channel axis" in r for r in stream.blocked)


@pytest.mark.parametrize("patch_norm", [False, True], ids=["plain", "patch-norm"])
def test_swin_style_channels_last_blocks(patch_norm):
    """Swin: Conv -> Transpose [N, H, W, C] -> LayerNorm (patch norm) -> blocks of
    LayerNorm -> MatMul (attention stand-in) -> Add and LayerNorm -> MLP -> Add, a head over
    the mean of H, W. The LayerNorm after the patch norm reads a tensor without channels: it
    passes none on (it used to define them on axis 1, H, and the MLP then found no channels)."""
    g = G(seed=5)
    c = 8
    x = g.op("Transpose", [g.conv("x", 3, c, k=2, stride=2)], perm=[0, 2, 3, 1])
    if patch_norm:
        x = g.op("LayerNormalization", [x, g.w(c), g.w(c)], axis=-1)
    for _ in range(2):
        attn = linear(g, g.op("LayerNormalization", [x, g.w(c), g.w(c)], axis=-1), c, c)
        x = mlp_block(g, g.op("Add", [x, attn]), c)
    head = g.op("MatMul", [g.op("ReduceMean", [x], axes=[1, 2], keepdims=0), g.w(c, 5)])
    analysis = check_invariants(g.model(head), seeds=range(6))
    assert len(hidden_groups(analysis, c)) == 2, [(grp.size, grp.blocked) for grp in analysis.groups]
    assert any("LayerNormalization" in r and "normalises over the channel axis" in r for r in reasons(analysis))

# --- Einsum ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("equation,wshape", [("bchw,oc->bohw", (5, 6)), ("nchw,co->nohw", (6, 5)),
                                             ("...chw,oc->...ohw", (5, 6)), ("bchw,c->bchw", (6,))])
def test_einsum_with_constant_weight(equation, wshape):
    g = G()
    a = g.cbr("x", 3, 6)
    e = g.op("Einsum", [a, g.w(*wshape)], equation=equation)
    cout = 6 if len(wshape) == 1 else 5
    analysis = check_invariants(g.model(g.head(g.conv(e, cout, 4), 4)), seeds=range(6))
    assert 6 in [grp.size for grp in analysis.prunable_groups]


def test_einsum_summing_channels_blocks():
    g = G()
    a = g.conv("x", 3, 6)
    e = g.op("Einsum", [a], equation="bchw->bhw")
    u = g.op("Unsqueeze", [e, i64(g, [1])])
    analysis = check_invariants(g.model(g.head(g.conv(g.conv(u, 1, 5), 5, 4), 4)))
    assert any("sums over the channel axis" in r for r in reasons(analysis))


# --- QDQ -----------------------------------------------------------------------------------------
def check_qdq(proto, seeds=range(4)):
    """check_invariants with the quantization-aware oracle."""
    model = load_model(proto)
    analysis = analyse(model)
    assert analysis.prunable_groups, reasons(analysis)
    cost = CostModel(analysis)
    feeds = random_inputs(model.proto, model.input_shapes, seed=123)
    for a, b in zip(run(model.proto, feeds), run(rewrite(analysis, analysis.full_keep()), feeds)):
        np.testing.assert_array_equal(a, b)
    for seed in seeds:
        keep = random_keep(analysis, np.random.default_rng(seed))
        pruned = rewrite(analysis, keep)
        verify(model.proto, pruned, model.input_shapes)
        for a, b in zip(run(masked_model(analysis, keep), feeds), run(pruned, feeds)):
            assert_equivalent(a, b)
        assert measured_cost(pruned, model.input_shapes) == cost.evaluate(keep)
    return analysis


def qdq_conv(g, x, cin, cout, per_channel=True, zero_point=True):
    """Conv whose weight is DequantizeLinear(int8 W, scale[Cout], zero_point[Cout], axis=0)."""
    rng = g.rng
    q = g.const(rng.integers(-100, 100, size=(cout, cin, 3, 3)).astype(np.int8), "wq")
    n = cout if per_channel else 1
    scale = g.const((rng.random(n) * 0.01 + 0.001).astype(np.float32).reshape(n if per_channel else ()), "s")
    inputs = [q, scale]
    if zero_point:
        inputs.append(g.const(rng.integers(-5, 5, size=n).astype(np.int8).reshape(n if per_channel else ()), "zp"))
    w = g.op("DequantizeLinear", inputs, axis=0)
    return g.op("Conv", [x, w, g.w(cout)], kernel_shape=[3, 3], pads=[1] * 4)


def qdq_act(g, x, c=None):
    """A QuantizeLinear -> DequantizeLinear pair on a feature map (per tensor, or per channel)."""
    shape = (c,) if c else ()
    scale = g.const(np.full(shape, 0.05, dtype=np.float32))
    zp = g.const(np.zeros(shape, dtype=np.uint8) + 128)
    return g.op("DequantizeLinear", [g.op("QuantizeLinear", [x, scale, zp], axis=1), scale, zp], axis=1)


@pytest.mark.parametrize("per_channel,zero_point", [(True, True), (True, False), (False, True)])
def test_qdq_conv_weights(per_channel, zero_point):
    g = G()
    a = g.op("Relu", [qdq_conv(g, qdq_act(g, "x"), 3, 6, per_channel, zero_point)])
    b = g.op("Relu", [qdq_conv(g, qdq_act(g, a), 6, 8, per_channel, zero_point)])
    analysis = check_qdq(g.model(g.head(qdq_act(g, b), 8)), seeds=range(6))
    assert sorted(grp.size for grp in analysis.prunable_groups) == [6, 8]


def test_qdq_per_channel_activation_scales():
    g = G()
    a = qdq_act(g, g.op("Relu", [g.conv("x", 3, 6)]), c=6)
    check_qdq(g.model(g.head(g.conv(a, 6, 4), 4)), seeds=range(6))


def test_onnxruntime_quantize_static_graph(tmp_path):
    """A small float CNN quantized by onnxruntime (QDQ, per-channel weights) prunes like the float one."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    g = G(opset=17)
    a = g.cbr("x", 3, 8)
    b = g.cbr(a, 8, 8)
    y = g.op("Relu", [g.op("Add", [b, a])])
    float_model = g.model(g.head(g.cbr(y, 8, 12), 12), dynamic_batch=False)
    src = tmp_path / "float.onnx"
    onnx.save(float_model, str(src))

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    dst = tmp_path / "qdq.onnx"
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    quantized = onnx.load(str(dst))
    assert any(n.op_type == "DequantizeLinear" for n in quantized.graph.node)
    analysis = check_qdq(quantized, seeds=range(4))
    assert len(analysis.prunable_groups) >= 2


def _qdq_classifier():
    g = G()
    a = g.op("Relu", [qdq_conv(g, qdq_act(g, "x"), 3, 6)])
    b = g.op("Relu", [qdq_conv(g, qdq_act(g, a), 6, 8)])
    return g.model(g.head(qdq_act(g, b), 8))


def test_qdq_masked_evaluation_scores_and_reconstruction():
    """Integer weights behind DequantizeLinear: the sensitivity session masks removed channels
    with the zero point (so it computes what the pruned model computes), magnitude criteria
    read dequantised values, and reconstruction leaves the integer weights alone."""
    from onnxprune.scoring.weights import score_groups
    from onnxprune.reconstruct import find_consumers
    from onnxprune.allocate.sensitivity import MaskedEvaluator

    analysis = analyse(load_model(_qdq_classifier()))
    model = analysis.model
    feeds = random_inputs(model.proto, model.input_shapes, seed=5)
    ev = MaskedEvaluator(analysis, [feeds])
    for seed in range(4):
        keep = random_keep(analysis, np.random.default_rng(seed))
        want = run(rewrite(analysis, keep), feeds)[0]
        assert_equivalent(want, ev.outputs(keep)[0])
    dq = model.dequantizers
    assert set(dq) == {t for t in dq if np.asarray(model.tensors[t].values).dtype == np.int8} and len(dq) == 2
    for gid, scores in score_groups(analysis, "l1").items():
        group = analysis.groups[gid]
        d = next(analysis.dims[i] for i in group.dims if analysis.dims[i].tensor in dq and analysis.dims[i].axis == 0)
        q = np.asarray(model.tensors[d.tensor].values)
        w = dq[d.tensor].dequantize(q)
        l1 = np.abs(w).reshape(len(w), -1).sum(1)
        assert np.argsort(scores).tolist() == np.argsort(l1 / l1.max()).tolist() or np.corrcoef(scores, l1)[0, 1] > 0.99
    assert all(np.asarray(model.tensors[c.weight].values).dtype.kind == "f" for c in find_consumers(analysis))
