"""Torch stage. Invariants of ``onnxprune.torch.finetune`` on a tiny CNN (exported from torch)
and synthetic data: the written-back model keeps the ONNX structure and names, training lowers
the loss, and a CPU run is reproducible."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from onnxprune.errors import DataError, OnnxPruneError  # noqa: E402
from onnxprune.torch import finetune  # noqa: E402
from onnxprune.torch.finetune import augment_images, cosine_lr  # noqa: E402

N_CLASSES = 4


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.BatchNorm2d(8),  # after the ReLU: exported as a BatchNormalization node
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
            torch.nn.ReLU(),
        )
        self.fc = torch.nn.Linear(16, N_CLASSES)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


@pytest.fixture(scope="module")
def student() -> onnx.ModelProto:
    torch.manual_seed(0)
    net = SmallCNN().eval()
    bn = net.features[2]
    with torch.no_grad():  # trained-looking statistics (the exporter would merge zeros and ones)
        bn.running_mean.uniform_(0.2, 0.6)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.8, 1.2)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(8, 3, 12, 12),), buf, dynamo=False, input_names=["image"], output_names=["logits"])
    return onnx.load_from_string(buf.getvalue())


@pytest.fixture(scope="module")
def teacher(student) -> onnx.ModelProto:
    """The student with every float initializer perturbed: a different, learnable target."""
    rng = np.random.default_rng(1)
    model = onnx.ModelProto()
    model.CopyFrom(student)
    for t in model.graph.initializer:
        w = numpy_helper.to_array(t)
        if w.dtype == np.float32:
            t.CopyFrom(numpy_helper.from_array(w + 0.5 * rng.standard_normal(w.shape).astype(np.float32) * (w.std() + 0.1), t.name))
    return model


def logits(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"image": images[i : i + 8]})[0] for i in range(0, len(images), 8)])


@pytest.fixture(scope="module")
def data():
    """48 noise images with balanced, learnable labels: class k < 3 brightens channel k,
    class 3 darkens every channel."""
    rng = np.random.default_rng(2)
    images = rng.standard_normal((48, 3, 12, 12)).astype(np.float32)
    labels = np.arange(48) % N_CLASSES
    for i, k in enumerate(labels):
        if k < 3:
            images[i, k] += 1.0
        else:
            images[i] -= 0.7
    return images, labels


def batches(data, labels=True, n=48):
    images, y = data

    def factory():
        out = []
        for i in range(0, n, 8):
            batch = {"image": images[i : i + 8]}
            if labels:
                batch["labels"] = y[i : i + 8]
            out.append(batch)
        return out

    return factory


def kd_loss(student_logits: np.ndarray, teacher_logits: np.ndarray, t: float) -> float:
    """T^2 * KL(teacher || student) at temperature t, batch mean (numpy reference)."""

    def log_softmax(z):
        z = z / t - (z / t).max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    lq, lp = log_softmax(teacher_logits.astype(np.float64)), log_softmax(student_logits.astype(np.float64))
    return float((np.exp(lq) * (lq - lp)).sum(1).mean() * t * t)


def test_distillation_reduces_the_distillation_loss(student, teacher, data):
    before = student.SerializeToString()
    result = finetune(
        student, batches(data, labels=False), teacher=teacher, epochs=4, lr=1e-2, temperature=2.0,
        eval_batches_fn=batches(data, labels=False), device="cpu",
    )
    assert student.SerializeToString() == before
    history = result.history
    assert [h["epoch"] for h in history] == [0, 1, 2, 3, 4]
    assert history[0]["loss"] is None and history[0]["eval_acc"] is None
    assert all(h["distill_loss"] > 0 and h["train_acc"] is None for h in history[1:])
    start, best = history[0]["eval_distill_loss"], history[result.best_epoch]["eval_distill_loss"]
    assert result.best_epoch > 0 and best < 0.7 * start
    assert best == min(h["eval_distill_loss"] for h in history)
    # The returned ONNX model is the best epoch's module: same distillation loss under onnxruntime.
    images = data[0]
    got = kd_loss(logits(result.model, images), logits(teacher, images), 2.0)
    assert got == pytest.approx(best, rel=1e-3)
    onnx.checker.check_model(result.model, full_check=True)


def test_labels_and_teacher_report_accuracy(student, teacher, data):
    result = finetune(
        student, batches(data), teacher=teacher, epochs=3, lr=1e-2, alpha=0.5,
        eval_batches_fn=batches(data), optimizer="sgd", device="cpu",
    )
    for h in result.history[1:]:
        assert 0.0 <= h["train_acc"] <= 1.0 and 0.0 <= h["eval_acc"] <= 1.0
        assert h["loss"] > 0 and h["distill_loss"] > 0 and h["steps"] == 6
    accs = [h["eval_acc"] for h in result.history]
    assert result.history[result.best_epoch]["eval_acc"] == max(accs)
    assert result.best_epoch == accs.index(max(accs))  # earliest of equals
    # Accuracy of the returned model, measured with onnxruntime, is the reported one.
    images, labels = data
    assert float((logits(result.model, images).argmax(1) == labels).mean()) == pytest.approx(max(accs))


def test_labels_only_improve_accuracy(student, data):
    result = finetune(student, batches(data), epochs=3, lr=5e-3, eval_batches_fn=batches(data), device="cpu")
    assert all(h["distill_loss"] is None and h["eval_distill_loss"] is None for h in result.history)
    assert result.history[result.best_epoch]["eval_acc"] > result.history[0]["eval_acc"] + 0.3
    assert result.history[-1]["loss"] < result.history[1]["loss"]


def test_seed_makes_runs_reproducible(student, teacher, data):
    def run(seed):
        return finetune(student, batches(data), teacher=teacher, epochs=2, lr=1e-2, augment=True, seed=seed, device="cpu")

    a, b, c = run(3), run(3), run(4)
    assert a.history == b.history
    assert a.model.SerializeToString() == b.model.SerializeToString()
    assert a.history != c.history  # the seed drives the augmentation


def test_progress_callback_and_no_printing(student, teacher, data, capsys):
    events = []
    result = finetune(student, batches(data, n=24), teacher=teacher, epochs=2, lr=1e-3, device="cpu", progress=events.append)
    steps = [e for e in events if e["event"] == "step"]
    epochs = [e for e in events if e["event"] == "epoch"]
    assert len(steps) == 6 and len(epochs) == 2
    assert [e["epoch"] for e in epochs] == [1, 2] and epochs[-1]["loss"] == result.history[-1]["loss"]
    # Cosine schedule per step (the batch list has a len()): starts at lr, decreases.
    lrs = [e["lr"] for e in steps]
    assert lrs[0] == pytest.approx(1e-3) and all(x > y for x, y in zip(lrs, lrs[1:]))
    assert lrs == pytest.approx([cosine_lr(1e-3, i, 6) for i in range(6)])
    # Without evaluation data the last epoch is kept and there is no epoch 0.
    assert result.best_epoch == 2 and [h["epoch"] for h in result.history] == [1, 2]
    assert capsys.readouterr() == ("", "")


def test_generator_batches_anneal_per_epoch(student, teacher, data):
    images = data[0]

    def gen():
        for i in range(0, 24, 8):
            yield {"image": images[i : i + 8]}

    events = []
    finetune(student, gen, teacher=teacher, epochs=2, lr=1e-3, device="cpu", progress=events.append)
    lrs = [e["lr"] for e in events if e["event"] == "step"]
    assert lrs == pytest.approx([1e-3] * 3 + [cosine_lr(1e-3, 1, 2)] * 3)


def test_eval_fn_selects_best_epoch_and_baseline_can_win(student, teacher, data):
    scores = iter([0.5, 0.9, 0.1])
    result = finetune(student, batches(data), teacher=teacher, epochs=2, lr=1e-2, eval_fn=lambda m: next(scores), device="cpu")
    assert [h["eval_acc"] for h in result.history] == [0.5, 0.9, 0.1] and result.best_epoch == 1
    scores = iter([1.0, 0.2, 0.3])
    result = finetune(student, batches(data), teacher=teacher, epochs=2, lr=1e-2, eval_fn=lambda m: next(scores), device="cpu")
    assert result.best_epoch == 0
    assert result.model.SerializeToString() == student.SerializeToString()


def test_train_bn_runs_and_changes_statistics(student, teacher, data):
    result = finetune(student, batches(data), teacher=teacher, epochs=1, lr=1e-3, train_bn=True, device="cpu")
    bn = next(n for n in student.graph.node if n.op_type == "BatchNormalization")
    old = {t.name: numpy_helper.to_array(t) for t in student.graph.initializer}
    new = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert not np.array_equal(old[bn.input[3]], new[bn.input[3]])


def test_float64_batches_are_cast_to_the_input_type(student, teacher, data):
    images = data[0].astype(np.float64)
    result = finetune(student, lambda: [{"image": images[:8]}], teacher=teacher, lr=1e-3, device="cpu")
    assert result.history[0]["loss"] > 0


@pytest.mark.parametrize(
    "kwargs, batch, error, match",
    [
        ({}, {"img": np.zeros((2, 3, 12, 12), np.float32)}, DataError, "lacks model input"),
        ({"teacher": None}, {"image": np.zeros((2, 3, 12, 12), np.float32)}, DataError, "nothing to learn"),
        ({"optimizer": "adam"}, None, OnnxPruneError, "optimizer"),
        ({"epochs": 0}, None, OnnxPruneError, "epochs"),
        ({"alpha": 2.0}, None, OnnxPruneError, "alpha"),
        ({"lr": 1e30, "optimizer": "sgd"}, {"image": np.ones((8, 3, 12, 12), np.float32), "labels": np.zeros(8, np.int64)}, OnnxPruneError, "loss became"),
    ],
)
def test_errors(student, teacher, kwargs, batch, error, match):
    kwargs = {"teacher": teacher, "device": "cpu", **kwargs}
    with pytest.raises(error, match=match):
        finetune(student, lambda: [batch] * 4, epochs=kwargs.pop("epochs", 2), **kwargs)


def test_empty_batches(student, teacher):
    with pytest.raises(DataError, match="no batches"):
        finetune(student, lambda: [], teacher=teacher, device="cpu")


def test_augment_images_flips_and_crops():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).reshape(2, 1, 4, 5)
    flipped = augment_images(x, g, pad=0)
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2))
    cropped = augment_images(x, g, pad=2)
    assert cropped.shape == x.shape
    # Every crop is a window of the zero-padded (possibly flipped) image.
    for i in range(2):
        windows = [
            torch.nn.functional.pad(img, (2, 2, 2, 2))[:, dy : dy + 4, dx : dx + 5]
            for img in (x[i], x[i].flip(2))
            for dy in range(5)
            for dx in range(5)
        ]
        assert any(torch.equal(cropped[i], w) for w in windows)
