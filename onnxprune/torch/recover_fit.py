"""The optimisation loop of label-free recovery (issue 18), shared by the global and the
block-wise trainers: Adam with a linear warm-up and a cosine schedule, held-out evaluations about
EVALUATIONS times per run, the best state kept, and a step budget that a time budget fixes after
the warm-up (so the schedule is step-based and a run can be replayed step for step).
"""

from __future__ import annotations

import math
import time

import torch

from .module import OnnxModule
from .recover_loss import snapshot

PROBE = 2  # samples that show which intermediate tensors changed and how they match
WARMUP_STEPS = 3  # linear warm-up; the time budget fixes the step count at its end
EVALUATIONS = 20  # held-out evaluations over a run


def lr_at(base: float, step: int, total: int) -> float:
    """Linear warm-up over WARMUP_STEPS, then cosine to 0 at ``total``."""
    if step < WARMUP_STEPS:
        return base * (step + 1) / WARMUP_STEPS
    span = max(1, total - WARMUP_STEPS)
    return 0.5 * base * (1.0 + math.cos(math.pi * min(step - WARMUP_STEPS, span) / span))


class Budget:
    """Steps and seconds of one fit. Without ``replay`` the number of steps is fixed once the
    warm-up steps have measured how long a step takes; with ``replay`` it is the recorded one."""

    def __init__(self, deadline: float, by_steps: int, eval_seconds: float, replay: dict | None):
        self.deadline, self.eval_seconds = deadline, eval_seconds
        self.planned = replay["planned_steps"] if replay else by_steps
        self.stop_at = replay["steps"] if replay else None
        self.replay = replay is not None
        self.why = "steps"

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def plan(self, done: int, seconds_per_step: float) -> None:
        """After the warm-up: how many steps fit in the time left (evaluations included)."""
        if self.replay:
            return
        evaluations = min(EVALUATIONS, max(1, self.planned - done)) + 1
        fit = done + max(0, int((self.left() - self.eval_seconds * evaluations) / max(seconds_per_step, 1e-9)))
        if fit < self.planned:
            self.planned, self.why = max(done, fit), "time"

    def more(self, step: int) -> bool:
        if self.stop_at is not None:
            return step < self.stop_at
        if step >= self.planned:
            return False
        if self.left() <= self.eval_seconds:
            self.why = "time"
            return False
        return True


def fit(module: OnnxModule, params: list, batch_loss, n_train: int, evaluate, budget: Budget, settings,
        generator: torch.Generator, progress=None, label: str = "") -> tuple[dict | None, dict]:
    """Adam on ``params`` over shuffled batches of ``range(n_train)`` (``batch_loss(index)`` gives
    the loss), held-out ``evaluate()`` about EVALUATIONS times; returns (best state of ``module``
    or None when nothing beat the start, report items)."""
    te = time.perf_counter()
    start = evaluate()
    budget.eval_seconds = time.perf_counter() - te
    bs = min(settings.batch_size, n_train)
    opt = torch.optim.Adam(params, lr=settings.lr)
    best, best_step, best_state = start, 0, None
    history = [{"step": 0, **start}]
    step, stale, why = 0, 0, None
    tw = time.perf_counter()

    def record(score: dict) -> bool:
        nonlocal best, best_step, best_state
        history.append({"step": step, **score})
        if progress is not None:
            progress({"event": "eval", "block": label, "step": step, **score})
        if score["loss"] < best["loss"] * (1 - 1e-4):
            best, best_step, best_state = score, step, snapshot(module)
            return True
        return False

    module.train()
    while why is None:
        order = torch.randperm(n_train, generator=generator)
        for begin in range(0, n_train, bs):
            if step == WARMUP_STEPS:  # before the check: the plan may end the run here
                budget.plan(step, (time.perf_counter() - tw) / step)
            if not budget.more(step):
                why = budget.why
                break
            every = max(1, math.ceil(budget.planned / EVALUATIONS)) if step >= WARMUP_STEPS else None
            loss = batch_loss(order[begin : begin + bs])
            if not torch.isfinite(loss):
                why = f"loss became {float(loss.detach())} at step {step}"
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(settings.lr, step, budget.planned)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if progress is not None:
                progress({"event": "step", "block": label, "step": step, "total": budget.planned,
                          "loss": float(loss.detach()), "seconds_left": budget.left()})
            if (every and step % every == 0) or step == budget.planned:
                stale = 0 if record(evaluate()) else stale + 1
                # Off by default: the held-out loss often rises at the high learning rate of the
                # first steps and falls late (VGG-11 at 50% stopped after 60 steps, unchanged).
                if settings.patience and stale >= settings.patience and step >= budget.planned // 2 and not budget.replay:
                    why = f"early stop: no held-out improvement in {stale} evaluations"
                    break
    if step and history[-1]["step"] != step:  # the budget ended between evaluations
        record(evaluate())
    info = {"heldout_before": start, "heldout_after": best, "steps": step, "planned_steps": budget.planned,
            "kept": f"step {best_step}" if best_state is not None else "unchanged", "stopped": why,
            "history": history, "replay": {"planned_steps": budget.planned, "steps": step}}
    return best_state, info
