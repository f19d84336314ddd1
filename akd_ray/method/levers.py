"""The talk's two other levers against the capacity gap, as pure functions. Imports torch only.

Intermediate-layer matching (the *model* lever), method `layers`, on Patient KD's scale:

    L_layers = mean over mapped pairs (i, j) of  mean over the batch of  || u_s^i - u_t^j ||_2^2,
    u_s^i = P_i(h_s^i) / ||P_i(h_s^i)||_2,   u_t^j = h_t^j / ||h_t^j||_2

h_s^i is the student's i-th hidden representation, h_t^j the teacher's j-th, both (batch, width);
P_i a learned linear map (no bias) when the widths differ, else the identity. Both sides are
L2-normalised per example, so each example's term is 2 - 2 cos(P_i h_s^i, h_t^j), in [0, 4] at any
width: the *summed* squared distance of Patient KD's L_PT (Sun et al., EMNLP 2019, arXiv 1908.09355,
eq. 3), averaged over examples and pairs where the paper sums. (A mean over the width as well, as
`F.mse_loss` takes, gives (2 - 2 cos) / width: 1/768 as strong on BERT-base, which PKD's released code
offsets with beta in {10, ..., 1000}; here beta is on the scale of the other losses.) Transformers
compare each layer's [CLS] state, ResNets each stage's pooled output (the 1x1 projection of a pooled
map is a linear map), MLPs each hidden layer. The pairs (`layer_pairs`, layers counted from 1 below,
from 0 in code):

    uniform  student layer i <-> teacher layer ceil(i * L_t / L_s)                (PKD-Skip-like)
    last     student layer i <-> teacher layer L_t - L_s + i, pairs below 1 dropped
             (PKD-Last, Sun et al., EMNLP 2019)
    random   each epoch a fresh sorted random subset of L_s teacher layers, student layer i <-> the
             i-th of them (RAIL-KD, Haidar et al., Findings of NAACL 2022, arXiv 2109.10164); a student
             as deep as the teacher or deeper has no subset to draw and falls back to `uniform`

Divergence-seeking augmentation (the *data* lever), method `minimax`: a perturbation delta of the
input found by projected gradient ascent (Madry et al., ICLR 2018) on the very divergence the student
then minimises on the perturbed samples (`divergence`, per example; `perturbed_loss` is its mean):

    delta* ~ argmax_{||delta|| <= eps} D_stage(z_s(x + delta), z_t(x + delta))

    D_anneal = mean_k (z_s,k - phi(T) z_t,k)^2         Annealing-KD's stage I, at the current phi(T)
    D_kd     = T^2 KL(p_t^T || p_s^T),  T = kd_temperature    KD, and the lone `minimax` (its own T)
    D        = (z_s - z_t)^2                            a regression head (one output)

from delta = 0, `steps` steps of size 2.5 * eps / steps: sign steps in an L-inf ball for pixels and
flat features, normalised-gradient steps in a per-token L2 ball for input embeddings. The student
then learns the teacher's outputs on x + delta* (`perturbed_loss`) beside its loss on x.

How this follows MATE-KD (Rashid et al., ACL 2021, arXiv 2105.05912): a min-max game on one
divergence between teacher and student outputs -- the maximising side seeks the samples where the
student departs most from the teacher, and the student is then distilled on them beside the
originals. Where it differs: MATE-KD's maximising side is a masked-LM *generator* (a separate
network, trained each step to raise the divergence, that rewrites masked tokens); here there is no
generator to train or to have at hand: the perturbation is
found afresh per batch by a few gradient-ascent steps inside eps, in a continuous input space (pixels,
or the embedding vectors of the given tokens), so it works for images and any model with input
embeddings but never produces new tokens; and in Annealing-KD's stage I the divergence is that stage's
MSE to phi(T) * z_t, since that is what the student minimises there.
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
                        project: Callable[[int, torch.Tensor, int], torch.Tensor] | None = None) -> torch.Tensor:
    """Mean over `pairs` and the batch of ||P_i(h_s^i)/||.|| - h_t^j/||.|| ||^2, summed over the width
    (= 2 - 2 cos per example; see the module docstring). `project(i, h, width)` maps student layer
    i's states to `width` (the identity when None)."""
    terms = []
    for i, j in pairs:
        t = teacher_hidden[j].float()
        s = student_hidden[i].float()
        if project is not None:
            s = project(i, s, t.shape[-1])
        s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
        terms.append((s - t).pow(2).sum(-1).mean())
    return torch.stack(terms).mean()


# ---------------------------------------------------------------------------------------- minimax
def divergence(stage_loss: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               phi: float | None, temperature: float) -> torch.Tensor:
    """Per example, the divergence the student minimises on perturbed samples in a stage whose own loss
    is `stage_loss` (the module docstring's D_stage): the ascent maximises it, `perturbed_loss` is its
    mean. `anneal`: mean over classes of (z_s - phi z_t)^2; otherwise T^2 KL(p_t^T || p_s^T) summed over
    classes; a regression head (one output): (z_s - z_t)^2."""
    s, t = student_logits.float(), teacher_logits.float()
    if stage_loss == "anneal":
        return (s - phi * t).pow(2).mean(-1)
    if s.shape[-1] == 1:
        return (s - t).squeeze(-1) ** 2
    return temperature ** 2 * F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                                       reduction="none", log_target=True).sum(-1)


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
    perturbed sample may not keep its class): the batch mean of `divergence`. In Annealing-KD's stage I
    (`anneal`) the same target as on clean samples, MSE(z_s, phi(T) * z_t); otherwise Hinton's soft term
    T^2 * KL(p_t^T || p_s^T) (MSE to z_t for a regression head)."""
    return divergence(stage_loss, student_logits, teacher_logits, phi, temperature).mean()
