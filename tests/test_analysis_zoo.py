"""Analysis stage, integration (invariants 1-4 on real exports): torchvision models exported by torch.onnx, compressed at --flops 0.3.

Every model must meet the target with a valid, running model whose measured cost equals the
prediction, and the masking-equivalence oracle must hold on one random plan of each.
"""

import numpy as np
import pytest

from graphs import masked, random_keep

from onnxprune.analysis.oracle import assert_equivalent
from onnxprune import Settings, Target, compress, measured_cost
from onnxprune.rewrite import random_inputs, rewrite
from onnxprune.runtime.session import run
from zoo import export

ZOO = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "densenet121",
       "googlenet", "shufflenet_v2_x1_0", "regnet_y_400mf"]


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo")


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_zoo_compress_at_30_percent_flops(name, zoo_dir):
    path = export(name, zoo_dir)
    result = compress(path, Settings(target=Target("flops", 0.3)))  # verifies checker + onnxruntime run
    assert 0.3 <= result.summary["flops_reduction"] < 0.36
    shapes = result.analysis.model.input_shapes
    assert measured_cost(result.model, shapes) == result.allocation.cost

    analysis = result.analysis
    keep = random_keep(analysis, np.random.default_rng(1))
    feeds = random_inputs(analysis.model.proto, shapes, seed=2)
    expected = run(masked(analysis, keep), feeds)[0]
    got = run(rewrite(analysis, keep), feeds)[0]
    assert_equivalent(expected, got)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_zoo_dynamo_exporter(name, zoo_dir):
    """The dynamo exporter folds BN into Conv and keeps PyTorch names; same guarantees."""
    path = export(name, zoo_dir, size=96, dynamo=True)
    result = compress(path, Settings(target=Target("flops", 0.3)))
    assert result.summary["flops_reduction"] >= 0.3
    assert measured_cost(result.model, result.analysis.model.input_shapes) == result.allocation.cost
