"""Random valid CNN graphs (seeded) and the fuzz campaign that runs them through onnxprune.

``random_cnn(seed)`` stacks 2-9 random blocks on a 1x3xHxW input and ends with a random head.
The blocks mix every dependency rule the analysis knows (conv/BN/activation chains, residual
adds, concat, split, slice, depthwise, squeeze-excitation, pooling, resize, pad, reshape round
trips, transpose->matmul, conv-transpose, per-channel constants) with the patterns that must
block (grouped conv, channel shuffle, softmax over channels, an op without a rule). Each case is
then checked by ``run_case``:

1. ``check_invariants`` (masking equivalence, no-op plan, checker/onnxruntime, cost) on a random plan;
2. ``compress`` at a random FLOPs/params target in [0.1, 0.6]: it meets the target with a model
   whose measured cost is the predicted one and which ``apply_plan`` reproduces byte for byte,
   or it raises ``TargetError`` with a one-line message. Any other exception is a finding;
3. the report of the result renders as text and JSON.

    python tests/fuzz.py --cases 2000 --seed 0 --jobs 2 --save /tmp/fuzz-failures
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))

from graphs import G, check_invariants  # noqa: E402

ACTIVATIONS = [("Relu", {}), ("LeakyRelu", {"alpha": 0.1}), ("Sigmoid", {}), ("HardSwish", {}), ("Tanh", {}),
               ("Identity", {}), ("Clip", None), ("PRelu", None)]


@dataclass
class Fuzz:
    """The graph being built: the builder, the rng, and the (C, H, W) of every 4-D tensor."""

    g: G
    rng: np.random.Generator
    shape: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    blocks: list[str] = field(default_factory=list)
    static_batch: bool = False

    def channels(self) -> int:
        return int(self.rng.integers(2, 11))

    def i64(self, values) -> str:
        return self.g.const(np.array(values, dtype=np.int64))

    def conv(self, x: str, cout: int, k: int | None = None, stride: int = 1, group: int = 1) -> str:
        c, h, w = self.shape[x]
        k = k or int(self.rng.choice([1, 3]))
        y = self.g.conv(x, c, cout, k=k, group=group, stride=stride, bias=bool(self.rng.random() < 0.7))
        self.shape[y] = (cout, (h - 1) // stride + 1, (w - 1) // stride + 1)
        return y

    def keep(self, y: str, like: str, c: int | None = None) -> str:
        """``y`` has ``like``'s spatial size (and channels ``c`` if given)."""
        c0, h, w = self.shape[like]
        self.shape[y] = (c0 if c is None else c, h, w)
        return y

    def act(self, x: str) -> str:
        op, attrs = ACTIVATIONS[int(self.rng.integers(len(ACTIVATIONS)))]
        if op == "HardSwish" and self.g.opset < 14:  # HardSwish exists from opset 14
            op, attrs = "HardSigmoid", {}
        c = self.shape[x][0]
        if op == "Clip":
            return self.keep(self.g.op("Clip", [x, self.g.const(np.float32(0)), self.g.const(np.float32(6))]), x)
        if op == "PRelu":
            return self.keep(self.g.op("PRelu", [x, self.g.w(c, 1, 1, scale=0.2)]), x)
        return self.keep(self.g.op(op, [x], **attrs), x)

    def cbr(self, x: str, cout: int, **kw) -> str:
        y = self.conv(x, cout, **kw)
        if self.rng.random() < 0.7:
            y = self.keep(self.g.bn(y, cout), y)
        return self.act(y) if self.rng.random() < 0.85 else y


# --- blocks: (fuzz, x) -> y, each keeps the graph valid ---------------------------------------------
def conv_block(f: Fuzz, x: str) -> str:
    stride = 2 if f.shape[x][1] >= 8 and f.rng.random() < 0.3 else 1
    return f.cbr(x, f.channels(), stride=stride)


def residual(f: Fuzz, x: str) -> str:
    c = f.shape[x][0]
    if f.rng.random() < 0.5:  # identity shortcut
        y = f.conv(f.cbr(x, f.channels()), c)
        return f.act(f.keep(f.g.op("Add", [f.keep(f.g.bn(y, c), y), x]), x))
    c2 = f.channels()  # projection shortcut
    y = f.conv(f.cbr(x, f.channels()), c2)
    return f.act(f.keep(f.g.op("Add", [y, f.conv(x, c2, k=1)]), y))


def concat(f: Fuzz, x: str) -> str:
    a = f.cbr(x, f.channels())
    b = x if f.rng.random() < 0.4 else f.conv(x, f.channels())
    c = f.shape[a][0] + f.shape[b][0]
    return f.keep(f.g.op("Concat", [a, b], axis=1), a, c)


def split(f: Fuzz, x: str) -> str:
    c = f.shape[x][0]
    if c < 2:
        return conv_block(f, x)
    s = int(f.rng.integers(1, c))
    if f.g.opset >= 18 and c % 2 == 0 and f.rng.random() < 0.5:
        parts = f.g.op("Split", [x], n_out=2, axis=1, num_outputs=2)
        sizes = [c // 2, c // 2]
    else:
        parts = f.g.op("Split", [x, f.i64([s, c - s])], n_out=2, axis=1)
        sizes = [s, c - s]
    for p, n in zip(parts, sizes):
        f.keep(p, x, n)
    cout = f.channels()
    a, b = f.conv(parts[0], cout), f.conv(parts[1], cout)
    if f.rng.random() < 0.5:
        return f.keep(f.g.op("Add", [a, b]), a)
    return f.keep(f.g.op("Concat", [a, b], axis=1), a, 2 * cout)


def slice_(f: Fuzz, x: str) -> str:
    c = f.shape[x][0]
    if c < 2:
        return conv_block(f, x)
    k = int(f.rng.integers(1, c))
    first = f.keep(f.g.op("Slice", [x, f.i64([0]), f.i64([k]), f.i64([1])]), x, k)
    rest = f.keep(f.g.op("Slice", [x, f.i64([k]), f.i64([2**62]), f.i64([1])]), x, c - k)
    cout = f.channels()
    a, b = f.conv(first, cout), f.conv(rest, cout)
    return f.keep(f.g.op("Add", [a, b]), a)


def depthwise(f: Fuzz, x: str) -> str:
    c = f.shape[x][0]
    m = int(f.rng.choice([1, 2]))
    y = f.conv(x, c * m, k=3, group=c)
    return f.act(y)


def squeeze_excitation(f: Fuzz, x: str) -> str:
    c, _, _ = f.shape[x]
    s = f.g.op("GlobalAveragePool", [x])
    f.shape[s] = (c, 1, 1)
    r = f.keep(f.g.op("Relu", [f.conv(s, max(1, c // 2), k=1)]), s, max(1, c // 2))
    gate = f.keep(f.g.op("Sigmoid", [f.conv(r, c, k=1)]), s, c)
    return f.keep(f.g.op("Mul", [x, gate]), x)


def pool(f: Fuzz, x: str) -> str:
    c, h, w = f.shape[x]
    if h < 4:
        return f.keep(f.g.op("AveragePool", [x], kernel_shape=[3, 3], pads=[1, 1, 1, 1]), x)
    op = str(f.rng.choice(["MaxPool", "AveragePool"]))
    y = f.g.op(op, [x], kernel_shape=[2, 2], strides=[2, 2])
    f.shape[y] = (c, h // 2, w // 2)
    return y


def resize(f: Fuzz, x: str) -> str:
    c, h, w = f.shape[x]
    if h > 8:
        return pool(f, x)
    if f.rng.random() < 0.5:
        y = f.g.op("Resize", [x, "", f.g.const(np.array([1, 1, 2, 2], dtype=np.float32))], mode="nearest")
    else:
        f.static_batch = True  # the sizes input fixes the batch
        y = f.g.op("Resize", [x, "", "", f.i64([1, c, 2 * h, 2 * w])], mode="nearest")
    f.shape[y] = (c, 2 * h, 2 * w)
    return y


def pad(f: Fuzz, x: str) -> str:
    c, h, w = f.shape[x]
    y = f.g.op("Pad", [x, f.i64([0, 0, 1, 1, 0, 0, 1, 1])])
    f.shape[y] = (c, h + 2, w + 2)
    # The Relu keeps onnxruntime (1.31) from fusing Pad -> Pad -> AveragePool into one pool whose
    # pads exceed its kernel, which it then refuses to load: an onnxruntime bug, not onnxprune's.
    return f.keep(f.g.op("Relu", [y]), y)


def transpose_matmul(f: Fuzz, x: str) -> str:
    c = f.shape[x][0]
    c2 = f.channels()
    t = f.g.op("Transpose", [x], perm=[0, 2, 3, 1])
    m = f.g.op("Add", [f.g.op("MatMul", [t, f.g.w(c, c2)]), f.g.w(c2)])
    return f.keep(f.g.op("Transpose", [f.g.op("Relu", [m])], perm=[0, 3, 1, 2]), x, c2)


def reshape_roundtrip(f: Fuzz, x: str) -> str:
    c, h, w = f.shape[x]
    r = f.g.op("Reshape", [x, f.i64([0, c, h * w])])
    return f.keep(f.g.op("Reshape", [f.g.op("Relu", [r]), f.i64([0, c, h, w])]), x)


def conv_transpose(f: Fuzz, x: str) -> str:
    c, h, w = f.shape[x]
    if h > 8:
        return conv_block(f, x)
    c2 = f.channels()
    y = f.g.op("ConvTranspose", [x, f.g.w(c, c2, 2, 2), f.g.w(c2)], kernel_shape=[2, 2], strides=[2, 2])
    f.shape[y] = (c2, 2 * h, 2 * w)
    return f.act(y)


def per_channel_const(f: Fuzz, x: str) -> str:
    c = f.shape[x][0]
    op = str(f.rng.choice(["Add", "Sub", "Mul", "Div"]))
    const = f.g.const((f.rng.random((c, 1, 1)) + 0.5).astype(np.float32))
    return f.keep(f.g.op(op, [x, const]), x)


def instance_norm(f: Fuzz, x: str) -> str:
    c = f.shape[x][0]
    return f.keep(f.g.op("InstanceNormalization", [x, f.g.w(c), f.g.w(c)]), x)


def spatial_mean_gate(f: Fuzz, x: str) -> str:
    """ReduceMean over H, W (keepdims) scales the features: an SE block without convs."""
    axes = [2, 3]
    if f.g.opset >= 18:
        m = f.g.op("ReduceMean", [x, f.i64(axes)], keepdims=1)
    else:
        m = f.g.op("ReduceMean", [x], axes=axes, keepdims=1)
    return f.keep(f.g.op("Mul", [x, f.g.op("Sigmoid", [m])]), x)


def long_skip(f: Fuzz, x: str) -> str:
    """Add ``x`` to an earlier tensor of the same shape (DenseNet/U-Net style reuse)."""
    same = [t for t, s in f.shape.items() if s == f.shape[x] and t != x]
    if not same:
        return residual(f, x)
    other = same[int(f.rng.integers(len(same)))]
    return f.keep(f.g.op("Add", [x, other]), x)


def self_concat(f: Fuzz, x: str) -> str:
    """Concat of a tensor with itself: each channel appears twice in the output."""
    c = f.shape[x][0]
    return f.keep(f.g.op("Concat", [x, x], axis=1), x, 2 * c)


def branch_op(f: Fuzz, x: str) -> str:
    """Two conv branches joined by a non-additive elementwise op."""
    cout = f.channels()
    a, b = f.conv(x, cout), f.conv(x, cout)
    op = str(f.rng.choice(["Sub", "Max", "Min", "Mul"]))
    return f.keep(f.g.op(op, [a, b]), a)


def shared_weights(f: Fuzz, x: str) -> str:
    """Two convs reading one weight initializer (on x and on a relu of x), summed."""
    c = f.shape[x][0]
    cout = f.channels()
    w = f.g.w(cout, c, 3, 3)
    a = f.g.op("Conv", [x, w], pads=[1] * 4, kernel_shape=[3, 3])
    b = f.g.op("Conv", [f.g.op("Relu", [x]), w], pads=[1] * 4, kernel_shape=[3, 3])
    return f.keep(f.g.op("Add", [a, b]), x, cout)


def negative_slice(f: Fuzz, x: str) -> str:
    """The last k channels by negative bounds, or every second channel (a step)."""
    c = f.shape[x][0]
    if c < 3:
        return conv_block(f, x)
    if f.rng.random() < 0.5:
        k = int(f.rng.integers(1, c))
        y = f.g.op("Slice", [x, f.i64([-k]), f.i64([2**62]), f.i64([1])])
        return f.keep(y, x, k)
    y = f.g.op("Slice", [x, f.i64([0]), f.i64([c]), f.i64([1]), f.i64([2])])
    return f.keep(y, x, (c + 1) // 2)


def split_three(f: Fuzz, x: str) -> str:
    """Split in three; one part is gated by a spatial mean of another, the third is dropped."""
    c = f.shape[x][0]
    if c < 3:
        return conv_block(f, x)
    a_n = int(f.rng.integers(1, c - 1))
    sizes = [a_n, 1, c - a_n - 1]
    parts = f.g.op("Split", [x, f.i64(sizes)], n_out=3, axis=1)
    for p, n in zip(parts, sizes):
        f.keep(p, x, n)
    gate = f.g.op("Sigmoid", [f.g.op("GlobalAveragePool", [parts[1]])])  # [1, 1, 1, 1] broadcasts
    return f.keep(f.g.op("Mul", [parts[0], gate]), x, a_n)


def concat_depthwise(f: Fuzz, x: str) -> str:
    return depthwise(f, concat(f, x))


# Patterns that must block some channels (with a reason), never crash.
def grouped_conv(f: Fuzz, x: str) -> str:
    c = f.shape[x][0]
    if c % 2:
        return conv_block(f, x)
    return f.conv(x, c, k=3, group=2)


def channel_shuffle(f: Fuzz, x: str) -> str:
    c, h, w = f.shape[x]
    if c % 2:
        return conv_block(f, x)
    r = f.g.op("Reshape", [x, f.i64([0, 2, c // 2, h, w])])
    t = f.g.op("Transpose", [r], perm=[0, 2, 1, 3, 4])
    return f.keep(f.g.op("Reshape", [t, f.i64([0, c, h, w])]), x)


def softmax(f: Fuzz, x: str) -> str:
    axis = int(f.rng.choice([1, 3]))  # over the channels (blocks) or over W (passes through)
    return f.keep(f.g.op("Softmax", [x], axis=axis), x)


def unknown_op(f: Fuzz, x: str) -> str:
    if f.rng.random() < 0.5:
        return f.keep(f.g.op("LRN", [x], size=3), x)
    c = f.shape[x][0]  # Gather of channels: no rule, so it blocks
    idx = np.sort(f.rng.choice(c, size=max(1, c // 2), replace=False)).astype(np.int64)
    return f.keep(f.g.op("Gather", [x, f.g.const(idx)], axis=1), x, len(idx))


BLOCKS = {
    "conv": (conv_block, 6), "residual": (residual, 4), "concat": (concat, 3), "split": (split, 3),
    "slice": (slice_, 2), "depthwise": (depthwise, 3), "se": (squeeze_excitation, 2), "pool": (pool, 2),
    "resize": (resize, 1), "pad": (pad, 1), "transpose_matmul": (transpose_matmul, 1),
    "reshape": (reshape_roundtrip, 1), "conv_transpose": (conv_transpose, 1), "const": (per_channel_const, 1),
    "instance_norm": (instance_norm, 1), "mean_gate": (spatial_mean_gate, 1), "long_skip": (long_skip, 2),
    "grouped_conv": (grouped_conv, 1), "shuffle": (channel_shuffle, 1), "softmax": (softmax, 1),
    "unknown_op": (unknown_op, 1), "self_concat": (self_concat, 1), "branch_op": (branch_op, 1),
    "shared_weights": (shared_weights, 1), "negative_slice": (negative_slice, 1), "split_three": (split_three, 1),
    "concat_depthwise": (concat_depthwise, 1),
}


# --- heads -----------------------------------------------------------------------------------------
def gap_gemm(f: Fuzz, x: str) -> str:
    return f.g.head(x, f.shape[x][0], classes=int(f.rng.integers(2, 7)))


def flatten_gemm(f: Fuzz, x: str) -> str:
    c, h, w = f.shape[x]
    if c * h * w > 1024:
        return gap_gemm(f, x)
    flat = f.g.op("Flatten", [x], axis=1)
    hidden = int(f.rng.integers(3, 9))
    y = f.g.op("Relu", [f.g.op("Gemm", [flat, f.g.w(hidden, c * h * w, scale=0.1), f.g.w(hidden)], transB=1)])
    return f.g.op("Gemm", [y, f.g.w(3, hidden), f.g.w(3)], transB=1)


def gemm_untransposed(f: Fuzz, x: str) -> str:
    """GlobalAveragePool -> Flatten -> Gemm with B stored [in, out] (transB=0)."""
    c = f.shape[x][0]
    flat = f.g.op("Flatten", [f.g.op("GlobalAveragePool", [x])], axis=1)
    return f.g.op("Gemm", [flat, f.g.w(c, 4), f.g.w(4)])


def reduce_gemm(f: Fuzz, x: str) -> str:
    c = f.shape[x][0]
    if f.g.opset >= 18:
        r = f.g.op("ReduceMean", [x, f.i64([2, 3])], keepdims=0)
    else:
        r = f.g.op("ReduceMean", [x], axes=[2, 3], keepdims=0)
    return f.g.op("Gemm", [r, f.g.w(4, c), f.g.w(4)], transB=1)


def reshape_matmul(f: Fuzz, x: str) -> str:
    c, h, w = f.shape[x]
    if c * h * w > 1024:
        return gap_gemm(f, x)
    f.static_batch = True
    flat = f.g.op("Reshape", [x, f.i64([-1, c * h * w])])
    return f.g.op("Add", [f.g.op("MatMul", [flat, f.g.w(c * h * w, 5, scale=0.1)]), f.g.w(5)])


def feature_map(f: Fuzz, x: str) -> str:
    return f.conv(x, f.channels())


HEADS = {"gap_gemm": (gap_gemm, 4), "flatten_gemm": (flatten_gemm, 2), "reduce_gemm": (reduce_gemm, 1),
         "reshape_matmul": (reshape_matmul, 1), "feature_map": (feature_map, 1),
         "gemm_untransposed": (gemm_untransposed, 1)}


def _pick(rng: np.random.Generator, table: dict) -> str:
    names = list(table)
    weights = np.array([table[n][1] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def random_cnn(seed: int) -> tuple[onnx.ModelProto, list[str]]:
    """A random valid CNN and the names of its blocks (stem, blocks..., head)."""
    rng = np.random.default_rng(seed)
    f = Fuzz(G(seed, opset=int(rng.choice([13, 17, 18]))), rng)
    size = int(rng.choice([8, 12, 16]))
    f.shape["x"] = (3, size, size)
    y = f.cbr("x", f.channels())
    f.blocks.append(f"opset{f.g.opset}/{size}px")
    for _ in range(int(rng.integers(2, 10))):
        name = _pick(rng, BLOCKS)
        y = BLOCKS[name][0](f, y)
        f.blocks.append(name)
    head = _pick(rng, HEADS)
    out = HEADS[head][0](f, y)
    f.blocks.append(head)
    return f.g.model(out, in_shape=(1, 3, size, size), dynamic_batch=not f.static_batch), f.blocks


# --- the campaign ----------------------------------------------------------------------------------
@dataclass
class Outcome:
    seed: int
    status: str  # ok | unreachable | no-prunable | fail
    blocks: list[str]
    detail: str = ""


def run_case(seed: int, render_html: bool = False) -> Outcome:
    """Generate case ``seed`` and check it (module docstring); never raises, reports instead."""
    from onnxprune import Limits, Settings, Target, TargetError, apply_plan, compress, measured_cost
    from onnxprune.model.files import serialise
    from onnxprune.report import ReportSettings, build_report, render, render_json, render_text

    rng = np.random.default_rng([seed, 1])
    blocks: list[str] = []
    stage = "generate"
    try:
        proto, blocks = random_cnn(seed)
        stage = "invariants"
        analysis = check_invariants(proto, seeds=[seed, seed + 7919], min_prunable=0)
        stage = "compress"
        kind = str(rng.choice(["flops", "params"]))
        target = Target(kind, round(float(rng.uniform(0.1, 0.6)), 3))
        criterion = str(rng.choice(["l1", "l2", "fpgm", "bn_scale", "random"]))
        limits = Limits(round_to=int(rng.choice([1, 1, 2, 4])))
        try:
            result = compress(proto, Settings(target, criterion, limits=limits, seed=seed))
        except TargetError as exc:
            message = str(exc)
            if not message or "\n" in message:
                return Outcome(seed, "fail", blocks, f"TargetError without a one-line message: {message!r}")
            return Outcome(seed, "no-prunable" if not analysis.prunable_groups else "unreachable", blocks, message)
        reduction = result.summary["flops_reduction" if kind == "flops" else "params_reduction"]
        assert reduction >= target.fraction, f"{kind} reduction {reduction} below the target {target.fraction}"
        shapes = result.analysis.model.input_shapes
        assert measured_cost(result.model, shapes) == result.allocation.cost, "measured cost != predicted cost"
        stage = "apply_plan"
        again = apply_plan(proto, result.plan, check=False)
        assert serialise(again) == serialise(result.model), "apply_plan is not byte-identical to compress"
        stage = "report"
        report = build_report(result.analysis.model, plan=result.plan, pruned=result.model, criterion=criterion,
                              settings=ReportSettings(latency_runs=0))
        assert report.plan["prediction_matches"] is True, "report: measured cost differs from the plan"
        render_text(report)
        json.loads(render_json(report))
        if render_html:
            render(report, "html")
        return Outcome(seed, "ok", blocks, f"{kind} {target.fraction}")
    except Exception as exc:  # noqa: BLE001 - every other exception is a finding
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(tb.filename).name}:{tb.lineno}"
        return Outcome(seed, "fail", blocks, f"{stage}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''} ({where})")


def campaign(cases: int, seed: int, jobs: int, save: Path | None, out=sys.stdout) -> Counter:
    """Run ``cases`` consecutive seeds from ``seed``; print failures and a summary."""
    seeds = range(seed, seed + cases)
    start = time.perf_counter()
    if jobs > 1:
        from multiprocessing import get_context

        with get_context("spawn").Pool(jobs) as pool:
            outcomes = pool.map(run_case, seeds, chunksize=4)
    else:
        outcomes = [run_case(s) for s in seeds]
    counts = Counter(o.status for o in outcomes)
    blocks = Counter(b for o in outcomes for b in o.blocks[1:-1])
    for o in outcomes:
        if o.status == "fail":
            print(f"FAIL seed {o.seed}: {o.detail}\n     blocks: {' '.join(o.blocks)}", file=out)
            if save:
                save.mkdir(parents=True, exist_ok=True)
                try:
                    onnx.save(random_cnn(o.seed)[0], save / f"fuzz_{o.seed}.onnx")
                except Exception:  # noqa: BLE001 - the generator itself failed
                    pass
    print(f"{cases} graphs in {time.perf_counter() - start:.0f} s: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), file=out)
    print("blocks used: " + ", ".join(f"{k} {v}" for k, v in blocks.most_common()), file=out)
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="first seed; cases use seed, seed+1, ...")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--save", type=Path, help="write the failing graphs here as fuzz_<seed>.onnx")
    args = parser.parse_args(argv)
    counts = campaign(args.cases, args.seed, args.jobs, args.save)
    return 1 if counts.get("fail") else 0


if __name__ == "__main__":
    sys.exit(main())
