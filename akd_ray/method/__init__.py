"""The Annealing-KD method: schedules and losses. Imports torch only, never Ray or MLflow."""

from akd_ray.method.losses import annealing_loss, hard_label_loss, kd_loss, regression_kd_loss
from akd_ray.method.schedules import SHAPES, phi, stage_split, temperature

__all__ = ["SHAPES", "annealing_loss", "hard_label_loss", "kd_loss", "phi", "regression_kd_loss",
           "stage_split", "temperature"]
