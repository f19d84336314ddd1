"""The levers' formulas against hand-computed values: layer pairs, the layer-matching MSE (same and
different widths and depths, projected, normalised), the minimax ascent and its losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from akd_ray.method.levers import (ascend, divergence, layer_matching_loss, layer_pairs, perturbed_loss,
                                   project_ball)


# ---------------------------------------------------------------------------------------- pairs
@pytest.mark.parametrize("s, t, pairs", [
    (2, 4, [(0, 1), (1, 3)]),              # ceil(1*4/2)=2, ceil(2*4/2)=4
    (3, 12, [(0, 3), (1, 7), (2, 11)]),    # 4, 8, 12: BERT-base to a 3-layer student
    (4, 6, [(0, 1), (1, 2), (2, 4), (3, 5)]),  # ceil(1.5)=2, ceil(3)=3, ceil(4.5)=5, ceil(6)=6
    (3, 3, [(0, 0), (1, 1), (2, 2)]),
    (3, 2, [(0, 0), (1, 1), (2, 1)]),      # a deeper student: ceil(2/3)=1, ceil(4/3)=2, ceil(2)=2
])
def test_uniform_maps_student_layer_i_to_teacher_layer_ceil_i_lt_over_ls(s, t, pairs):
    assert layer_pairs("uniform", s, t) == pairs


@pytest.mark.parametrize("s, t, pairs", [
    (2, 6, [(0, 4), (1, 5)]),              # the teacher's last two
    (1, 3, [(0, 2)]),
    (3, 2, [(1, 0), (2, 1)]),              # 2 - 3 + 1 = 0 < 1: the student's first layer is unmatched
])
def test_last_maps_the_students_layers_to_the_teachers_last(s, t, pairs):
    assert layer_pairs("last", s, t) == pairs


def test_random_draws_a_fresh_sorted_subset_per_seed_and_falls_back_when_it_cannot():
    draws = {tuple(layer_pairs("random", 3, 12, torch.Generator().manual_seed(e))) for e in range(20)}
    assert len(draws) > 10  # fresh each epoch
    for d in draws:
        teachers = [j for _, j in d]
        assert [i for i, _ in d] == [0, 1, 2] and teachers == sorted(set(teachers)) and max(teachers) < 12
    same = layer_pairs("random", 3, 12, torch.Generator().manual_seed(7))
    assert same == layer_pairs("random", 3, 12, torch.Generator().manual_seed(7))  # seeded: equal on every rank
    assert layer_pairs("random", 4, 4, torch.Generator().manual_seed(0)) == layer_pairs("uniform", 4, 4)


def test_a_side_without_hidden_layers_or_an_unknown_mapping_is_refused():
    with pytest.raises(ValueError, match="at least one hidden layer"):
        layer_pairs("uniform", 0, 3)
    with pytest.raises(ValueError, match="valid: uniform, last, random"):
        layer_pairs("skip", 2, 3)


# ---------------------------------------------------------------------------------------- the loss
def test_same_widths_mean_of_pairwise_mse_by_hand():
    s = [torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])]
    t = [torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0, 1.0]]), torch.tensor([[2.0, 2.0]]), torch.tensor([[0.0, 4.0]])]
    # uniform 2 -> 4: (0,1), (1,3). MSE([1,2],[3,1]) = (4+1)/2 = 2.5; MSE([0,0],[0,4]) = 16/2 = 8
    assert layer_matching_loss(s, t, layer_pairs("uniform", 2, 4)).item() == pytest.approx((2.5 + 8) / 2)
    # last 2 -> 4: (0,2), (1,3). MSE([1,2],[2,2]) = 0.5; 8
    assert layer_matching_loss(s, t, layer_pairs("last", 2, 4)).item() == pytest.approx((0.5 + 8) / 2)


def test_different_widths_go_through_the_projection_by_hand():
    s = [torch.tensor([[1.0, 2.0], [0.0, 1.0]])]                       # width 2, batch 2
    t = [torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]), torch.tensor([[3.0, 0.0, 1.0], [1.0, 1.0, 1.0]])]
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])              # P(h) = W h: [a, b, a+b]
    project = lambda i, h, width: h @ W.T  # noqa: E731
    # uniform 1 -> 2: student 0 <-> teacher 1. P(s) = [[1,2,3],[0,1,1]]
    # squared errors: [[4,4,4],[1,0,0]] -> mean 13/6
    assert layer_matching_loss(s, t, layer_pairs("uniform", 1, 2), project).item() == pytest.approx(13 / 6)


def test_transformer_states_are_l2_normalised_on_both_sides():
    s = [torch.tensor([[3.0, 4.0]])]   # -> [0.6, 0.8]
    t = [torch.tensor([[0.0, 2.0]])]   # -> [0, 1]
    # ((0.6)^2 + (0.2)^2) / 2 = 0.2, and a scale change of either side changes nothing
    assert layer_matching_loss(s, t, [(0, 0)], normalise=True).item() == pytest.approx(0.2)
    assert layer_matching_loss([10 * s[0]], t, [(0, 0)], normalise=True).item() == pytest.approx(0.2)
    assert layer_matching_loss(s, t, [(0, 0)]).item() == pytest.approx((9 + 4) / 2)


# ---------------------------------------------------------------------------------------- minimax
def test_divergence_is_the_per_example_kl_and_zero_where_the_models_agree():
    z_t = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])   # p_t = [1/4, 3/4], [1/2, 1/2]
    z_s = torch.tensor([[0.0, 0.0], [1.0, 1.0]])              # p_s = [1/2, 1/2] twice
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert divergence(z_s, z_t).tolist() == pytest.approx([kl, 0.0], abs=1e-6)
    assert divergence(torch.tensor([[2.0]]), torch.tensor([[-1.0]])).tolist() == pytest.approx([9.0])


def test_projection_back_into_the_ball():
    d = torch.tensor([[0.5, -2.0, 0.05], [3.0, 4.0, 0.0]])
    assert project_ball(d, 0.1, "linf").flatten().tolist() == pytest.approx([0.1, -0.1, 0.05, 0.1, 0.1, 0.0])
    l2 = project_ball(d, 1.0, "l2")
    assert l2[1].tolist() == pytest.approx([0.6, 0.8, 0.0])
    assert l2.norm(dim=-1).max().item() == pytest.approx(1.0)
    inside = torch.tensor([[0.1, 0.2]])
    assert torch.equal(project_ball(inside, 1.0, "l2"), inside)


def _pair(seed: int):
    torch.manual_seed(seed)
    student = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    teacher = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    return student, teacher, torch.rand(64, 8)


@pytest.mark.parametrize("norm, steps", [("linf", 1), ("linf", 3), ("l2", 3)])
def test_ascent_raises_the_divergence_it_maximises_and_stays_inside_eps(norm, steps):
    student, teacher, x = _pair(0)
    eps = 0.2

    def objective(delta):
        return divergence(student(x + delta), teacher(x + delta))

    clean = objective(torch.zeros_like(x)).sum().item()
    delta = ascend(objective, x, eps, steps, norm)
    assert objective(delta).sum().item() > 1.2 * clean  # raised, and by a margin, not by noise
    size = delta.abs().amax() if norm == "linf" else delta.norm(dim=-1).max()
    assert size.item() <= eps + 1e-6 and size.item() > 0.5 * eps  # inside the ball, and using it
    assert all(p.grad is None for p in [*student.parameters(), *teacher.parameters()])  # only delta moved
    # and a random perturbation of the same size raises it less: the ascent follows the gradient
    rand = project_ball(eps * torch.randn_like(x).sign(), eps, norm)
    assert objective(delta).sum().item() > objective(rand).sum().item()


def test_perturbed_loss_by_stage():
    z_s, z_t = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 2.0]])
    # stage I of Annealing-KD: MSE to phi * z_t, phi = 0.5 -> targets [1, 1]: (0 + 1) / 2
    assert perturbed_loss("anneal", z_s, z_t, 0.5, 4.0).item() == pytest.approx(0.5)
    T = 2.0
    kl = F.kl_div(F.log_softmax(z_s / T, -1), F.softmax(z_t / T, -1), reduction="batchmean").item()
    assert perturbed_loss("kd", z_s, z_t, None, T).item() == pytest.approx(T * T * kl)
    assert perturbed_loss("ce", z_s, z_t, None, T).item() == pytest.approx(T * T * kl)  # a lone minimax
    assert perturbed_loss("kd", torch.tensor([[1.0]]), torch.tensor([[3.0]]), None, T).item() == pytest.approx(4.0)
