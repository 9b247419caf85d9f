"""Analysis stage. Fuzzing in CI (invariants 1-4 on random graphs): random CNNs (tests/fuzz.py) through the invariants, compress and the report,
plus the minimal cases of what the fuzzer found.

The long campaign is ``python tests/fuzz.py --cases 2000 --jobs 2`` (docs/ROBUSTNESS.md).
"""

import functools

import numpy as np
import pytest

from fuzz import BLOCKS, HEADS, random_cnn, run_case
from graphs import G, check_invariants
from onnxprune import Settings, Target, TargetError, compress

CI_SEEDS = range(60)



@functools.cache
def outcome(seed: int):
    return run_case(seed, render_html=seed % 20 == 0)


@pytest.mark.parametrize("seed", CI_SEEDS)
def test_random_cnn(seed):
    o = outcome(seed)
    assert o.status != "fail", f"seed {seed}: {o.detail}\n  blocks: {' '.join(o.blocks)}\n  rerun: python tests/fuzz.py --cases 1 --seed {seed}"


def test_ci_seeds_cover_every_block_head_and_outcome():
    """The 60 CI graphs use every block and head, and most meet their target (the refusals are
    tested on purpose below: random targets in [0.1, 0.6] are usually reachable)."""
    used = [random_cnn(s)[1] for s in CI_SEEDS]
    assert {b for blocks in used for b in blocks[1:-1]} == set(BLOCKS)
    assert {blocks[-1] for blocks in used} == set(HEADS)
    statuses = [outcome(s).status for s in CI_SEEDS]
    assert statuses.count("ok") >= len(statuses) // 2, statuses


def test_generator_is_deterministic():
    a, blocks_a = random_cnn(7)
    b, blocks_b = random_cnn(7)
    assert a.SerializeToString() == b.SerializeToString() and blocks_a == blocks_b
    assert random_cnn(8)[0].SerializeToString() != a.SerializeToString()


@pytest.mark.parametrize("seed", [1, 3, 5])
def test_unreachable_target_is_a_one_line_target_error(seed):
    proto, _ = random_cnn(seed)
    with pytest.raises(TargetError) as exc:
        compress(proto, Settings(target=Target("flops", 0.99)))
    message = str(exc.value)
    assert "\n" not in message and ("cannot remove 99%" in message or "no prunable channel group" in message)


# --- minimal cases of fuzzer findings ------------------------------------------------------------
def test_slice_with_negative_start_on_channels():
    """conv(3->3) -> x[:, -2:] -> conv(2->4): removing one of the two sliced channels must leave a
    Slice that returns one channel. Found by the fuzzer: 14 of 2,000 graphs (docs/ROBUSTNESS.md)."""
    g = G()
    a = g.conv("x", 3, 3)
    i64 = lambda v: g.const(np.array(v, dtype=np.int64))  # noqa: E731
    last_two = g.op("Slice", [a, i64([-2]), i64([2**62]), i64([1])])
    check_invariants(g.model(g.conv(last_two, 2, 4, k=1)), seeds=range(8))

