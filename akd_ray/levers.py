"""The worker's side of the levers (`layers`, `minimax`): the live teacher, the projections, the
per-batch term. The formulas are in `akd_ray.method.levers`; what each model kind exposes in
`akd_ray.models.features`. No Ray.

The levers need the teacher itself, not its cached logits: its hidden states (layers), and its
outputs on inputs that exist only for one step (minimax). The clean-sample targets still come from
the logit cache, so a lever method's base loss is exactly its base method's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from akd_ray.config import RunConfig, levers
from akd_ray.method.levers import ascend, divergence, layer_matching_loss, layer_pairs, perturbed_loss
from akd_ray.models import load_model
from akd_ray.models.features import continuous_inputs, hidden_states, is_transformer, logits_from, unwrap
from akd_ray.tasks import TaskData


class Levers(nn.Module):
    """The live teacher (frozen, eval mode) and, for `layers`, one linear map per student layer and
    teacher width it must reach. Only the maps train: `parameters()` is what the optimizer adds."""

    def __init__(self, run: RunConfig, teacher: nn.Module, student: nn.Module, task: TaskData,
                 device: torch.device):
        super().__init__()
        self.run, self.train_spec = run, run.train
        self.levers = levers(run.method)
        # not a submodule: its weights are not trained, saved or handed to the optimizer
        self.__dict__["teacher"] = teacher.to(device).eval().requires_grad_(False)
        self.projections = nn.ModuleDict()
        self.pairs: list[tuple[int, int]] = []
        self.depths = (0, 0)
        if "minimax" in self.levers and is_transformer(student):
            s_width = unwrap(student).get_input_embeddings().embedding_dim
            t_width = teacher.get_input_embeddings().embedding_dim
            if s_width != t_width:
                raise ValueError(f"minimax adds one perturbation to the student's and the teacher's input "
                                 f"embeddings, but their widths differ ({s_width} vs {t_width}); give the "
                                 "hf_config student the teacher's hidden_size, or use hf_truncate")
        if "layers" in self.levers:
            probe, _ = task.batch(task.train, torch.arange(min(2, len(task.train))), device)
            with torch.no_grad():
                s_hidden = hidden_states(unwrap(student).eval(), probe)[1]
                t_hidden = hidden_states(self.teacher, probe)[1]
            unwrap(student).train()
            if not s_hidden or not t_hidden:
                who = "student" if not s_hidden else "teacher"
                raise ValueError(f"method {run.method!r} matches hidden layers, but the {who} has none")
            self.depths = (len(s_hidden), len(t_hidden))
            for i, h in enumerate(s_hidden):
                for width in sorted({t.shape[-1] for t in t_hidden} - {h.shape[-1]}):
                    self.projections[f"{i}_{width}"] = nn.Linear(h.shape[-1], width, bias=False)
            self.projections.to(device)
            if dist.is_initialized() and dist.get_world_size() > 1:
                for p in self.projections.parameters():  # one set of maps across ranks, as DDP does for the model
                    dist.broadcast(p.data, 0)
                    p.register_hook(_mean_over_ranks)

    def set_epoch(self, epoch: int) -> None:
        """The layer pairs of `epoch`: fixed, or RAIL-KD's fresh draw (seeded, the same on every rank)."""
        if "layers" in self.levers:
            g = torch.Generator().manual_seed(self.run.seed * 1_000_003 + epoch)
            self.pairs = layer_pairs(self.train_spec.layer_map, *self.depths, generator=g)

    def project(self, i: int, h: torch.Tensor, width: int) -> torch.Tensor:
        key = f"{i}_{width}"
        return self.projections[key](h) if key in self.projections else h

    def term(self, stage_loss: str, student: nn.Module, inputs: dict, student_hidden: list[torch.Tensor] | None,
             phi: float | None, autocast: torch.autocast) -> torch.Tensor:
        """The levers' share of one batch's loss (added to the stage's own loss)."""
        total = torch.zeros((), device=next(iter(inputs.values())).device)
        train = self.train_spec
        if "layers" in self.levers:
            with torch.no_grad(), autocast:
                t_hidden = hidden_states(self.teacher, inputs)[1]
            total = total + train.beta * layer_matching_loss(student_hidden, t_hidden, self.pairs, self.project)
        if "minimax" in self.levers:
            s_inputs, t_inputs, delta = self.perturb(stage_loss, student, inputs, phi, autocast)
            with torch.no_grad(), autocast:
                z_t = logits_from(self.teacher, _add(t_inputs, delta))
            with autocast:
                z_s = logits_from(student, _add(continuous_inputs(student, inputs)[0], delta))
            total = total + train.minimax_weight * perturbed_loss(stage_loss, z_s, z_t, phi, train.kd_temperature)
        return total

    def perturb(self, stage_loss: str, student: nn.Module, inputs: dict, phi: float | None,
                autocast: torch.autocast) -> tuple[dict, dict, torch.Tensor]:
        """Both models' continuous inputs and the perturbation that raises the divergence the stage then
        minimises on them (`divergence`: T^2 KL at kd_temperature, or stage I's MSE at phi(T)). The ascent
        runs the unwrapped student in eval mode: it moves no BatchNorm statistics and, under DDP, sets
        off no gradient sync."""
        inner = unwrap(student)
        was_training = inner.training
        inner.eval()
        with torch.no_grad():
            s_inputs, key = continuous_inputs(inner, inputs)
            t_inputs, _ = continuous_inputs(self.teacher, inputs)

        def objective(delta: torch.Tensor) -> torch.Tensor:
            with autocast:
                z_s = logits_from(inner, _add(s_inputs, delta, key))
                z_t = logits_from(self.teacher, _add(t_inputs, delta, key))
            return divergence(stage_loss, z_s, z_t, phi, self.train_spec.kd_temperature)

        norm = "l2" if key == "inputs_embeds" else "linf"
        try:
            delta = ascend(objective, s_inputs[key], self.train_spec.minimax_eps, self.train_spec.minimax_steps, norm)
        finally:
            inner.train(was_training)
        return s_inputs, t_inputs, delta


def _add(inputs: dict, delta: torch.Tensor, key: str | None = None) -> dict:
    key = key or ("inputs_embeds" if "inputs_embeds" in inputs else "x")
    return {**inputs, key: inputs[key] + delta.to(inputs[key].dtype)}


def _mean_over_ranks(grad: torch.Tensor) -> torch.Tensor:
    grad = grad.clone()
    dist.all_reduce(grad)
    return grad / dist.get_world_size()


def build_levers(run: RunConfig, task: TaskData, student: nn.Module, device: torch.device,
                 teacher: nn.Module | None = None) -> Levers | None:
    """The engine's one setup call: None for a method without a lever. `teacher`: the teacher model if
    the worker loaded it already (a student derived from it), else it is loaded here."""
    if not levers(run.method):
        return None
    return Levers(run, teacher if teacher is not None else load_model(run.teacher_dir, task), student, task, device)
