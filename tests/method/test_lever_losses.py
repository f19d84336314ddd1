"""The levers' formulas against hand-computed values: layer pairs, the layer-matching term (same and
different widths and depths, projected, normalised; one size at every width), the minimax ascent on
each stage's own divergence and its losses."""

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
def test_same_widths_mean_over_pairs_of_the_summed_squared_distance_of_unit_vectors_by_hand():
    s = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])]
    t = [torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0, 3.0]]), torch.tensor([[5.0, 0.0]]),
         torch.tensor([[0.0, -4.0]])]
    # uniform 2 -> 4: (0,1), (1,3). [1,0] vs [1,1]/sqrt2: 2 - 2 cos 45deg = 2 - sqrt2; [0,1] vs [0,-1]: |[0,2]|^2 = 4
    assert layer_matching_loss(s, t, layer_pairs("uniform", 2, 4)).item() == pytest.approx((2 - math.sqrt(2) + 4) / 2)
    # last 2 -> 4: (0,2), (1,3). [1,0] vs [1,0]: 0; 4
    assert layer_matching_loss(s, t, layer_pairs("last", 2, 4)).item() == pytest.approx((0 + 4) / 2)


def test_different_widths_go_through_the_projection_and_the_batch_is_averaged_by_hand():
    s = [torch.tensor([[1.0, 0.0], [0.0, 1.0]])]                       # width 2, batch 2
    t = [torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 2.0]])]
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])              # P(h) = W h: [a, b, a]
    project = lambda i, h, width: h @ W.T  # noqa: E731
    # uniform 1 -> 2: student 0 <-> teacher 1. P(s) = [[1,0,1],[0,1,0]]; example 1: the same direction, 0;
    # example 2: [0,1,0] vs [0,0,1], orthogonal: 2. Mean over the batch: 1
    assert layer_matching_loss(s, t, layer_pairs("uniform", 1, 2), project).item() == pytest.approx(1.0)


def test_the_term_is_scale_free_on_both_sides():
    s, t = [torch.tensor([[3.0, 4.0]])], [torch.tensor([[0.0, 2.0]])]   # [0.6, 0.8] vs [0, 1]
    want = 0.6 ** 2 + 0.2 ** 2                                          # = 2 - 2 * 0.8
    assert layer_matching_loss(s, t, [(0, 0)]).item() == pytest.approx(want)
    assert layer_matching_loss([10 * s[0]], [0.1 * t[0]], [(0, 0)]).item() == pytest.approx(want)


@pytest.mark.parametrize("angle", [0.3, 1.0, 2.0])
def test_the_term_has_one_size_at_every_width_for_the_same_angle(angle):
    """PKD's summed distance of unit vectors is 2 - 2 cos(angle) at width 16, 256 or 768 alike; a mean
    over the width (F.mse_loss) would be 48x weaker at 768 than at 16."""
    g = torch.Generator().manual_seed(0)
    sizes = {}
    for width in (16, 256, 768):
        a = torch.randn(32, width, generator=g)
        b = torch.randn(32, width, generator=g)
        b = b - (b * a).sum(-1, keepdim=True) / a.pow(2).sum(-1, keepdim=True) * a     # orthogonal to a
        u, v = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
        s = 3.0 * (math.cos(angle) * u + math.sin(angle) * v)                          # at `angle` to a, any norm
        sizes[width] = layer_matching_loss([s], [5.0 * a], [(0, 0)]).item()
    assert max(sizes.values()) / min(sizes.values()) < 1.01
    assert sizes[768] == pytest.approx(2 - 2 * math.cos(angle), rel=1e-4)


# ---------------------------------------------------------------------------------------- minimax
def test_divergence_is_each_stages_own_loss_per_example():
    z_t = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])   # p_t = [1/4, 3/4], [1/2, 1/2]
    z_s = torch.tensor([[0.0, 0.0], [1.0, 1.0]])              # p_s = [1/2, 1/2] twice
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert divergence("kd", z_s, z_t, None, 1.0).tolist() == pytest.approx([kl, 0.0], abs=1e-6)
    assert divergence("ce", z_s, z_t, None, 1.0).tolist() == pytest.approx([kl, 0.0], abs=1e-6)  # a lone minimax
    # at T = 2: T^2 KL(softmax(z_t / 2) || softmax(z_s / 2)); p_t^2 = [1, sqrt3] / (1 + sqrt3)
    q = 1 / (1 + math.sqrt(3))
    kl2 = q * math.log(q / 0.5) + (1 - q) * math.log((1 - q) / 0.5)
    assert divergence("kd", z_s, z_t, None, 2.0).tolist() == pytest.approx([4 * kl2, 0.0], abs=1e-6)
    # Annealing-KD's stage I: mean over classes of (z_s - phi z_t)^2, phi = 0.5: [(0 + (log 3 / 2)^2) / 2, 0.25]
    assert divergence("anneal", z_s, z_t, 0.5, 4.0).tolist() == pytest.approx([(math.log(3) / 2) ** 2 / 2, 0.25])
    assert divergence("kd", torch.tensor([[2.0]]), torch.tensor([[-1.0]]), None, 4.0).tolist() == pytest.approx([9.0])


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
        return divergence("kd", student(x + delta), teacher(x + delta), None, 1.0)

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


@pytest.mark.parametrize("method, stage_loss, phi", [("minimax", "ce", None), ("kd+minimax", "kd", None),
                                                     ("annealing+minimax", "anneal", 0.25)])
def test_one_ascent_step_raises_each_methods_own_loss_on_the_perturbed_samples(method, stage_loss, phi):
    """The ascent maximises what the method then minimises: T^2 KL at kd_temperature (kd, a lone minimax),
    stage I's MSE to phi(T) z_t (annealing, phi small as early in stage I)."""
    student, teacher, x = _pair(1)
    T, eps = 4.0, 0.1

    def own(delta):
        return divergence(stage_loss, student(x + delta), teacher(x + delta), phi, T)

    def loss(delta):
        return perturbed_loss(stage_loss, student(x + delta), teacher(x + delta), phi, T).item()

    delta = ascend(own, x, eps, 1, "linf")
    assert loss(delta) > 1.05 * loss(torch.zeros_like(x))
    if stage_loss == "anneal":  # early in stage I, the old ascent (KL at T = 1) raises stage I's MSE less
        old = ascend(lambda d: divergence("kd", student(x + d), teacher(x + d), None, 1.0), x, eps, 1, "linf")
        assert loss(delta) > loss(old)
