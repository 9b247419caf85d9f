"""The block allocator (onnxprune/allocate/blocks.py): against brute force on small graphs, alignment on
concat inputs and grouped convolutions, and exact FLOPs targets on the bundled models."""

import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest

from graphs import G
from onnxprune import Limits, Settings, Target, analyse, compress, load_model, measured_cost
from onnxprune.allocate.blocks import (TOLERANCE, allocate_blocks, group_block, group_blocks, kept_steps, macs_of,
                                       score_loss)
from onnxprune.allocate.search import ranked
from onnxprune.cost import CostModel
from onnxprune.errors import TargetError
from onnxprune.rewrite import rewrite

ROOT = Path(__file__).resolve().parents[1]
GAP_WORST = 0.5  # stated gap: loss at most 1.5x the brute-force optimum in the band (usually equal)


def residual_concat_net():
    """Stem, a residual pair, two branches concatenated, a 1x1 mixer, a head: 5 prunable groups."""
    g = G(3)
    a = g.cbr("x", 3, 16)
    b = g.op("Relu", [g.op("Add", [g.bn(g.conv(g.cbr(a, 16, 12), 12, 16), 16), a])])
    c1 = g.cbr(b, 16, 12)
    c2 = g.cbr(b, 16, 8, k=1)
    cat = g.op("Concat", [c1, c2], axis=1)
    d = g.cbr(cat, 20, 16, k=1)
    return g.model(g.head(d, 16), in_shape=(1, 3, 8, 8))


def brute_force(analysis, cost_fn, order, loss, target, limits, align, tol=TOLERANCE):
    """Minimum loss over every choice of blocks with the reduction in [t, t + tol]; where none lands
    there, the smallest reduction >= t (the problem allocate_blocks solves)."""
    blocks = group_blocks(analysis, align, loss)
    steps = {g: kept_steps(analysis.groups[g].size, blocks[g], limits)[: len(loss[g])] for g in loss}
    gids = list(steps)
    base = cost_fn(analysis.full_keep())
    in_band, above = [], []
    for combo in itertools.product(*(range(len(steps[g])) for g in gids)):
        kept = {g: order[g][: steps[g][b]] for g, b in zip(gids, combo)}
        red = 1 - cost_fn(analysis.keep_vector(kept)) / base
        value = sum(loss[g][b] for g, b in zip(gids, combo))
        if target - 1e-12 <= red <= target + tol:
            in_band.append(value)
        elif red > target:
            above.append((red, value))
    if in_band:
        return min(in_band), True
    return min(above)[1] if above else None, False


@pytest.mark.parametrize("align", [2, 4])
def test_block_search_against_brute_force(align):
    """24 random score sets x targets on a 5-group graph (2-8 steps per group): the search lands in
    the band whenever one exists, and its loss is the band's optimum in most cases and never far
    above it. Measured (160 cases per alignment, /tmp/gap3.py in the report): blocks of 2: 94%
    optimal, worst 1.16x; blocks of 4 (2-4 steps per group, coarse): 86% optimal, 90th
    percentile 1.08x, worst 1.42x. Stated gap: at most GAP_WORST above the optimum."""
    proto = residual_concat_net()
    analysis = analyse(load_model(proto))
    cost = CostModel(analysis)
    limits = Limits(max_ratio=0.8)
    ratios = []
    for seed in range(8):
        for fraction in (0.25, 0.45, 0.6):
            rng = np.random.default_rng(seed)
            scores = {g.id: rng.gamma(2.0, 1.0, g.size) for g in analysis.prunable_groups}
            order = ranked(scores)
            loss = score_loss(scores, order, group_blocks(analysis, align, scores), limits)
            optimum, banded = brute_force(analysis, macs_of(cost), order, loss, fraction, limits, align)
            result = allocate_blocks(analysis, macs_of(cost), order, loss, Target("flops", fraction), limits, align,
                                     cost_model=cost, cost_kind="flops")
            assert result.achieved >= fraction
            if banded:  # else no choice of blocks lands in [t, t + 0.01]: only >= t is asked
                assert result.achieved <= fraction + TOLERANCE + 1e-12, (seed, fraction, result.achieved)
                ratios.append(result.details["loss"] / optimum)
            if seed == 0:
                assert measured_cost(rewrite(analysis, result.keep), analysis.model.input_shapes) == result.cost
    ratios = np.array(ratios)
    assert len(ratios) >= 15  # most cases have a choice in the band
    assert ratios.min() >= 1 - 1e-9  # nothing beats the brute-force optimum (the oracle is right)
    assert ratios.max() <= 1 + GAP_WORST
    assert np.mean(ratios <= 1 + 1e-9) >= 0.75, ratios


def test_kept_steps_remainder_block_first_and_limits():
    assert kept_steps(20, 8, Limits()) == [20, 16, 8]  # remainder of 4 first, then whole blocks
    assert kept_steps(64, 16, Limits(max_ratio=0.5)) == [64, 48, 32]
    assert kept_steps(12, 16, Limits()) == [12]  # smaller than a block: not pruned
    assert kept_steps(32, 16, Limits(min_channels=20)) == [32]  # min_channels rounds up to a block
    assert kept_steps(10, 1, Limits(max_ratio=0.5)) == [10, 9, 8, 7, 6, 5]


def test_score_loss_is_cumulative_normalised_score_of_removed_channels():
    scores = {0: np.array([4.0, 1.0, 3.0, 2.0, 5.0, 6.0, 0.5, 2.5, 1.5, 4.5])}
    order = ranked(scores)
    loss = score_loss(scores, order, 4, Limits(max_ratio=0.8))
    norm = scores[0] / scores[0].mean()
    low = np.sort(norm)
    # steps 10 -> 8 (remainder 2) -> 4 -> (2 would be below max_ratio's floor of 2? floor 2 -> rounded to 4)
    np.testing.assert_allclose(loss[0], [0.0, low[:2].sum(), low[:6].sum()])


def _conv_weight_counts(proto):
    inits = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Conv":
            w = inits[node.input[1]]
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            yield node, list(w.dims), group


def test_alignment_holds_on_concat_inputs_and_grouped_convs():
    g = G(5)
    a = g.cbr("x", 3, 40)
    c1 = g.cbr(a, 40, 24)
    c2 = g.cbr(a, 40, 40, k=1)
    cat = g.op("Concat", [c1, c2], axis=1)  # 24 + 40 channels, each input its own group
    grouped = g.cbr(cat, 64, 64, group=2)  # 32 in / 32 out channels per conv group
    dw = g.cbr(grouped, 64, 64, group=64)
    proto = g.model(g.head(g.cbr(dw, 64, 32, k=1), 32), in_shape=(1, 3, 8, 8))
    analysis = analyse(load_model(proto))
    cost = CostModel(analysis)
    scores = {gr.id: np.random.default_rng(gr.id).random(gr.size) for gr in analysis.prunable_groups}
    order = ranked(scores)
    align = 8
    for fraction in (0.3, 0.5):
        loss = score_loss(scores, order, group_blocks(analysis, align, scores), Limits())
        result = allocate_blocks(analysis, macs_of(cost), order, loss, Target("flops", fraction), Limits(), align,
                                 cost_model=cost, cost_kind="flops")
        assert result.achieved >= fraction  # 8 groups of few blocks: the band is not always reachable here
        pruned = rewrite(analysis, result.keep)
        onnx.checker.check_model(pruned, full_check=True)
        shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
                  for vi in onnx.shape_inference.infer_shapes(pruned).graph.value_info}
        concat = next(n for n in pruned.graph.node if n.op_type == "Concat")
        for name in concat.input:  # every concat input aligned, so the concat is too
            assert shapes[name][1] % align == 0, (name, shapes[name])
        seen_grouped = False
        for node, dims, group in _conv_weight_counts(pruned):
            if dims[1] == 3:
                continue  # the stem reads the image
            depthwise = group == dims[0] and dims[1] == 1
            per_group_out = dims[0] if depthwise else dims[0] // group
            assert per_group_out % align == 0, (node.name, dims, group)
            if dims[1] > 1:  # dense or grouped: input channels per conv group
                assert dims[1] % align == 0, (node.name, dims, group)
            seen_grouped |= 1 < group < dims[0]
        assert seen_grouped


def test_group_block_divides_by_repeated_channels():
    """A GroupNormalization of 8 groups over 32 channels ties runs of 4 adjacent channels into one:
    2 tied channels make the 8 activation channels of a block."""
    from onnx import TensorProto, helper

    g = G(2, opset=21)
    a = g.conv("x", 3, 32)
    n = g.op("Relu", [g.op("GroupNormalization", [a, g.w(32), g.w(32)], num_groups=8)])
    out = g.head(g.conv(n, 32, 16), 16)
    graph = helper.make_graph(g.nodes, "test", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", 5])], g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    proto.ir_version = 8
    analysis = analyse(load_model(proto))
    norm = next(gr for gr in analysis.prunable_groups if gr.size == 8)
    assert group_block(analysis, norm.id, 8) == 2


@pytest.mark.parametrize("name", ["resnet20_fmnist", "vgg11_fmnist"])
@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_bundled_flops_targets_are_met_tightly(name, fraction):
    """Default alignment (the probed NCHWc block, stepping down only where it cannot reach):
    the achieved reduction lies in [target, target + 0.015] (it was 0.606/0.610 at 0.5 before)."""
    from onnxprune.runtime.latency import detect_alignment

    result = compress(ROOT / "models" / f"{name}.onnx",
                      Settings(target=Target("flops", fraction), limits=Limits(round_to=detect_alignment()),
                               round_to_fallback=True))
    assert fraction <= result.summary["flops_reduction"] <= fraction + 0.015
    assert result.summary["round_to"] >= 4


def test_unreachable_block_target_says_how_far_it_gets():
    proto = residual_concat_net()
    analysis = analyse(load_model(proto))
    cost = CostModel(analysis)
    scores = {gr.id: np.ones(gr.size) for gr in analysis.prunable_groups}
    order = ranked(scores)
    loss = score_loss(scores, order, group_blocks(analysis, 8, scores), Limits())
    with pytest.raises(TargetError, match=r"cannot remove 90.0% of the MACs: at most \d+\.\d% is reachable"):
        allocate_blocks(analysis, macs_of(cost), order, loss, Target("flops", 0.9), Limits(), 8)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
                                  "densenet121", "googlenet", "shufflenet_v2_x1_0", "regnet_y_400mf"])
def test_zoo_flops_targets_are_met_tightly(name, tmp_path_factory):
    """The torchvision zoo of test_zoo.py at 0.3/0.5/0.7 with the default alignment: within 1.5 points."""
    from zoo import export

    from onnxprune.runtime.latency import detect_alignment

    directory = tmp_path_factory.getbasetemp() / "zoo_blocks"
    directory.mkdir(exist_ok=True)
    path = export(name, directory)
    for fraction in (0.3, 0.5, 0.7):
        result = compress(path, Settings(target=Target("flops", fraction), limits=Limits(round_to=detect_alignment()),
                                         round_to_fallback=True, verify=False))
        assert fraction <= result.summary["flops_reduction"] <= fraction + 0.015, (fraction, result.summary)
        assert measured_cost(result.model, result.analysis.model.input_shapes) == result.allocation.cost


def test_uniform_sensitivity_and_global_round_through_the_block_search():
    """With round_to > 1 each allocation keeps its own continuous solution (uniform ratio,
    sensitivity threshold, global ranking) and rounds it to aligned blocks by the same search."""
    from onnxprune.allocate.from_scores import allocate_global, allocate_sensitivity
    from onnxprune.allocate.sensitivity import RATIOS, Sensitivity
    from onnxprune.allocate.uniform import allocate_uniform
    from onnxprune.plan import group_key

    proto = residual_concat_net()
    analysis = analyse(load_model(proto))
    cost = CostModel(analysis)
    rng = np.random.default_rng(4)
    scores = {g.id: rng.random(g.size) for g in analysis.prunable_groups}
    curves = {gid: list(np.cumsum(rng.random(len(RATIOS))) * (1 + gid)) for gid in scores}
    sens = Sensitivity(analysis.model.fingerprint, list(RATIOS), "kl", "l1", curves,
                       {gid: group_key(analysis, gid) for gid in scores})
    limits = Limits(round_to=4)
    target = Target("flops", 0.4)
    for name, alloc in [("uniform", allocate_uniform(analysis, cost, scores, target, limits)),
                        ("sensitivity", allocate_sensitivity(analysis, cost, scores, sens, target, limits)),
                        ("global", allocate_global(analysis, cost, scores, target, limits))]:
        assert alloc.strategy == name
        assert alloc.achieved >= 0.4 and alloc.cost.reduction(alloc.base, "flops") >= 0.4
        for gid, kept in alloc.kept.items():
            size = analysis.groups[gid].size
            assert len(kept) == size or len(kept) % 4 == 0, (name, gid, len(kept), size)
        if name != "global":
            assert "rounding" in alloc.details
    exact = allocate_uniform(analysis, cost, scores, target, Limits(round_to=1))
    assert exact.strategy == "uniform" and "rounding" not in exact.details  # --round-to 1: exact counts as before
