"""Temperature schedules for Annealing-KD stage I (Jafari et al., EACL 2021).

Each schedule maps a stage-I epoch to a temperature T with T(first epoch) = tau_max and
T(last epoch) = 1; the teacher's logits are then scaled by phi(T) = 1 - (T - 1) / tau_max, so the
student regresses onto a smoothed teacher (phi = 1/tau_max) first and onto the real one (phi = 1)
at the end. Everything here is a pure function: no state, no torch.

Shapes:
  step    the paper's: integer T, starting at tau_max and lowered by 1 every
          floor(epochs / tau_max) epochs, clamped at 1. The official code keeps lowering T when
          epochs is not a multiple of tau_max (T < 1, phi > 1); the clamp is the fix.
  linear  T = tau_max - (tau_max - 1) * p
  cosine  T = 1 + (tau_max - 1) * (1 + cos(pi * p)) / 2
  exp     T = 1 + (tau_max - 1) * (exp(-k p) - exp(-k)) / (1 - exp(-k)),  k = decay > 0
where p = epoch / (epochs - 1) is the progress through stage I (p = 1 for a one-epoch stage).
"""

from __future__ import annotations

import math

SHAPES = ("step", "linear", "cosine", "exp")


def phi(temperature: float, tau_max: float) -> float:
    """The teacher-logit scale phi(T) = 1 - (T - 1) / tau_max: 1/tau_max at T = tau_max, 1 at T = 1."""
    return 1.0 - (temperature - 1.0) / tau_max


def progress(epoch: int, epochs: int) -> float:
    """Fraction of stage I done at the start of `epoch` (0-based), reaching 1 on the last epoch."""
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch {epoch} outside stage I of {epochs} epochs")
    return 1.0 if epochs == 1 else epoch / (epochs - 1)


def step_period(epochs: int, tau_max: int) -> int:
    """Epochs spent at each integer temperature in the paper's step schedule."""
    return epochs // tau_max


def step_temperature(epoch: int, epochs: int, tau_max: int) -> int:
    period = step_period(epochs, tau_max)
    if period < 1:
        raise ValueError(f"step schedule needs at least one epoch per temperature: "
                         f"{epochs} stage-I epochs < tau_max = {tau_max}")
    return max(1, tau_max - epoch // period)


def linear_temperature(p: float, tau_max: float) -> float:
    return tau_max - (tau_max - 1.0) * p


def cosine_temperature(p: float, tau_max: float) -> float:
    return 1.0 + (tau_max - 1.0) * (1.0 + math.cos(math.pi * p)) / 2.0


def exp_temperature(p: float, tau_max: float, decay: float) -> float:
    if decay <= 0:
        raise ValueError(f"exp schedule needs decay > 0, got {decay}")
    end = math.exp(-decay)
    return 1.0 + (tau_max - 1.0) * (math.exp(-decay * p) - end) / (1.0 - end)


def temperature(shape: str, epoch: int, epochs: int, tau_max: float, decay: float = 3.0) -> float:
    """T for stage-I `epoch` (0-based) of `epochs`, under schedule `shape`."""
    p = progress(epoch, epochs)  # also rejects an epoch outside stage I, for every shape
    if shape == "step":
        if tau_max != int(tau_max):
            raise ValueError(f"step schedule needs an integer tau_max, got {tau_max}")
        return float(step_temperature(epoch, epochs, int(tau_max)))
    if shape == "linear":
        return linear_temperature(p, tau_max)
    if shape == "cosine":
        return cosine_temperature(p, tau_max)
    if shape == "exp":
        return exp_temperature(p, tau_max, decay)
    raise ValueError(f"unknown schedule shape {shape!r}; valid: {', '.join(SHAPES)}")


def stage_split(epochs: int, stage1_fraction: float) -> tuple[int, int]:
    """(stage-I epochs, stage-II epochs) for a run of `epochs` epochs; each stage gets at least one."""
    if epochs < 2:
        raise ValueError(f"Annealing-KD needs at least 2 epochs (one per stage), got {epochs}")
    if not 0.0 < stage1_fraction < 1.0:
        raise ValueError(f"stage1_fraction must lie in (0, 1), got {stage1_fraction}")
    first = min(epochs - 1, max(1, round(epochs * stage1_fraction)))
    return first, epochs - first
