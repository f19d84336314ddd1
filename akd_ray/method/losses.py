"""Distillation losses, each a plain function of logits. Shapes: logits (batch, classes).

annealing_loss   Annealing-KD stage I (Jafari et al., EACL 2021):
                 MSE(z_s, phi(T) * z_t), on raw logits, mean over batch and classes.
kd_loss          Hinton et al. 2015: (1 - alpha) * CE(z_s, y) + alpha * T^2 * KL(p_t^T || p_s^T),
                 with p^T = softmax(z / T) and the KL summed over classes, averaged over samples.
hard_label_loss  Stage II and the `scratch` baseline: CE on labels, MSE for regression (STS-B).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def annealing_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, phi: float) -> torch.Tensor:
    return F.mse_loss(student_logits.float(), phi * teacher_logits.float())


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            alpha: float, temperature: float) -> torch.Tensor:
    s, t = student_logits.float(), teacher_logits.float()
    soft = F.kl_div(F.log_softmax(s / temperature, dim=-1), F.log_softmax(t / temperature, dim=-1),
                    reduction="batchmean", log_target=True)
    hard = F.cross_entropy(s, labels)
    return (1.0 - alpha) * hard + alpha * temperature**2 * soft


def hard_label_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if student_logits.shape[-1] == 1:  # regression head (STS-B)
        return F.mse_loss(student_logits.float().squeeze(-1), labels.float())
    return F.cross_entropy(student_logits.float(), labels)


def regression_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                       alpha: float) -> torch.Tensor:
    """KD for a regression head has no softmax: blend MSE to the label and MSE to the teacher."""
    s = student_logits.float().squeeze(-1)
    return (1.0 - alpha) * F.mse_loss(s, labels.float()) + alpha * F.mse_loss(s, teacher_logits.float().squeeze(-1))
