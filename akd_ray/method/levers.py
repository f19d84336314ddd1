"""The talk's two other levers against the capacity gap, as pure functions. Imports torch only.

Intermediate-layer matching (the *model* lever), method `layers`:

    L_layers = mean over mapped pairs (i, j) of MSE(P_i(h_s^i), h_t^j)

h_s^i is the student's i-th hidden representation, h_t^j the teacher's j-th, both (batch, width);
P_i a learned linear map (no bias) when the widths differ, else the identity. Transformers compare
each layer's [CLS] state, both sides L2-normalised after P (their scales differ from layer to
layer); ResNets each stage's pooled output (the 1x1 projection of a pooled map is a linear map);
MLPs each hidden layer. The pairs (`layer_pairs`, layers counted from 1 below, from 0 in code):

    uniform  student layer i <-> teacher layer ceil(i * L_t / L_s)                (PKD-Skip-like)
    last     student layer i <-> teacher layer L_t - L_s + i, pairs below 1 dropped
             (PKD-Last, Sun et al., EMNLP 2019)
    random   each epoch a fresh sorted random subset of L_s teacher layers, student layer i <-> the
             i-th of them (RAIL-KD, Haidar et al., COLING 2022); a student as deep as the teacher or
             deeper has no subset to draw and falls back to `uniform`

Divergence-seeking augmentation (the *data* lever), method `minimax`: a perturbation delta of the
input found by projected gradient ascent (Madry et al., ICLR 2018) on the teacher-student divergence

    delta* ~ argmax_{||delta|| <= eps} D(x + delta),  D = KL(p_t || p_s)  (MSE for a regression head)

from delta = 0, `steps` steps of size 2.5 * eps / steps: sign steps in an L-inf ball for pixels and
flat features, normalised-gradient steps in a per-token L2 ball for input embeddings. The student
then learns the teacher's outputs on x + delta* (`perturbed_loss`) beside its loss on x.

How this differs from MATE-KD (Rashid et al., ACL 2021): MATE-KD trains a masked-LM *generator*
adversarially (a separate network, updated each step, that rewrites tokens) and samples discrete
text from it; here there is no generator to train or to have at hand: the perturbation is found
afresh per batch by a few gradient steps, in a continuous input space (pixels, or the embedding
vectors of the given tokens), so it works for images and any model with input embeddings but never
produces new tokens.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

MAPPINGS = ("uniform", "last", "random")
STEP_SCALE = 2.5  # step = 2.5 * eps / steps: the ascent can cross the ball (Madry et al. 2018)


# ---------------------------------------------------------------------------------------- layers
def layer_pairs(mapping: str, student_layers: int, teacher_layers: int,
                generator: torch.Generator | None = None) -> list[tuple[int, int]]:
    """(student, teacher) layer indices, 0-based, as `mapping` pairs them (see the module docstring)."""
    s, t = student_layers, teacher_layers
    if s < 1 or t < 1:
        raise ValueError(f"layer matching needs at least one hidden layer on each side, got student {s}, teacher {t}")
    if mapping == "uniform" or (mapping == "random" and s >= t):
        return [(i - 1, math.ceil(i * t / s) - 1) for i in range(1, s + 1)]
    if mapping == "last":
        return [(i - 1, t - s + i - 1) for i in range(1, s + 1) if t - s + i >= 1]
    if mapping == "random":
        chosen = sorted(torch.randperm(t, generator=generator)[:s].tolist())
        return list(enumerate(chosen))
    raise ValueError(f"unknown layer mapping {mapping!r}; valid: {', '.join(MAPPINGS)}")


def layer_matching_loss(student_hidden: list[torch.Tensor], teacher_hidden: list[torch.Tensor],
                        pairs: list[tuple[int, int]],
                        project: Callable[[int, torch.Tensor, int], torch.Tensor] | None = None,
                        normalise: bool = False) -> torch.Tensor:
    """Mean over `pairs` of MSE(P_i(h_s^i), h_t^j) (MSE: mean over batch and width).

    `project(i, h, width)` maps student layer i's states to `width` (the identity when None);
    `normalise` L2-normalises both sides per example first (transformers).
    """
    terms = []
    for i, j in pairs:
        t = teacher_hidden[j].float()
        s = student_hidden[i].float()
        if project is not None:
            s = project(i, s, t.shape[-1])
        if normalise:
            s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
        terms.append(F.mse_loss(s, t))
    return torch.stack(terms).mean()


# ---------------------------------------------------------------------------------------- minimax
def divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Per example: KL(p_t || p_s) summed over classes; a regression head (one output): (z_s - z_t)^2."""
    s, t = student_logits.float(), teacher_logits.float()
    if s.shape[-1] == 1:
        return (s - t).squeeze(-1) ** 2
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="none", log_target=True).sum(-1)


def project_ball(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Back into the ball: L-inf clamps each entry; L2 scales each vector along the last dim to <= eps."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    if norm == "l2":
        scale = (eps / delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
        return delta * scale
    raise ValueError(f"unknown norm {norm!r}; valid: linf, l2")


def ascend(objective: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor, eps: float, steps: int,
           norm: str) -> torch.Tensor:
    """A perturbation shaped like `like` that raises `objective(delta)` (per example, summed): `steps`
    projected gradient-ascent steps from 0 (see the module docstring). Gradients reach delta only, so
    no model parameter collects any."""
    size = STEP_SCALE * eps / steps
    delta = torch.zeros_like(like, dtype=torch.float32)
    for _ in range(steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(delta).sum(), delta)
        with torch.no_grad():
            if norm == "linf":
                step = grad.sign()
            else:  # the steepest L2 step per token: the gradient, normalised along the embedding
                step = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            delta = project_ball(delta + size * step, eps, norm)
    return delta.detach()


def perturbed_loss(stage_loss: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   phi: float | None, temperature: float) -> torch.Tensor:
    """The student's loss on perturbed samples, against the teacher's outputs there (no labels: the
    perturbed sample may not keep its class). In Annealing-KD's stage I (`anneal`) the same target
    as on clean samples, MSE(z_s, phi(T) * z_t); otherwise Hinton's soft term T^2 * KL(p_t^T || p_s^T)
    (MSE to z_t for a regression head)."""
    s, t = student_logits.float(), teacher_logits.float()
    if stage_loss == "anneal":
        return F.mse_loss(s, phi * t)
    if s.shape[-1] == 1:
        return F.mse_loss(s, t)
    return temperature ** 2 * F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                                       reduction="batchmean", log_target=True)
