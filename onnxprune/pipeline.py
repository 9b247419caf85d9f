"""The pipeline as plain functions that read top to bottom: load, analyse, score, allocate,
rewrite, verify. The CLI calls these; they return data and never print.

    result = compress("model.onnx", Settings(target=Target("flops", 0.3)))
    save_model(result.model, "model.pruned.onnx")
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import onnx

from .allocate.from_scores import allocate_global, allocate_sensitivity
from .allocate.search import Allocation, main_blockers
from .allocate.uniform import allocate_uniform
from .analysis import Analysis, analyse
from .cost import Cost, CostModel
from .scoring.weights import score_groups
from .errors import OnnxPruneError, PlanError, TargetError
from .model.graph import Model, load_model
from .model.files import read_model
from .plan import Plan, make_plan, plan_keep
from .recovery import plan_record, recover_stage, replay_recovery, replays_recovery, summary_of  # issue 18
from .reconstruct.compensator import Compensator
from .reconstruct.ldrf import reconstruct
from .rewrite import rewrite, verify
from .scoring.activations import collect, data_scores, observations
from .scoring.registry import needs_data
from .settings import EvaluationSettings, Limits, Settings
from .allocate.exclude import exclude_groups
from .allocate.sensitivity import MaskedEvaluator, Sensitivity, measure_sensitivity
from .evaluation import DATA_FREE_NOTE, data_fingerprint, evaluate_pair, holdout_count, plan_calibration_data, split_holdout


RANK_PATIENCE = 32  # images over which HRank's early stop watches the mean ranks


@dataclass
class Result:
    model: onnx.ModelProto
    plan: Plan
    summary: dict
    analysis: Analysis
    allocation: Allocation
    sensitivity: Sensitivity | None = None
    scores: dict | None = None


class Timer:
    """Wall time per stage, in the order the stages ran."""

    def __init__(self):
        self.stages: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = round(now - self._t, 4)
        self._t = now


class Batches:
    """A re-iterable view of a Dataset at one batch size (reconstruction streams it per wave)."""

    def __init__(self, dataset, batch_size=None, max_batches=None):
        self.dataset, self.batch_size, self.max_batches = dataset, batch_size, max_batches

    def __iter__(self):
        for i, batch in enumerate(self.dataset.batches(self.batch_size)):
            if self.max_batches is not None and i >= self.max_batches:
                return
            yield batch


RECON_MEMORY_BUDGET = 1 << 30  # bytes of activations alive at once while reconstruction streams


def recon_batch_size(analysis: Analysis, requested: int | None = None) -> int:
    """Images per reconstruction batch: every tensor the fits observe is alive at once for the
    whole batch (twice for ldrf: original and pruned), so the batch follows a memory budget
    (64 images of ResNet-50 at 224 held 8 GB). Deterministic from the model alone, so
    ``apply`` streams the same batches as ``compress`` and reproduces the fitted weights."""
    from .data import declared_batch, input_specs

    fixed = declared_batch(input_specs(analysis.model.proto))  # issue 15.2: [1, 1, 64, W] runs 1 image at a time
    if fixed is not None:
        return fixed
    if requested:
        return requested
    from .reconstruct.consumers import find_consumers

    tensors = analysis.model.tensors
    per_image = sum(4 * int(np.prod([d if isinstance(d, int) and d > 0 else 1 for d in tensors[n].shape or []]))
                    for n in {c.observed for c in find_consumers(analysis)})
    return int(min(64, max(1, RECON_MEMORY_BUDGET // max(2 * per_image, 1))))


def prepare(source, input_shapes=None) -> tuple[Model, Analysis, CostModel]:
    model = source if isinstance(source, Model) else load_model(source, input_shapes)
    analysis = analyse(model)
    return model, analysis, CostModel(analysis)


def load_inputs(source, input_shapes=None, data=None, eval_data=None, limit=None):
    """Read the model and the data together: the data's shapes fix symbolic input dims."""
    from .data import input_specs, load_data

    proto = source.proto if isinstance(source, Model) else (
        source if isinstance(source, onnx.ModelProto) else read_model(source))
    specs = input_specs(proto)
    dataset = load_data(data, specs, limit=limit) if data is not None else None
    evalset = load_data(eval_data, specs) if eval_data is not None else None
    if input_shapes is None and dataset is not None:
        first = next(iter(dataset.batches(1)))
        input_shapes = {k: (1, *np.shape(v)[1:]) for k, v in first.items()}
    if isinstance(source, Model):
        return source, dataset, evalset
    model = load_model(proto, input_shapes)
    model.path = None if isinstance(source, onnx.ModelProto) else str(source)
    return model, dataset, evalset


def compress(source, settings: Settings, input_shapes=None, data=None, eval_data=None,
             sensitivity: Sensitivity | None = None, progress=None, allocator=None) -> Result:
    """Prune ``source`` (path, ModelProto or Model) to the settings' target.

    ``data`` (calibration) and ``eval_data`` (sensitivity; labels give accuracy drop) are
    anything ``onnxprune.data.load_data`` reads. ``progress(stage, done, total)`` reports long
    stages. ``allocator(analysis, cost, scores, limits, sensitivity) -> Allocation`` replaces the
    built-in allocations (``allocate.speed.latency_allocator``: a measured speed-up target).
    """
    timer = Timer()
    model, dataset, evalset = load_inputs(source, input_shapes, data, eval_data)
    data_samples = dataset.num_samples if dataset is not None else None
    heldout = None
    if dataset is not None and evalset is None:  # issue 15.13: measure on samples not calibrated on
        dataset, heldout = split_holdout(dataset, holdout_count(data_samples, settings.holdout, settings.eval_images))
    _, analysis, cost = prepare(model)
    excluded = exclude_groups(analysis, settings.exclude)  # before the check: excluding everything is an error too
    timer.lap("analysis")
    if not analysis.prunable_groups:
        raise TargetError(f"no prunable channel group in the model: {_first_blocker(analysis)}")
    criterion = settings.criterion or ("hrank" if dataset is not None else "l1")
    mode = settings.reconstruct or ("obs" if criterion == "obs" else "ldrf" if dataset is not None else "none")  # obs: issue 17
    _check_settings(settings, criterion, mode, dataset, evalset if sensitivity is None else True)  # saved curves need no data
    stage = (lambda name: (lambda done, total: progress(name, done, total))) if progress else (lambda name: None)

    calibration = None
    # --- issue 17: OBS selection (profiles from the dense network; groups re-chosen after allocation) ---
    obs_batches = Batches(dataset, recon_batch_size(analysis, settings.batch_size), settings.calib_batches) \
        if criterion == "obs" else None
    if criterion == "obs" and settings.allocation == "uniform":
        # uniform counts do not depend on the scores, and obs_select re-chooses every group
        obs_order, scores = None, score_groups(analysis, "group_magnitude", seed=settings.seed)
        timer.lap("scoring")
    elif criterion == "obs":
        obs_order, scores = _obs_scores(analysis, obs_batches, settings.seed)
        timer.lap("obs profiles")
    # --- end issue 17 ---
    elif needs_data(criterion):
        calibration = collect(analysis, dataset, [criterion], providers=settings.providers, progress=stage("calibration"),
                              max_batches=settings.calib_batches, batch_size=settings.batch_size,
                              rank_patience=RANK_PATIENCE if settings.rank_early_stop is not None else None,
                              rank_tol=settings.rank_early_stop or 0.05)
        scores = data_scores(analysis, criterion, calibration, settings.seed)
        timer.lap("calibration")
    else:
        scores = score_groups(analysis, criterion, seed=settings.seed)
        timer.lap("scoring")

    if settings.allocation == "sensitivity":
        if sensitivity is None:
            evaluator = masked_evaluator(analysis, evalset or dataset, settings.evaluation, dataset if mode != "none" else None)
            sensitivity = measure_sensitivity(analysis, evaluator, scores, criterion, metric=settings.sensitivity_metric,
                                              progress=stage("sensitivity"))
            timer.lap("sensitivity")
        else:
            sensitivity.check(analysis)

    def allocate(limits: Limits) -> Allocation:
        if allocator is not None:  # --- issue 16: latency targets
            return allocator(analysis, cost, scores, limits, sensitivity)
        if settings.allocation == "sensitivity":
            return allocate_sensitivity(analysis, cost, scores, sensitivity, settings.target, limits)
        if settings.allocation == "global":
            return allocate_global(analysis, cost, scores, settings.target, limits)
        return allocate_uniform(analysis, cost, scores, settings.target, limits)

    limits, round_to_note = settings.limits, None
    try:
        allocation = allocate(limits)
    except TargetError:
        if not settings.round_to_fallback or limits.round_to == 1 or allocator is not None:
            raise
        # Kept counts in multiples of N keep onnxruntime's fast kernels but cap small models:
        # meet the target with smaller multiples rather than fail (the summary says so).
        # --- issue 16: step the alignment down (16 -> 8 -> 4: onnxruntime keeps multiples of 4 in its
        # blocked layout, padded), exact counts only where even 4 cannot reach the target
        asked, allocation = limits.round_to, None
        for step in [a for a in (asked // 2, asked // 4) if a >= 4 and asked % a == 0] + [1]:
            limits = replace(limits, round_to=step)
            try:
                allocation = allocate(limits)
                break
            except TargetError:
                if step == 1:
                    raise
        round_to_note = (f"--round-to {asked} cannot reach the target on this model: kept channel counts are multiples "
                         f"of {limits.round_to}" + (" (exact), which may run slower than rounded ones (docs/LATENCY.md)"
                                                     if limits.round_to == 1 else ", padded by onnxruntime to its block"))
    timer.lap("allocation")
    selection = None  # --- issue 17: the allocated counts, channels chosen on the network pruned so far ---
    if criterion == "obs":
        from .scoring.obs import ObsSettings
        from .scoring.obs_select import obs_select

        selection = obs_select(analysis, {g: len(k) for g, k in allocation.kept.items()}, obs_batches,
                               ObsSettings(seed=settings.seed), fallback=obs_order)
        keep = analysis.keep_vector(selection.kept)
        allocation = replace(allocation, kept={g: selection.kept.get(g, k) for g, k in allocation.kept.items()},
                             keep=keep, cost=cost.evaluate(keep))
        timer.lap("obs selection")
    # --- end issue 17 ---

    pruned = None if settings.dry_run else rewrite(analysis, allocation.keep)
    timer.lap("rewrite")
    recon_report = None
    if mode == "obs" and pruned is not None:  # issue 17: fold the OBS refit instead of LDRF's
        from .reconstruct.obs_fold import fold_obs

        pruned = fold_obs(analysis, allocation.keep, pruned, selection)
        timer.lap("reconstruction")
    elif mode != "none" and pruned is not None:
        batches = Batches(dataset, recon_batch_size(analysis, settings.batch_size), settings.calib_batches)
        pruned, recon_report = reconstruct(analysis, allocation.keep, pruned, batches, mode=mode, seed=settings.seed,
                                           progress=stage("reconstruction"))
        timer.lap("reconstruction")
    recovery = None
    if settings.recover is not None and pruned is not None:  # --- issue 18: on the calibration part only
        pruned, recovery = recover_stage(model.proto, pruned, analysis, allocation.keep, dataset, settings.recover,
                                         stage("recovery"))
        timer.lap("recovery")
    if settings.verify and pruned is not None:
        verify(model.proto, pruned, model.input_shapes, settings.seed)
        timer.lap("verify")
    evaluation = None
    eval_on = heldout if heldout is not None else evalset
    if settings.evaluate and eval_on is not None and pruned is not None:
        if eval_on.num_samples and eval_on.num_samples > settings.eval_images:
            eval_on = eval_on.take(settings.eval_images)
        evaluation = evaluate_pair(model.proto, pruned, eval_on, settings.providers)
        evaluation["source"] = "held out of data" if heldout is not None else "eval_data"
        timer.lap("evaluation")

    record = {
        "target": asdict(settings.target),
        "criterion": criterion,
        "allocation": settings.allocation,
        "limits": asdict(limits),
        "reconstruct": mode,
        "seed": settings.seed,
        "batch_size": settings.batch_size,
        "calib_batches": settings.calib_batches,
        "uniform_ratio": allocation.ratio,
        "input_shapes": {k: list(v) for k, v in model.input_shapes.items()},
        # issue 15.8/15.13: apply repeats the split and checks it reads the same calibration data
        "exclude": list(settings.exclude),
        "holdout": heldout.num_samples if heldout is not None else 0,
        "data_samples": data_samples,
        "data_fingerprint": data_fingerprint(dataset) if mode != "none" or recovery is not None else None,
    }
    if recovery is not None:  # what apply needs to replay the recovery (issue 18)
        record["recover"] = plan_record(settings.recover, recovery)
    predicted = _cost_dict(allocation.base, allocation.cost)
    plan = make_plan(analysis, allocation.kept, record, predicted)
    summary = summarise(analysis, allocation, criterion, timer)
    summary["reconstruct"] = mode
    summary["round_to"] = limits.round_to
    if "speed" in allocation.details:  # --- issue 16: target, predicted and measured speed-up
        summary["speed"] = allocation.details["speed"]
    if round_to_note:
        summary["notes"] = [round_to_note]
    data_notes = [n for d in (dataset, evalset) if d is not None for n in d.notes]  # issue 15.7
    if dataset is None and mode == "none":  # issue 15.11: a first data-free run must not look like a result
        data_notes.insert(0, DATA_FREE_NOTE.format(criterion=criterion))
    if data_notes:
        summary["notes"] = summary.get("notes", []) + data_notes
    if heldout is not None or (dataset is not None and evalset is None):
        summary["holdout"] = {"held_out": heldout.num_samples if heldout is not None else 0,
                              "calibration_samples": dataset.num_samples, "fraction": settings.holdout}
    if evaluation is not None:
        summary["evaluation"] = evaluation
    if excluded:
        summary["excluded"] = {p: [analysis.groups[g].name for g in gids] for p, gids in excluded.items()}
    if recon_report is not None:
        summary["reconstruction"] = {"fitted": len(recon_report.fitted), "fallback": len(recon_report.fallback),
                                     "passes": recon_report.passes}
    if recovery is not None:  # issue 18
        summary["recovery"] = summary_of(recovery)
    if calibration is not None:
        summary["calibration"] = {"images": calibration.num_images, "provider": calibration.provider,
                                  "batch_size": calibration.batch_size, "warnings": list(calibration.warnings)}
        if calibration.rank_images is not None:
            summary["calibration"]["rank_images"] = {"fewest": calibration.rank_images[0],
                                                     "most": calibration.rank_images[1]}
    if sensitivity is not None:
        summary["sensitivity"] = {"metric": sensitivity.metric, "evaluations": sensitivity.evaluations,
                                  "seconds": sensitivity.seconds, "threshold": allocation.details.get("threshold")}
    return Result(pruned, plan, summary, analysis, allocation, sensitivity, scores)


def _obs_scores(analysis: Analysis, batches, seed: int) -> tuple[dict, dict]:
    """Issue 17: the dense network's OBS profiles as (channel order, comparable scores) per group."""
    from .scoring.obs import ObsSettings, obs_profiles, scores_from_profiles

    order, loss = obs_profiles(analysis, batches, ObsSettings(seed=seed))
    return order, scores_from_profiles(order, loss)


def _check_settings(settings: Settings, criterion: str, mode: str, dataset, evalset) -> None:
    """The checks that depend on the data given (the rest: ``Settings.__post_init__``);
    ``criterion`` and ``mode`` are the resolved defaults."""
    if needs_data(criterion) and dataset is None:
        raise OnnxPruneError(f"criterion {criterion} scores feature maps: give calibration data with --data")
    if mode != "none" and dataset is None:
        raise OnnxPruneError(f"reconstruction {mode} fits on activations: give calibration data with --data")
    if settings.rank_early_stop is not None and criterion != "hrank":
        raise OnnxPruneError("--rank-early-stop takes a positive tolerance and applies to --criterion hrank only")
    if settings.recover is not None and dataset is None:  # issue 18
        raise OnnxPruneError("recovery distils the pruned model on calibration samples: give data with --data")
    if settings.allocation == "sensitivity" and dataset is None and evalset is None:
        raise OnnxPruneError("sensitivity allocation evaluates pruned candidates: give --data or --eval-data")


def masked_evaluator(analysis: Analysis, dataset, settings: EvaluationSettings, calibration=None) -> MaskedEvaluator:
    """One masked session over the first ``eval_images`` images; with ``calibration`` data the
    candidates are evaluated after local reconstruction (the curves then measure what
    reconstruction cannot repair: groups it repairs well get pruned harder)."""
    subset = dataset.take(settings.eval_images) if dataset.num_samples and dataset.num_samples > settings.eval_images else dataset
    from .data import declared_batch

    batches = list(subset.batches(declared_batch(subset.specs) or settings.batch_size or 128))
    compensator = None
    if calibration is not None:
        compensator = Compensator(analysis, Batches(calibration, recon_batch_size(analysis, settings.batch_size),
                                                     settings.calib_batches),
                                  seed=settings.seed)
    return MaskedEvaluator(analysis, batches, subset.labels, settings.providers, compensator)


def sensitivity_analysis(source, data, criterion: str | None = None, input_shapes=None, eval_images: int = 512,
                         seed: int = 0, progress=None, providers=None,
                         reconstruct: str = "local", metric: str | None = None) -> tuple[Sensitivity, Analysis]:
    """The per-group sensitivity curves alone (``onnxprune sensitivity``); ``reconstruct``
    "local" measures each candidate after local reconstruction, "none" after plain removal."""
    if reconstruct not in ("local", "none"):
        raise OnnxPruneError(f"sensitivity curves are measured with reconstruction 'local' or 'none', not {reconstruct!r}")
    model, dataset, _ = load_inputs(source, input_shapes, data)
    _, analysis, _ = prepare(model)
    if not analysis.prunable_groups:
        raise TargetError(f"no prunable channel group in the model: {_first_blocker(analysis)}")
    criterion = criterion or "hrank"
    if criterion == "obs":  # issue 17: the removal order of the dense network's OBS profiles
        _, scores = _obs_scores(analysis, Batches(dataset, recon_batch_size(analysis)), seed)
    elif needs_data(criterion):
        calibration = collect(analysis, dataset, [criterion], providers=providers,
                              progress=(lambda d, t: progress("calibration", d, t)) if progress else None)
        scores = data_scores(analysis, criterion, calibration, seed)
    else:
        scores = score_groups(analysis, criterion, seed=seed)
    evaluator = masked_evaluator(analysis, dataset, EvaluationSettings(eval_images=eval_images, seed=seed, providers=providers),
                                 dataset if reconstruct == "local" else None)
    sens = measure_sensitivity(analysis, evaluator, scores, criterion, metric=metric,
                               progress=(lambda d, t: progress("sensitivity", d, t)) if progress else None)
    return sens, analysis


def apply_plan(source, plan: Plan, input_shapes=None, check: bool = True, data=None,
               other_data: bool = False) -> onnx.ModelProto:
    """Reproduce the pruned model from a plan (byte-identical to ``compress``'s output). A plan
    made with reconstruction needs the same calibration data to reproduce the fitted weights:
    other data raises PlanError, or with ``other_data`` only warns (``warnings.warn``)."""
    shapes = input_shapes or {k: tuple(v) for k, v in plan.settings.get("input_shapes", {}).items()} or None
    mode = plan.settings.get("reconstruct", "none")
    recovered = replays_recovery(plan.settings)  # issue 18
    if (mode != "none" or recovered) and data is None:
        what = f"reconstruction '{mode}'" if mode != "none" else "recovery"
        raise PlanError(f"the plan was made with {what}: pass the same calibration data (--data)")
    model, dataset, _ = load_inputs(source, shapes, data if mode != "none" or recovered else None)
    _, analysis, _ = prepare(model)
    if mode != "none" or recovered:  # issue 18: recovery replays on the same calibration part
        dataset = plan_calibration_data(plan, dataset, other_data)
    keep = analysis.keep_vector(plan_keep(analysis, plan))
    pruned = rewrite(analysis, keep)
    if mode == "obs":  # issue 17: the OBS selection is deterministic: rerun it for the refitted weights
        from .reconstruct.obs_fold import fold_obs
        from .scoring.obs import ObsSettings
        from .scoring.obs_select import obs_select

        batches = Batches(dataset, recon_batch_size(analysis, plan.settings.get("batch_size")),
                          plan.settings.get("calib_batches"))
        counts = {g.id: int(keep[analysis.group_offsets[g.id]:analysis.group_offsets[g.id + 1]].sum())
                  for g in analysis.prunable_groups}
        selection = obs_select(analysis, counts, batches, ObsSettings(seed=plan.settings.get("seed", 0)))
        pruned = fold_obs(analysis, keep, pruned, selection)
    elif mode != "none":
        batches = Batches(dataset, recon_batch_size(analysis, plan.settings.get("batch_size")),
                           plan.settings.get("calib_batches"))
        pruned, _ = reconstruct(analysis, keep, pruned, batches, mode=mode, seed=plan.settings.get("seed", 0))
    if recovered:  # --- replay the recorded recovery steps (issue 18)
        pruned = replay_recovery(model.proto, pruned, analysis, keep, dataset, plan.settings["recover"])
    if check:
        verify(model.proto, pruned, model.input_shapes)
    return pruned


def summarise(analysis: Analysis, allocation: Allocation, criterion: str, timer: Timer) -> dict:
    groups = analysis.groups
    pruned = [gid for gid, k in allocation.kept.items() if len(k) < groups[gid].size]
    return {
        **_cost_dict(allocation.base, allocation.cost),
        "target": {"kind": allocation.target.kind, "fraction": allocation.target.fraction},
        "achieved": round(allocation.achieved, 6),
        "criterion": criterion,
        "allocation": allocation.strategy,
        "uniform_ratio": allocation.ratio,
        "groups": {
            "total": len(groups),
            "prunable": len(analysis.prunable_groups),
            "pruned": len(pruned),
            "blocked": sum(1 for g in groups if g.blocked),
        },
        "channels": {
            "prunable": int(sum(g.size for g in analysis.prunable_groups)),
            "removed": int(sum(groups[gid].size - len(k) for gid, k in allocation.kept.items())),
        },
        "seconds": timer.stages,
    }


def _cost_dict(before: Cost, after: Cost) -> dict:
    return {
        "macs_before": before.macs,
        "macs_after": after.macs,
        "params_before": before.params,
        "params_after": after.params,
        "flops_reduction": round(after.reduction(before, "flops"), 6),
        "params_reduction": round(after.reduction(before, "params"), 6),
    }


def _first_blocker(analysis: Analysis) -> str:
    reasons = [g.blocked[0] for g in analysis.groups if g.blocked]
    if not reasons:
        return "no channel has more than one member"
    common = max(set(reasons), key=reasons.count)
    return common


def measured_cost(proto: onnx.ModelProto, input_shapes) -> Cost:
    """MACs and parameters counted on a (pruned) model by analysing it afresh."""
    _, analysis, cost = prepare(proto, input_shapes)
    return cost.evaluate(analysis.full_keep())


def inspect_model(source, input_shapes=None, analysis: Analysis | None = None) -> dict:
    """Per-layer costs, channel groups and blockers, as plain data (rendered by the CLI/report).
    ``analysis`` (of ``source``, a Model) saves analysing it again."""
    if analysis is None:
        model, analysis, cost = prepare(source, input_shapes)
    else:
        model, cost = analysis.model, CostModel(analysis)
    keep = analysis.full_keep()
    total = cost.evaluate(keep)
    per_node = cost.per_node(keep)
    group_of_dim = {}
    for g in analysis.groups:
        for d in g.dims:
            group_of_dim.setdefault(d, []).append(g.id)
    observed = _observed_labels(analysis)
    activation_dim = {}  # variable tensor -> its channel dim (the producer's, created first)
    for d in analysis.dims:
        if not d.constant:
            activation_dim.setdefault(d.tensor, d.id)
    layers = []
    for i, node in enumerate(model.graph.nodes):
        if i not in per_node:
            continue
        y = node.outputs[0] if node.outputs else None
        out_groups = sorted({gid for d in analysis.dims if d.node == i and d.role in ("out", "depthwise") for gid in group_of_dim.get(d.id, [])})
        if not out_groups and not per_node[i].macs and y is not None and y.name in activation_dim:
            # A layer with parameters but no MACs (BatchNormalization, PRelu, a per-channel scale):
            # its output channels are its input's, and its parameters go with that group.
            out_groups = sorted(group_of_dim.get(activation_dim[y.name], []))
        in_groups = sorted({gid for d in analysis.dims if d.node == i and d.role == "in" for gid in group_of_dim.get(d.id, [])})
        layers.append({
            "index": i,
            "name": node.name,
            "op": node.op,
            "output_shape": list(y.shape) if y is not None and y.shape is not None else None,
            "macs": per_node[i].macs,
            "params": per_node[i].params,
            "out_groups": out_groups,
            "in_groups": in_groups,
            "prunable": any(analysis.groups[g].prunable for g in out_groups),
            "blocked": sorted({r for g in out_groups for r in analysis.groups[g].blocked}),
        })
    groups = [{
        "id": g.id,
        "name": g.name,
        "size": g.size,
        "prunable": g.prunable,
        "blocked": g.blocked,
        "dims": [analysis.dims[d].label for d in g.dims],
        "producers": [analysis.dims[d].label for d in g.dims if analysis.dims[d].role == "out"],
        "consumers": [analysis.dims[d].label for d in g.dims if analysis.dims[d].role == "in"],
        "output": [label for dim, label in observed if dim in g.atom_index],
    } for g in analysis.groups]
    prunable_macs = sum(l["macs"] for l in layers if l["prunable"])
    return {
        "model": {
            "path": model.path,
            "fingerprint": model.fingerprint,
            "opset": next((i.version for i in model.proto.opset_import if i.domain in ("", "ai.onnx")), None),
            "ir_version": model.proto.ir_version,
            "producer": f"{model.proto.producer_name} {model.proto.producer_version}".strip(),
            "inputs": {k: list(v) for k, v in model.input_shapes.items()},
            "outputs": [o.name for o in model.proto.graph.output],
            "nodes": len(model.graph.nodes),
        },
        "macs": total.macs,
        "params": total.params,
        "prunable_macs_share": prunable_macs / total.macs if total.macs else 0.0,
        "layers": layers,
        "groups": groups,
        "blockers": [{"reason": r, "macs_share": round(s, 6)} for r, s in main_blockers(analysis, cost)],
    }


def _observed_labels(analysis: Analysis) -> list[tuple[int, str]]:
    """(dim id, ``tensor[axis k]``) of every activation the data criteria observe: where a group's
    channels leave their BatchNormalization/activation chain and are read by the next weighted
    layer (before a global pooling that feeds a fully connected layer)."""
    return [(o.dim, f"{o.tensor}[axis {o.axis}]") for o in observations(analysis).values()]
