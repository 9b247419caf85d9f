"""Block-wise recovery (BRECQ, Li et al. 2021): refit one block after the other.

The pruned graph is cut where a single activation carries everything forward (a residual
block's output, the tensor between two plain conv layers). Each block holds at least one
weighted layer. Block k learns, with its own weights only, to map the recovered prefix's output
(cached: blocks before it are final) to the original model's tensor at the same cut (its kept
channels, when pruning shrank it); the last block matches the model outputs with the output
loss. Every block keeps its best held-out state; the whole model is then scored on the held-out
samples, and the result is kept only if it beats the start.
"""

from __future__ import annotations

import math
import time

import torch

from .recover_fit import PROBE, Budget, fit
from .recover_loss import WEIGHTED_OPS, Matcher, nmse, output_loss, run, snapshot

PROPAGATE = 0.15  # share of the time budget left for passing the samples through trained blocks


def cut_points(module) -> list[tuple[int, str]]:
    """``(node index, tensor)`` where, after that node, ``tensor`` is the only live activation."""
    nodes = module.nodes
    constants = module.constant_names
    last: dict[str, int] = {}
    for i, nd in enumerate(nodes):
        for v in nd.inputs:
            if v and v not in constants:
                last[v] = i
    for o in module.output_names:
        last[o] = len(nodes)
    live = {v for v in module.input_names if v in last}
    cuts = []
    for i, nd in enumerate(nodes):
        live |= {o for o in nd.outputs if o and last.get(o, -1) > i}
        live = {v for v in live if last.get(v, -1) > i}
        if len(live) == 1:
            (only,) = live
            if only not in module.output_names and only not in module.input_names:
                cuts.append((i, only))
    return cuts


def blocks(module, matchable: set[str]) -> list[tuple[int, int, str | None]]:
    """``(start, stop, output tensor or None for the model outputs)`` node ranges; a block ends
    at the last matchable cut before the next weighted layer, so activations stay in the block."""
    nodes = module.nodes
    cut_at = {i: t for i, t in cut_points(module) if t in matchable}
    out, start, weighted, candidate = [], 0, False, None
    for i, nd in enumerate(nodes):
        if nd.op in WEIGHTED_OPS:
            if candidate is not None:
                out.append((start, candidate[0] + 1, candidate[1]))
                start, candidate = candidate[0] + 1, None
            weighted = True
        if weighted and i in cut_at:
            candidate = (i, cut_at[i])
    out.append((start, len(nodes), None))
    return out


def _block_params(module, start: int, stop: int) -> list[torch.nn.Parameter]:
    used = {v for nd in module.nodes[start:stop] for v in nd.inputs}
    return [p for name, p in module.onnx_parameters() if name in used and p.requires_grad]


def _run_block(module, start, stop, inputs: dict, out_name):
    env = module.environment()
    env.update(inputs)
    module.execute(env, start, stop, {out_name} if out_name else set())
    return env[out_name] if out_name else [env[n] for n in module.output_names]


def _chunks(n: int, size: int):
    for begin in range(0, n, size):
        yield torch.arange(begin, min(n, begin + size))


def train_blockwise(student, teacher, samples, heldout, kinds, channels, settings, t0, progress, replay):
    """Returns (best state or None, report items) like the global trainer."""
    probe = samples.take(samples.train[: min(PROBE, len(samples.train))])
    ends = _block_ends(student, teacher, probe, channels)
    plan = blocks(student, set(ends))
    outs = [o for _, _, o in plan if o]
    bs = settings.batch_size
    with torch.no_grad():  # teacher targets at every block output (train and held-out)
        targets = {"train": {o: [] for o in outs}, "held": {o: [] for o in outs}}
        for part, index in (("train", samples.train), ("held", samples.heldout)):
            for batch in samples.chunks(index, bs):
                _, feats = run(teacher, batch, outs)
                for o in outs:
                    targets[part][o].append(Matcher.pick(feats[o], ends[o]))
        targets = {p: {o: torch.cat(v) for o, v in d.items()} for p, d in targets.items()}
        current = {"train": samples.take(samples.train), "held": samples.take(samples.heldout)}
    start_score = heldout.score(student)
    generator = torch.Generator().manual_seed(settings.seed + 1)
    n_train = len(samples.train)
    by_steps = settings.steps if settings.steps is not None else settings.epochs * math.ceil(n_train / min(bs, n_train))
    per_block = by_steps  # each block gets the epochs; the time is shared
    steps, infos = 0, []
    replays = (replay or {}).get("blocks")
    for k, (start, stop, out_name) in enumerate(plan):
        inputs = current

        def batch_loss(index, inputs=inputs, start=start, stop=stop, out_name=out_name):
            x = {n: t[index] for n, t in inputs["train"].items()}
            y = _run_block(student, start, stop, x, out_name)
            if out_name is None:
                return output_loss(kinds, y, [t[index] for t in targets["train"]["__outputs__"]], settings.temperature)
            return nmse(y, targets["train"][out_name][index])

        if out_name is None:
            with torch.no_grad():
                targets["train"]["__outputs__"] = _teacher_outputs(teacher, samples, samples.train, bs)

        @torch.no_grad()
        def evaluate(inputs=inputs, start=start, stop=stop, out_name=out_name):
            if out_name is None:
                return heldout.score(student)
            was = student.training
            student.eval()
            err = ref = 0.0
            for index in _chunks(len(samples.heldout), bs):
                y = _run_block(student, start, stop, {n: t[index] for n, t in inputs["held"].items()}, out_name)
                t = targets["held"][out_name][index]
                err += float(((y.double() - t.double()) ** 2).sum())
                ref += float((t.double() ** 2).sum())
            student.train(was)
            return {"loss": err / max(ref, 1e-30)}

        left_blocks = len(plan) - k
        # PROPAGATE of the time stays for passing the samples through the trained blocks
        end = t0 + settings.budget * (1 - PROPAGATE)
        deadline = time.perf_counter() + (end - time.perf_counter()) / left_blocks
        budget = Budget(deadline, per_block, 0.0, replays[k] if replays else None)
        params = _block_params(student, start, stop)
        before = snapshot(student)
        state, info = fit(student, params, batch_loss, n_train, evaluate, budget, settings, generator,
                          progress, label=str(k)) if params else (None, {"steps": 0, "replay": None})
        student.load_state_dict(state if state is not None else before)  # a block that did not improve is reset
        steps += info["steps"]
        infos.append(info.get("replay"))
        if out_name is not None:  # the next block starts from this block's recovered output
            with torch.no_grad():
                student.eval()
                current = {p: {out_name: torch.cat([_run_block(student, start, stop,
                                                               {n: t[i] for n, t in current[p].items()}, out_name)
                                                    for i in _chunks(len(next(iter(current[p].values()))), bs)])}
                           for p in ("train", "held")}
                student.train()
    final = heldout.score(student)
    better = final["loss"] < start_score["loss"] * (1 - 1e-4)
    info = {"heldout_before": start_score, "heldout_after": final if better else start_score, "steps": steps,
            "planned_steps": by_steps, "kept": "blocks" if better else "unchanged", "stopped": "blocks done",
            "blocks": len(plan), "features": len(outs), "replay": {"blocks": infos}}
    return (snapshot(student) if better else None), info


def _teacher_outputs(teacher, samples, index, bs):
    parts = [run(teacher, b)[0] for b in samples.chunks(index, bs)]
    return [torch.cat([p[k] for p in parts]) for k in range(len(parts[0]))]


def _block_ends(student, teacher, probe, channels) -> dict:
    """Cut tensors of the student that the teacher also computes, with how to match them."""
    cuts = [t for _, t in cut_points(student)]
    with torch.no_grad():
        _, s = run(student, probe, cuts)
        _, t = run(teacher, probe, cuts)
    hows = {n: Matcher.how(n, s[n], t[n], channels) for n in cuts if n in s and n in t}
    return {n: how for n, how in hows.items() if how is not False}
