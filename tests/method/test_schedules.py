"""Annealing-KD temperature schedules: golden values worked out by hand, never by the formula."""

import pytest

from akd_ray.method.schedules import phi, progress, stage_split, temperature


def sequence(shape, epochs, tau_max, decay=3.0):
    return [temperature(shape, e, epochs, tau_max, decay) for e in range(epochs)]


# ---------------------------------------------------------------------------------------- phi
@pytest.mark.parametrize("T, expected", [(4, 0.25), (3, 0.5), (2, 0.75), (1, 1.0), (2.5, 0.625)])
def test_phi_tau_max_4(T, expected):
    assert phi(T, 4) == pytest.approx(expected)


def test_phi_is_one_over_tau_max_at_the_start():
    assert phi(7, 7) == pytest.approx(1 / 7)
    assert phi(1, 7) == 1.0


# ---------------------------------------------------------------------------------------- progress
def test_progress_runs_from_zero_to_one():
    assert [progress(e, 5) for e in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert progress(0, 1) == 1.0  # a one-epoch stage is already at its end


@pytest.mark.parametrize("epoch", [-1, 5])
def test_progress_rejects_epochs_outside_the_stage(epoch):
    with pytest.raises(ValueError, match="outside stage I of 5 epochs"):
        progress(epoch, 5)


# ---------------------------------------------------------------------------------------- step
@pytest.mark.parametrize("epochs, tau_max, expected", [
    # the paper's case: epochs a multiple of tau_max, floor(epochs / tau_max) epochs per T
    (8, 4, [4, 4, 3, 3, 2, 2, 1, 1]),
    (12, 3, [3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1]),
    (5, 5, [5, 4, 3, 2, 1]),
    (1, 1, [1]),
    # not a multiple: the official code would go on to T = 0, -1; the clamp holds T at 1
    (10, 3, [3, 3, 3, 2, 2, 2, 1, 1, 1, 1]),
    (11, 4, [4, 4, 3, 3, 2, 2, 1, 1, 1, 1, 1]),
    (7, 2, [2, 2, 2, 1, 1, 1, 1]),
])
def test_step_sequence(epochs, tau_max, expected):
    assert sequence("step", epochs, tau_max) == expected


@pytest.mark.parametrize("epochs, tau_max", [(10, 3), (11, 4), (7, 2), (13, 5)])
def test_step_never_goes_below_one_so_phi_never_exceeds_one(epochs, tau_max):
    Ts = sequence("step", epochs, tau_max)
    assert min(Ts) == 1 and Ts[-1] == 1
    assert all(0 < phi(T, tau_max) <= 1 for T in Ts)


def test_step_accepts_a_whole_float_tau_max():
    assert sequence("step", 4, 2.0) == [2, 2, 1, 1]


# ---------------------------------------------------------------------------------------- smooth
# tau_max = 5 over 5 epochs, so epochs 0, 1, 2, 3, 4 sit at p = 0, 0.25, 0.5, 0.75, 1.
def test_linear_golden():
    # T = 5 - 4p
    assert sequence("linear", 5, 5) == pytest.approx([5.0, 4.0, 3.0, 2.0, 1.0])


def test_cosine_golden():
    # p = 0.25: 1 + 4 * (1 + 0.70710678) / 2 = 4.41421356; p = 0.75: 1 + 2 * (1 - 0.70710678)
    assert sequence("cosine", 5, 5) == pytest.approx([5.0, 4.41421356, 3.0, 1.58578644, 1.0])


def test_exp_golden_decay_3():
    # p = 0.5: (e^-1.5 - e^-3) / (1 - e^-3) = (0.22313016 - 0.04978707) / 0.95021293 = 0.18242552,
    # T = 1 + 4 * 0.18242552 = 1.72970209
    Ts = sequence("exp", 5, 5, decay=3.0)
    assert [Ts[0], Ts[2], Ts[4]] == pytest.approx([5.0, 1.72970209, 1.0])


def test_exp_golden_decay_1():
    # p = 0.5: (e^-0.5 - e^-1) / (1 - e^-1) = (0.60653066 - 0.36787944) / 0.63212056 = 0.37754067,
    # T = 1 + 4 * 0.37754067 = 2.51016268
    Ts = sequence("exp", 5, 5, decay=1.0)
    assert [Ts[0], Ts[2], Ts[4]] == pytest.approx([5.0, 2.51016268, 1.0])


def test_exp_faster_decay_cools_sooner():
    mid = [temperature("exp", 2, 5, 5, decay=k) for k in (0.5, 1.0, 3.0, 6.0)]
    assert mid == sorted(mid, reverse=True)
    assert mid[0] < 3.0  # every exp schedule is below linear at the midpoint


@pytest.mark.parametrize("shape", ["step", "linear", "cosine", "exp"])
def test_every_shape_starts_at_tau_max_ends_at_one_and_never_rises(shape):
    Ts = sequence(shape, 9, 3)
    assert Ts[0] == pytest.approx(3.0) and Ts[-1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(Ts, Ts[1:]))


@pytest.mark.parametrize("shape", ["linear", "cosine", "exp"])
def test_a_one_epoch_stage_is_at_temperature_one(shape):
    assert temperature(shape, 0, 1, 6) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------- errors
def test_unknown_shape():
    with pytest.raises(ValueError, match=r"unknown schedule shape 'zigzag'; valid: step, linear, cosine, exp"):
        temperature("zigzag", 0, 5, 3)


def test_step_with_fewer_epochs_than_tau_max():
    with pytest.raises(ValueError, match=r"3 stage-I epochs < tau_max = 4"):
        temperature("step", 0, 3, 4)


def test_step_with_a_fractional_tau_max():
    with pytest.raises(ValueError, match=r"integer tau_max, got 2.5"):
        temperature("step", 0, 10, 2.5)


def test_exp_needs_a_positive_decay():
    with pytest.raises(ValueError, match=r"decay > 0, got 0"):
        temperature("exp", 0, 5, 3, decay=0)


@pytest.mark.parametrize("shape", ["step", "linear", "cosine", "exp"])
def test_every_shape_rejects_an_epoch_past_the_stage(shape):
    with pytest.raises(ValueError, match="epoch 10 outside stage I of 10 epochs"):
        temperature(shape, 10, 10, 3)


# ---------------------------------------------------------------------------------------- stage split
@pytest.mark.parametrize("epochs, fraction, expected", [
    (12, 0.5, (6, 6)),
    (10, 0.3, (3, 7)),
    (20, 0.75, (15, 5)),
    (12, 0.4, (5, 7)),   # 4.8 rounds to 5
    (2, 0.1, (1, 1)),    # 0.2 would leave stage I empty: at least one epoch
    (2, 0.9, (1, 1)),    # 1.8 would leave stage II empty: at least one epoch
    (10, 0.99, (9, 1)),
])
def test_stage_split(epochs, fraction, expected):
    assert stage_split(epochs, fraction) == expected


def test_stage_split_needs_two_epochs():
    with pytest.raises(ValueError, match="at least 2 epochs .* got 1"):
        stage_split(1, 0.5)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.1])
def test_stage_split_fraction_must_lie_strictly_between_0_and_1(fraction):
    with pytest.raises(ValueError, match=rf"stage1_fraction must lie in \(0, 1\), got {fraction}"):
        stage_split(10, fraction)
