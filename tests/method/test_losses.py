"""Distillation losses against values worked out by hand on a 2 x 3 batch of logits."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from akd_ray.method.losses import annealing_loss, hard_label_loss, kd_loss, regression_kd_loss

STUDENT = [[1.0, 2.0, 3.0], [0.0, -1.0, 1.0]]
TEACHER = [[2.0, 0.0, 4.0], [1.0, 1.0, -2.0]]
LABELS = [2, 0]


def tensors():
    return torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS)


def softmax(row, T=1.0):
    exps = [math.exp(z / T) for z in row]
    return [e / sum(exps) for e in exps]


def cross_entropy(logits, labels):
    return sum(-math.log(softmax(row)[y]) for row, y in zip(logits, labels)) / len(logits)


def kl(teacher, student, T):
    """KL(p_t^T || p_s^T), summed over classes, averaged over the batch."""
    total = 0.0
    for t_row, s_row in zip(teacher, student):
        p_t, p_s = softmax(t_row, T), softmax(s_row, T)
        total += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    return total / len(teacher)


# ---------------------------------------------------------------------------------------- annealing
def test_annealing_loss_half_scaled_teacher():
    s, t, _ = tensors()
    # phi * t = [[1, 0, 2], [0.5, 0.5, -1]]; s - phi t = [[0, 2, 1], [-0.5, -1.5, 2]]
    # squares 0 + 4 + 1 + 0.25 + 2.25 + 4 = 11.5, mean over 6 entries
    assert annealing_loss(s, t, 0.5).item() == pytest.approx(11.5 / 6)


def test_annealing_loss_real_teacher():
    s, t, _ = tensors()
    # s - t = [[-1, 2, -1], [-1, -2, 3]]; squares sum to 1 + 4 + 1 + 1 + 4 + 9 = 20
    assert annealing_loss(s, t, 1.0).item() == pytest.approx(20 / 6)


def test_annealing_loss_is_zero_on_the_scaled_teacher():
    _, t, _ = tensors()
    assert annealing_loss(0.25 * t, t, 0.25).item() == 0.0


def test_annealing_loss_reaches_only_the_student():
    s, t, _ = tensors()
    s.requires_grad_(True)
    annealing_loss(s, t, 0.5).backward()
    # d/ds mean((s - phi t)^2) = 2 (s - phi t) / 6
    expected = torch.tensor([[0.0, 4.0, 2.0], [-1.0, -3.0, 4.0]]) / 6
    assert torch.allclose(s.grad, expected)


def test_annealing_loss_computes_in_fp32_from_bf16():
    s, t, _ = tensors()
    loss = annealing_loss(s.bfloat16(), t.bfloat16(), 0.5)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(11.5 / 6)  # these logits are exact in bf16


# ---------------------------------------------------------------------------------------- Hinton KD
@pytest.mark.parametrize("alpha, T", [(0.5, 4.0), (0.9, 2.0), (0.3, 1.0)])
def test_kd_loss_matches_explicit_formula(alpha, T):
    s, t, y = tensors()
    expected = (1 - alpha) * cross_entropy(STUDENT, LABELS) + alpha * T**2 * kl(TEACHER, STUDENT, T)
    assert kd_loss(s, t, y, alpha, T).item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_golden():
    s, t, y = tensors()
    # CE: row 1 -log(e^3 / (e + e^2 + e^3)) = 0.40760596, row 2 -log(1 / (1 + e^-1 + e)) = 1.40760596
    assert cross_entropy(STUDENT, LABELS) == pytest.approx(0.90760596)
    assert kd_loss(s, t, y, 0.0, 4.0).item() == pytest.approx(0.90760596, rel=1e-6)


def test_kd_loss_alpha_one_is_only_the_soft_term():
    s, t, y = tensors()
    expected = 4.0**2 * kl(TEACHER, STUDENT, 4.0)
    assert kd_loss(s, t, y, 1.0, 4.0).item() == pytest.approx(expected, rel=1e-5)
    assert kd_loss(t, t, y, 1.0, 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_soft_term_is_averaged_over_samples_not_classes():
    # The same rows twice give the same loss (a sum over the batch would double it), and the KL is
    # summed over the 3 classes (a mean over classes would be a third of `kl`).
    s, t, y = tensors()
    one = kd_loss(s, t, y, 1.0, 2.0).item()
    two = kd_loss(torch.cat([s, s]), torch.cat([t, t]), torch.cat([y, y]), 1.0, 2.0).item()
    assert two == pytest.approx(one, rel=1e-6)
    assert one == pytest.approx(4.0 * kl(TEACHER, STUDENT, 2.0), rel=1e-5)


# ---------------------------------------------------------------------------------------- hard labels
def test_hard_label_loss_classification():
    s, _, y = tensors()
    assert hard_label_loss(s, y).item() == pytest.approx(0.90760596, rel=1e-6)


def test_hard_label_loss_regression_head():
    s = torch.tensor([[0.5], [2.0]])
    y = torch.tensor([1.0, 1.0])
    # ((0.5 - 1)^2 + (2 - 1)^2) / 2 = (0.25 + 1) / 2
    assert hard_label_loss(s, y).item() == pytest.approx(0.625)


def test_hard_label_loss_regression_takes_integer_labels():
    assert hard_label_loss(torch.tensor([[1.0], [3.0]]), torch.tensor([1, 1])).item() == pytest.approx(2.0)


# ---------------------------------------------------------------------------------------- regression KD
def test_regression_kd_loss_blend():
    s = torch.tensor([[0.5], [2.0]])
    t = torch.tensor([[1.5], [2.0]])
    y = torch.tensor([1.0, 1.0])
    # label MSE (0.25 + 1) / 2 = 0.625, teacher MSE (1 + 0) / 2 = 0.5
    # 0.75 * 0.625 + 0.25 * 0.5 = 0.46875 + 0.125
    assert regression_kd_loss(s, t, y, 0.25).item() == pytest.approx(0.59375)
    assert regression_kd_loss(s, t, y, 0.0).item() == pytest.approx(0.625)
    assert regression_kd_loss(s, t, y, 1.0).item() == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------- imports
def test_the_method_imports_without_ray_mlflow_optuna_or_transformers():
    code = ("import sys, akd_ray.method\n"
            "akd_ray.method.kd_loss  # the losses load on first use\n"
            "heavy = ('ray', 'mlflow', 'optuna', 'transformers')\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split("\n")[:2] == ["[]", "True"]


# ---------------------------------------------------------------------------------------- few labels
def test_label_terms_average_over_the_labelled_rows_and_soft_terms_over_every_row():
    s, t = torch.randn(6, 3), torch.randn(6, 3)
    labels, labelled = torch.tensor([0, 2, 1, 1, 0, 2]), torch.tensor([True, False, True, False, False, True])
    rows = labelled.nonzero().squeeze(1)
    ce = torch.nn.functional.cross_entropy(s[rows], labels[rows])
    soft = torch.nn.functional.kl_div(torch.log_softmax(s / 2, -1), torch.log_softmax(t / 2, -1),
                                      reduction="batchmean", log_target=True)  # all 6 rows
    assert torch.allclose(hard_label_loss(s, labels, labelled), ce)
    assert torch.allclose(kd_loss(s, t, labels, 0.3, 2.0, labelled), 0.7 * ce + 0.3 * 4 * soft)
    # the normaliser a caller gives (DDP: the global batch's labelled count per rank) replaces the local count
    assert torch.allclose(hard_label_loss(s, labels, labelled, torch.tensor(6.0)), ce * 3 / 6)
    assert hard_label_loss(s, labels, torch.zeros(6, dtype=torch.bool)) == 0  # no labelled row: no label term


def test_an_unlabelled_row_s_label_reaches_neither_the_loss_nor_a_gradient():
    s, t = torch.randn(5, 1, requires_grad=True), torch.randn(5, 1)
    labelled = torch.tensor([True, True, False, True, False])
    clean = torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0])
    poisoned = torch.where(labelled, clean, torch.tensor(float("nan")))  # what an extra unlabelled source holds
    grads = []
    for labels in (clean, poisoned):
        s.grad = None
        loss = regression_kd_loss(s, t, labels, 0.4, labelled)
        loss.backward()
        assert torch.isfinite(loss)
        grads.append((loss.detach(), s.grad.clone()))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    z = torch.randn(5, 4)
    assert torch.equal(hard_label_loss(z, torch.tensor([1, 2, 3, 0, 1]), labelled),
                       hard_label_loss(z, torch.tensor([1, 2, -1, 0, -1]), labelled))  # -1: no label at all
