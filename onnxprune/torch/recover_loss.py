"""Losses of label-free recovery (issue 18) and the runs they need: a module's outputs with
captured intermediate tensors, the kind of each model output, and the intermediate tensors
matched between the pruned model (student) and the original (teacher).

Output kinds: "class" for a 2-D ``[N, C]`` output (``T**2 * KL`` of the tempered softmax), "seq"
for per-position posteriors (a 3-D output whose last axis holds probabilities, log-probabilities
or comes from a (Log)Softmax node: CTC heads), "mse" (normalised MSE ``|s - t|^2 / |t|^2``)
otherwise, and "none" for non-float outputs (not trained).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .module import OnnxModule

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


# --------------------------------------------------------------------------------------------
# Running a module with captured intermediate tensors


def run(module: OnnxModule, inputs: dict[str, torch.Tensor], capture=()) -> tuple[list[torch.Tensor], dict]:
    """The module's outputs (a list) and the tensors named in ``capture``."""
    env = module.environment()
    env.update({n: inputs[n] for n in module.input_names})
    feats = module.execute(env, capture=set(capture))
    return [env[n] for n in module.output_names], feats


# --------------------------------------------------------------------------------------------
# What to match: output kinds and feature tensors


def output_kind(t: torch.Tensor, producer: str | None) -> str:
    """"class" ([N, C] logits or probabilities), "seq" (per-position posteriors) or "mse"."""
    if not t.is_floating_point():
        return "none"
    if t.dim() == 2 and t.shape[1] >= 2:
        return "class"
    if t.dim() == 3 and t.shape[-1] >= 2:
        if producer in ("Softmax", "LogSoftmax") or probabilities(t) or probabilities(t.exp()):
            return "seq"
    return "mse"


def probabilities(t: torch.Tensor) -> bool:
    t = t.double()
    return bool((t >= -1e-6).all()) and bool(torch.allclose(t.sum(-1), torch.ones_like(t.sum(-1)), atol=1e-3))


def as_logits(t: torch.Tensor) -> torch.Tensor:
    """Probabilities become log-probabilities (valid logits); logits stay."""
    if bool((t >= 0).all()) and bool(torch.allclose(t.sum(-1), torch.ones_like(t.sum(-1)), atol=1e-3)):
        return t.clamp_min(1e-12).log()
    return t


def kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over positions of ``T**2 * KL(p_teacher || p_student)`` along the last axis."""
    s = as_logits(student).reshape(-1, student.shape[-1]) / temperature
    t = as_logits(teacher).reshape(-1, teacher.shape[-1]) / temperature
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="sum", log_target=True)
    return kl / s.shape[0] * temperature**2


def nmse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return ((student - teacher) ** 2).sum() / ((teacher**2).sum() + 1e-12)


def output_loss(kinds: list[str], student: list[torch.Tensor], teacher: list[torch.Tensor], temperature: float):
    loss = student[0].new_zeros(())
    for kind, s, t in zip(kinds, student, teacher):
        if kind in ("class", "seq"):
            loss = loss + kl(s, t, temperature)
        elif kind == "mse":
            loss = loss + nmse(s, t)
    return loss


class Matcher:
    """Intermediate tensors of the student matched to the teacher: ``name -> (axis, index)`` or
    ``name -> None`` (same shape). Chosen on a probe batch: inputs of the student's weighted
    layers that the teacher also has, whose shape agrees (directly or through ``channels``) and
    whose values differ (tensors upstream of every change need no matching)."""

    def __init__(self, student: OnnxModule, teacher: OnnxModule, channels: dict, probe: dict, limit: int):
        names = []
        inputs = set(student.input_names) | set(student.output_names)
        for node in student.nodes:
            if node.op in WEIGHTED_OPS and node.inputs and node.inputs[0] not in inputs:
                names.append(node.inputs[0])
        names = list(dict.fromkeys(names))
        with torch.no_grad():
            _, s_feats = run(student, probe, names)
            _, t_feats = run(teacher, probe, names)
        self.select: dict[str, tuple[int, torch.Tensor] | None] = {}
        for name in names:
            s, t = s_feats.get(name), t_feats.get(name)
            if s is None or t is None or not s.is_floating_point():
                continue
            how = self.how(name, s, t, channels)
            if how is False:
                continue
            if torch.equal(s, self.pick(t, how)):
                continue
            self.select[name] = how
        if len(self.select) > limit:  # evenly spaced along the network
            keys = list(self.select)
            picked = {keys[round(i * (len(keys) - 1) / (limit - 1))] for i in range(limit)} if limit > 1 else {keys[-1]}
            self.select = {k: v for k, v in self.select.items() if k in picked}

    @staticmethod
    def how(name, s, t, channels):
        if s.shape == t.shape:
            return None
        if name in channels and s.dim() == t.dim():
            axis, idx = channels[name]
            idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
            shape = list(t.shape)
            shape[axis] = len(idx)
            if list(s.shape) == shape:
                return axis, idx
        return False

    @staticmethod
    def pick(t: torch.Tensor, how) -> torch.Tensor:
        if how is None:
            return t
        axis, idx = how
        return t.index_select(axis, idx.to(t.device))

    def loss(self, s_feats: dict, t_feats: dict) -> torch.Tensor | None:
        terms = [nmse(s_feats[n], self.pick(t_feats[n], how)) for n, how in self.select.items()]
        return torch.stack(terms).mean() if terms else None


def snapshot(module: OnnxModule) -> dict:
    """A detached copy of the module's state (the best state so far)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
