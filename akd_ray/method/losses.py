"""Distillation losses, each a plain function of logits. Shapes: logits (batch, classes).

annealing_loss   Annealing-KD stage I (Jafari et al., EACL 2021):
                 MSE(z_s, phi(T) * z_t), on raw logits, mean over batch and classes.
kd_loss          Hinton et al. 2015: (1 - alpha) * CE(z_s, y) + alpha * T^2 * KL(p_t^T || p_s^T),
                 with p^T = softmax(z / T) and the KL summed over classes, averaged over samples.
hard_label_loss  Stage II and the `scratch` baseline: CE on labels, MSE for regression (STS-B).

Few labels (a batch of labelled and unlabelled rows): a term on labels takes the batch's `labelled`
mask and is the mean over the labelled rows only, sum / `n_labelled` (default: how many the batch
holds); a term on the teacher is the mean over every row. So each term keeps its scale however
many labelled rows a batch holds, and an unlabelled row's label is never read (it is replaced
before any arithmetic, so even a NaN cannot reach a gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def annealing_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, phi: float) -> torch.Tensor:
    return F.mse_loss(student_logits.float(), phi * teacher_logits.float())


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            alpha: float, temperature: float, labelled: torch.Tensor | None = None,
            n_labelled: torch.Tensor | float | None = None) -> torch.Tensor:
    s, t = student_logits.float(), teacher_logits.float()
    soft = F.kl_div(F.log_softmax(s / temperature, dim=-1), F.log_softmax(t / temperature, dim=-1),
                    reduction="batchmean", log_target=True)
    hard = hard_label_loss(s, labels, labelled, n_labelled)
    return (1.0 - alpha) * hard + alpha * temperature**2 * soft


def hard_label_loss(student_logits: torch.Tensor, labels: torch.Tensor, labelled: torch.Tensor | None = None,
                    n_labelled: torch.Tensor | float | None = None) -> torch.Tensor:
    """CE on labels (MSE for a regression head); with `labelled`, over the labelled rows only."""
    s = student_logits.float()
    regression = s.shape[-1] == 1  # STS-B
    if labelled is None:
        return F.mse_loss(s.squeeze(-1), labels.float()) if regression else F.cross_entropy(s, labels)
    labels = torch.where(labelled, labels, torch.zeros_like(labels))  # the unlabelled rows' labels, unread
    per_row = (F.mse_loss(s.squeeze(-1), labels.float(), reduction="none") if regression
               else F.cross_entropy(s, labels, reduction="none"))
    return masked_mean(per_row, labelled, n_labelled)


def masked_mean(per_row: torch.Tensor, labelled: torch.Tensor, n_labelled: torch.Tensor | float | None = None
                ) -> torch.Tensor:
    """sum of `per_row` over the labelled rows / `n_labelled` (0 when there are none)."""
    total = torch.where(labelled, per_row, torch.zeros_like(per_row)).sum()
    n = labelled.sum() if n_labelled is None else torch.as_tensor(n_labelled, device=per_row.device)
    return total / torch.where(n > 0, n, torch.ones_like(n)).to(total.dtype)


def regression_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                       alpha: float, labelled: torch.Tensor | None = None,
                       n_labelled: torch.Tensor | float | None = None) -> torch.Tensor:
    """KD for a regression head has no softmax: blend MSE to the label and MSE to the teacher."""
    s = student_logits.float()
    return ((1.0 - alpha) * hard_label_loss(s, labels, labelled, n_labelled)
            + alpha * F.mse_loss(s.squeeze(-1), teacher_logits.float().squeeze(-1)))
