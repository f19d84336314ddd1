"""The Annealing-KD method: schedules and losses, and the levers (`levers`: layer matching,
minimax). Imports torch only, never Ray or MLflow.

The schedules are pure Python; the losses (torch) load on first use, so reading a study file
(`akd_ray.config` uses the schedules) does not pay for importing torch.
"""

from akd_ray.method.schedules import SHAPES, phi, stage_split, temperature

_LOSSES = ("annealing_loss", "hard_label_loss", "kd_loss", "regression_kd_loss")
_LEVERS = ("ascend", "divergence", "layer_matching_loss", "layer_pairs", "perturbed_loss", "project_ball")


def __getattr__(name: str):
    if name in _LOSSES:
        from akd_ray.method import losses
        return getattr(losses, name)
    if name in _LEVERS:
        from akd_ray.method import levers
        return getattr(levers, name)
    raise AttributeError(f"module 'akd_ray.method' has no attribute {name!r}")


__all__ = ["SHAPES", *_LOSSES, *_LEVERS, "phi", "stage_split", "temperature"]
