"""ACRA's sensitivity-based allocation: prune each group alone, measure the damage, then give
every group the largest ratio whose damage stays under a shared threshold found by binary search.

Fast evaluation rests on the masking equivalence that the test suite guards: a model pruned
without reconstruction computes exactly what the original computes with the consumers' weights
of the removed channels set to zero. So one onnxruntime session, in which those consumer weights
are graph inputs with their initializers as defaults, evaluates every candidate: a candidate
only feeds the few zeroed weights it changes. No session is built per evaluation.

    evaluator = MaskedEvaluator(analysis, batches, labels)
    sens = measure_sensitivity(analysis, evaluator, scores)
    allocation = allocate_sensitivity(analysis, cost, scores, sens, Target("flops", 0.5))  # from_scores.py
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from .search import ranked
from ..analysis import IN, Analysis
from ..analysis.oracle import masked_weights
from ..errors import DataError, PlanError
from ..plan import group_key
from ..reconstruct.compensator import Compensator
from ..runtime.frontier import SuffixCache
from ..runtime.session import session

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
METRICS = ("accuracy_drop", "kl", "disagreement", "error")
FORMAT = "onnxprune.sensitivity/1"


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class MaskedEvaluator:
    """Evaluate keep vectors by masking consumer weights in one onnxruntime session.

    Metrics against the original model's outputs on the same data:

    * ``kl`` — mean KL(original || candidate) of the softmax of the first output (classifiers);
    * ``disagreement`` — share of images whose top-1 class changes;
    * ``accuracy`` — top-1 accuracy when labels are given;
    * ``error`` — normalised squared error of the first output (any model; used when the first
      output is not a [N, classes] matrix).
    """

    def __init__(self, analysis: Analysis, batches: list[dict[str, np.ndarray]], labels: np.ndarray | None = None,
                 providers=None, compensator: Compensator | None = None):
        if not batches:
            raise DataError("no evaluation data: the sensitivity analysis needs at least one batch")
        self.analysis = analysis
        self.batches = batches
        self.labels = None if labels is None else np.asarray(labels).reshape(-1)
        self.weights = self._consumer_weights()
        self.compensator = compensator
        proto = copy.deepcopy(analysis.model.proto)
        fed = set(self.weights)
        if compensator is not None:
            fed |= set(compensator.add_bias_inputs(proto))
        existing = {i.name for i in proto.graph.input}
        for init in proto.graph.initializer:
            if init.name in fed and init.name not in existing:
                proto.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        self.proto, self.providers = proto, providers
        self.session = session(proto, providers)
        self.output = self.session.get_outputs()[0].name
        self.focus: SuffixCache | None = None
        self.reference = [self._run(b, {}) for b in batches]
        n = sum(len(r) for r in self.reference)
        if self.labels is not None and len(self.labels) != n:
            raise DataError(f"labels have {len(self.labels)} entries but the evaluation data has {n} samples")
        self.classifier = self.reference[0].ndim == 2 and self.reference[0].shape[1] > 1
        self.evaluations = 0
        self.base = self.metrics_of(self.reference)

    def _consumer_weights(self) -> dict[str, np.ndarray]:
        names = {d.tensor for d in self.analysis.dims if d.role == IN and d.constant}
        return {n: np.asarray(self.analysis.model.tensors[n].values) for n in names}

    def _run(self, batch: dict[str, np.ndarray], weights: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self.output], {**batch, **weights})[0]

    def focus_on(self, keeps: list[np.ndarray], memory_budget: int = 2 << 30) -> bool:
        """Restrict the next evaluations (of ``keeps``) to the part of the graph whose weights
        they change, and what follows. The tensors entering that part are computed once by a
        prefix model and cached; each evaluation then runs only the suffix. Returns False (and
        evaluates the whole model) where the cache would exceed ``memory_budget`` bytes, the
        graph has subgraphs, or nothing would be saved."""
        self.focus = None
        names = {n for keep in keeps for n in self.masked_weights(keep, compensate=False)}
        if self.compensator is not None:
            names |= {self.compensator.biases[i] for i, c in enumerate(self.compensator.consumers)
                      if c.weight in names and i in self.compensator.biases}
        self.focus = SuffixCache.build(self.proto, names, self.output, self.batches, self.providers, memory_budget)
        return self.focus is not None

    def unfocus(self) -> None:
        self.focus = None

    def masked_weights(self, keep: np.ndarray, compensate: bool = True) -> dict[str, np.ndarray]:
        """The masking oracle's weights for ``keep`` (``analysis.oracle``), or with a compensator
        the folded weights and biases of the consumers it reconstructs."""
        out = masked_weights(self.analysis, keep, base=self.weights)
        if self.compensator is not None and compensate:
            out.update(self.compensator.weights(keep))
        return out

    def outputs(self, keep: np.ndarray) -> list[np.ndarray]:
        weights = self.masked_weights(keep)
        self.evaluations += 1
        if self.focus is not None:
            return self.focus.run(weights)
        return [self._run(b, weights) for b in self.batches]

    def metrics_of(self, outputs: list[np.ndarray]) -> dict[str, float]:
        y, y0 = np.concatenate(outputs), np.concatenate(self.reference)
        metrics = {"error": float(((y - y0) ** 2).sum() / max((y0**2).sum(), 1e-30))}
        if self.classifier:
            p0, p = _softmax(y0.astype(np.float64)), _softmax(y.astype(np.float64))
            kl = (p0 * (np.log(p0 + 1e-12) - np.log(p + 1e-12))).sum(axis=1).mean()
            metrics["kl"] = float(kl)
            metrics["disagreement"] = float((y.argmax(1) != y0.argmax(1)).mean())
            if self.labels is not None:
                metrics["accuracy"] = float((y.argmax(1) == self.labels).mean())
        return metrics

    def evaluate(self, keep: np.ndarray) -> dict[str, float]:
        return self.metrics_of(self.outputs(keep))

    @property
    def default_metric(self) -> str:
        if self.labels is not None and self.classifier:
            return "accuracy_drop"
        return "kl" if self.classifier else "error"

    def check_metric(self, metric: str) -> None:
        """One-line errors for a metric the data or the model cannot give."""
        if metric not in METRICS:
            raise DataError(f"unknown sensitivity metric {metric!r}; available: {', '.join(METRICS)}")
        if metric == "accuracy_drop" and self.labels is None:
            raise DataError("sensitivity metric accuracy_drop needs labels in the evaluation data")
        if metric in ("kl", "disagreement") and not self.classifier:
            raise DataError(f"sensitivity metric {metric} needs a classifier's [N, classes] output; use error")

    def damage(self, metrics: dict[str, float], metric: str) -> float:
        """The metric, plus 1e-4 x the (capped) output error as a tie-break: top-1 based metrics
        and the KL of saturated softmaxes are flat zero over many ratios, and a flat curve gives
        the threshold search nothing to choose between."""
        tie = 1e-4 * min(metrics["error"], 1.0)
        if metric == "accuracy_drop":
            return self.base["accuracy"] - metrics["accuracy"] + tie
        return metrics[metric] + (tie if metric != "error" else 0.0)


@dataclass
class Sensitivity:
    """Per-group damage curves: ``curves[gid][i]`` is the damage at ``ratios[i]``."""

    fingerprint: str
    ratios: list[float]
    metric: str
    criterion: str
    curves: dict[int, list[float]]
    keys: dict[int, list[str]]
    names: dict[int, str] = field(default_factory=dict)
    details: dict[int, list[dict]] = field(default_factory=dict)
    base: dict = field(default_factory=dict)
    evaluations: int = 0
    seconds: float = 0.0
    compensated: bool = False  # curves measured with local reconstruction (reconstruct.Compensator)
    format: str = FORMAT

    def to_json(self) -> str:
        data = asdict(self)
        for k in ("curves", "keys", "names", "details"):
            data[k] = {str(g): v for g, v in data[k].items()}
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Sensitivity":
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise PlanError(f"not an onnxprune sensitivity analysis (format {data.get('format')!r})")
            for k in ("curves", "keys", "names", "details"):
                data[k] = {int(g): v for g, v in data.get(k, {}).items()}
            return cls(**data)
        except PlanError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise PlanError(f"not a valid sensitivity analysis: {exc}") from exc

    def check(self, analysis: Analysis) -> None:
        """Reject an analysis saved for another model (fingerprint and group keys must match)."""
        if self.fingerprint != analysis.model.fingerprint:
            raise PlanError("the sensitivity analysis was made for another model (fingerprint differs)")
        for gid, key in self.keys.items():
            if gid >= len(analysis.groups) or group_key(analysis, gid) != key:
                raise PlanError(f"sensitivity group {gid} does not match the model's channel groups")


def measure_sensitivity(
    analysis: Analysis,
    evaluator: MaskedEvaluator,
    scores: dict[int, np.ndarray],
    criterion: str,
    ratios=RATIOS,
    metric: str | None = None,
    progress=None,
    restrict: bool = True,
) -> Sensitivity:
    """Prune each prunable group alone at each ratio (lowest-scoring channels first). With
    ``restrict`` each group's evaluations run only the part of the graph the group changes
    (``MaskedEvaluator.focus_on``)."""
    start = time.perf_counter()
    metric = metric or evaluator.default_metric
    evaluator.check_metric(metric)
    order = ranked(scores)
    curves, details = {}, {}
    total, done = len(scores) * len(ratios), 0
    for gid, s in scores.items():
        n = len(s)
        curve, rows = [], []
        keeps = [analysis.keep_vector({gid: np.sort(order[gid][: max(1, n - int(np.floor(r * n + 1e-9)))])})
                 for r in ratios]
        if restrict:
            evaluator.focus_on(keeps)
        for keep in keeps:
            m = evaluator.evaluate(keep)
            curve.append(evaluator.damage(m, metric))
            rows.append(m)
            done += 1
            if progress:
                progress(done, total)
        evaluator.unfocus()
        curves[gid], details[gid] = curve, rows
    return Sensitivity(
        analysis.model.fingerprint, list(ratios), metric, criterion, curves,
        {gid: group_key(analysis, gid) for gid in scores}, {gid: analysis.groups[gid].name for gid in scores},
        details, evaluator.base, evaluator.evaluations, round(time.perf_counter() - start, 3),
        evaluator.compensator is not None,
    )


def ratio_at(curve: np.ndarray, ratios: np.ndarray, threshold: float) -> float:
    """Largest ratio whose damage stays <= threshold on the monotone envelope of the curve.

    The envelope (running maximum) makes a group's ratio non-decreasing in the threshold, and
    linear interpolation between measured ratios makes it continuous, so a binary search on the
    threshold can meet a FLOPs target closely.
    """
    r = np.concatenate([[0.0], ratios])
    env = np.maximum.accumulate(np.concatenate([[0.0], np.maximum(curve, 0.0)]))
    if threshold >= env[-1]:
        return float(r[-1])
    i = int(np.searchsorted(env, threshold, side="right"))  # first point above the threshold
    lo_r, hi_r, lo_v, hi_v = r[i - 1], r[i], env[i - 1], env[i]
    if hi_v <= lo_v:
        return float(lo_r)
    return float(lo_r + (hi_r - lo_r) * (threshold - lo_v) / (hi_v - lo_v))
