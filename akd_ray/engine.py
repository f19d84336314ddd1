"""The worker loop: one student, one method, one seed, end to end -- pure PyTorch, no Ray.

    setup -> for each epoch of the plan: train, evaluate on val, report -> test the best checkpoint

Methods (each a plan of stages; a stage is a loss over some epochs):
  scratch    hard labels for all epochs
  kd         Hinton KD for all epochs
  takd       KD from a teacher assistant, itself KD-trained from the teacher (cached per study)
  annealing  stage I: MSE to phi(T) * teacher logits, T annealed tau_max -> 1;
             stage II: hard labels from the best stage-I checkpoint, fresh optimizer and lr schedule
  prokd      annealing, but stage I follows the teacher's training checkpoints in order

Model selection uses the validation split held out of training; the test split is only evaluated
on the checkpoint that selection picked. Under torch.distributed (Ray Train sets it up) the model
is wrapped in DDP and each rank takes its share of every epoch's permutation.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from akd_ray.config import RunConfig, TrainSpec
from akd_ray.method import annealing_loss, hard_label_loss, kd_loss, phi, regression_kd_loss, stage_split
from akd_ray.method.schedules import temperature
from akd_ray.models import build_model, load_model, logits_of, num_parameters, save_model
from akd_ray.tasks import TaskData, load_task
from akd_ray.tasks.base import Augment, Split
from akd_ray.tasks.metrics import compute_metrics

# on_epoch(metrics, state): `state()` returns everything needed to resume after this epoch
EpochCallback = Callable[[dict[str, Any], Callable[[], dict[str, Any]]], None]


@dataclass(frozen=True)
class Stage:
    loss: str  # "ce" | "kd" | "anneal"
    epochs: int
    number: int  # 1: distillation stage, 2: hard-label stage (scratch runs are all stage 2)


def plan(run: RunConfig) -> list[Stage]:
    epochs = run.train.epochs
    if run.method == "scratch":
        return [Stage("ce", epochs, 2)]
    if run.method in ("kd", "takd"):
        return [Stage("kd", epochs, 1)]
    first, second = stage_split(epochs, run.train.stage1_fraction)
    return [Stage("anneal", first, 1), Stage("ce", second, 2)]


# ---------------------------------------------------------------------------------------- helpers
def pick_device(train: TrainSpec) -> torch.device:
    if train.device == "cuda" or (train.device == "auto" and torch.cuda.is_available()):
        if dist.is_initialized():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cuda")
    return torch.device("cpu")


def make_optimizer(model: nn.Module, train: TrainSpec, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, nesterov=True,
                               weight_decay=train.weight_decay)
    return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay,
                             fused=device.type == "cuda")


def lr_lambda(train: TrainSpec, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base lr at optimizer step `step` of a stage: warmup, then the decay shape."""
    warmup = int(train.warmup_fraction * total_steps)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        p = (step - warmup) / max(1, total_steps - warmup)
        if train.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))
        if train.lr_schedule == "linear":
            return max(0.0, 1 - p)
        return 1.0

    return f


def epoch_order(n: int, seed: int, epoch: int, batch_size: int) -> list[torch.Tensor]:
    """This rank's batches of sample indices for `epoch`: a seeded permutation, sharded by rank."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    if dist.is_initialized():  # equal shares so every rank takes the same number of steps
        world, rank = dist.get_world_size(), dist.get_rank()
        perm = perm[: n - n % world][rank::world]
    return list(perm.split(batch_size))


def batches_per_epoch(n: int, batch_size: int) -> int:
    """How many batches `epoch_order` gives this rank, without drawing a permutation."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    return math.ceil((n - n % world) // world / batch_size)


@torch.no_grad()
def evaluate(model: nn.Module, task: TaskData, split: Split, device: torch.device, batch_size: int,
             autocast: torch.autocast) -> dict[str, float]:
    model.eval()
    logits = []
    for idx in torch.arange(len(split)).split(batch_size):
        inputs, _ = task.batch(split, idx, device)
        with autocast:
            logits.append(logits_of(model, inputs).float())
    return compute_metrics(task.name, torch.cat(logits), split.labels)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ---------------------------------------------------------------------------------------- the run
def run_distillation(run: RunConfig, on_epoch: EpochCallback | None = None, resume: dict | None = None,
                     save_dir: Path | None = None, snapshots: int = 0, task: TaskData | None = None) -> dict:
    """Train one student by `run.method`; return its final metrics (test metrics of the best val epoch).

    `resume` is a state returned by an earlier `on_epoch`; `save_dir` receives the best model and,
    with `snapshots` > 0, that many evenly spaced training checkpoints (a teacher's, for Pro-KD).
    """
    from akd_ray import teacher as teachers  # teacher preparation itself calls this function

    # -- setup ---------------------------------------------------------------------------------
    train = run.train
    device = pick_device(train)
    bf16 = train.precision == "bf16" or (train.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    torch.manual_seed(run.seed)
    tokenizer = run.tokenizer or (str(run.teacher_dir) if run.teacher_dir else None)
    task = task or load_task(run.task, tokenizer)
    if device.type == "cuda":  # the whole task on the GPU: batches are gathered there, no copy per step
        task = task.to(device)
    stages = plan(run)

    teacher_model = None
    if run.student_model.kind in ("hf_truncate", "hf_config"):  # students derived from the teacher
        teacher_model = load_model(run.teacher_dir, task)
    model = build_model(run.student_model, task, teacher=teacher_model).to(device)
    del teacher_model
    if run.task.name in ("cifar10", "cifar100") and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)

    source_dir = run.teacher_dir
    if run.method == "takd":
        source_dir = prepare_assistant(run, task)
    logits_source = (teachers.TeacherLogits(source_dir, task, device, run.augment_seed, run.cache_dir,
                                            train.eval_batch_size)
                     if run.method != "scratch" else None)
    n_snapshots = len(teachers.checkpoint_dirs(source_dir)) if run.method == "prokd" else 0
    if run.method == "prokd" and n_snapshots == 0:
        raise ValueError(f"prokd needs the teacher's training checkpoints; {source_dir} has none")

    # -- state: everything a resumed run needs ---------------------------------------------------
    total_epochs = sum(s.epochs for s in stages)
    state: dict[str, Any] = {"epoch": 0, "best": -math.inf, "best_epoch": -1, "best_weights": None,
                             "stage_best": -math.inf, "stage_weights": None, "history": []}
    if resume is not None:
        state.update({k: v for k, v in resume.items() if k in state})
    if save_dir is not None and snapshots:
        snapshot_epochs = {round((k + 1) * total_epochs / snapshots) - 1 for k in range(snapshots)}
    else:
        snapshot_epochs = set()

    ddp = dist.is_initialized()
    wrapped = nn.parallel.DistributedDataParallel(model) if ddp else model
    optimizer = scheduler = None
    epoch0 = 0
    for stage in stages:
        stage_range = range(epoch0, epoch0 + stage.epochs)
        epoch0 += stage.epochs
        if state["epoch"] >= stage_range.stop:
            continue  # finished before a resume
        if state["epoch"] == stage_range.start:
            if stage.number == 2 and state["stage_weights"] is not None and run.method in ("annealing", "prokd"):
                unwrap(wrapped).load_state_dict(state["stage_weights"])  # stage II from best stage I
            state["stage_best"], state["stage_weights"] = -math.inf, None
        steps = stage.epochs * batches_per_epoch(len(task.train), train.batch_size)
        optimizer = make_optimizer(wrapped, train, device)  # fresh per stage, as the paper does
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(train, steps))
        if resume is not None and state["epoch"] > stage_range.start:  # resumed mid-stage
            unwrap(wrapped).load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
        resume = None

        for epoch in range(state["epoch"], stage_range.stop):
            # -- train one epoch -------------------------------------------------------------------
            stage_epoch = epoch - stage_range.start
            T = (temperature(train.schedule, stage_epoch, stage.epochs, train.tau_max, train.decay)
                 if stage.loss == "anneal" else None)
            snapshot = (min(n_snapshots - 1, stage_epoch * n_snapshots // stage.epochs)
                        if run.method == "prokd" else None)
            wrapped.train()
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device)  # summed on device: no per-step CPU-GPU sync
            batches = epoch_order(len(task.train), run.seed, epoch, train.batch_size)
            for idx in batches:
                augment = Augment(run.augment_seed, epoch, idx) if task.augments else None
                inputs, labels = task.batch(task.train, idx, device, augment)
                with autocast:
                    z_s = logits_of(wrapped, inputs)
                if stage.loss == "ce":
                    loss = hard_label_loss(z_s, labels)
                elif stage.loss == "anneal":
                    loss = annealing_loss(z_s, logits_source.get(epoch, idx, snapshot), phi(T, train.tau_max))
                elif task.is_regression:
                    loss = regression_kd_loss(z_s, logits_source.get(epoch, idx), labels, train.alpha)
                else:
                    loss = kd_loss(z_s, logits_source.get(epoch, idx), labels, train.alpha, train.kd_temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum += loss.detach()
            train_loss = loss_sum.item() / max(1, len(batches))
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"{stage.loss} loss became {train_loss} in epoch {epoch}")
            seconds = time.perf_counter() - t0

            # -- evaluate on val, keep the best ----------------------------------------------------
            val = evaluate(unwrap(wrapped), task, task.val, device, train.eval_batch_size, autocast)
            score = val[task.metric]
            weights = None
            if score > state["stage_best"]:
                weights = copy.deepcopy(unwrap(wrapped).state_dict())
                state["stage_best"], state["stage_weights"] = score, weights
            if score > state["best"]:
                state["best"], state["best_epoch"] = score, epoch
                state["best_weights"] = weights if weights is not None else copy.deepcopy(unwrap(wrapped).state_dict())
            if epoch in snapshot_epochs:
                teachers.save_snapshot(unwrap(wrapped), run.student_model, save_dir,
                                       sorted(snapshot_epochs).index(epoch), task)

            metrics = {"epoch": epoch, "stage": stage.number, "stage_epoch": stage_epoch, "train_loss": train_loss,
                       "lr": scheduler.get_last_lr()[0], "epoch_seconds": seconds,
                       "samples_per_second": len(batches) * train.batch_size * (dist.get_world_size() if ddp else 1) / seconds,
                       **{f"val_{k}": v for k, v in val.items()},
                       "val_metric": score, "val_best": state["best"]}
            if T is not None:
                metrics.update(temperature=T, phi=phi(T, train.tau_max))
            if snapshot is not None:
                metrics["teacher_checkpoint"] = snapshot
            state["epoch"] = epoch + 1
            state["history"].append(metrics)
            if on_epoch is not None:
                on_epoch(metrics, lambda: copy.deepcopy({  # a snapshot: training goes on in place
                    **state, "model": unwrap(wrapped).state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict()}))

    # -- test the checkpoint that validation picked ---------------------------------------------
    best = unwrap(wrapped)
    best.load_state_dict(state["best_weights"])
    test = evaluate(best, task, task.test, device, train.eval_batch_size, autocast)
    result = {"best_epoch": state["best_epoch"], "val_best": state["best"],
              **{f"test_{k}": v for k, v in test.items()}, "test_metric": test[task.metric],
              "student_parameters": num_parameters(best)}
    for name, split in task.extra_tests.items():
        extra = evaluate(best, task, split, device, train.eval_batch_size, autocast)
        result.update({f"test_{name}_{k}": v for k, v in extra.items()})
    if save_dir is not None and (not ddp or dist.get_rank() == 0):
        save_model(best, run.student_model, Path(save_dir), task)
    return result


def prepare_assistant(run: RunConfig, task: TaskData) -> Path:
    """TAKD's first link: the assistant KD-trained from the teacher, once per (teacher, assistant, recipe)."""
    from akd_ray import teacher as teachers

    base = run.cache_dir or Path(run.teacher_dir) / "assistants"
    fp = teachers.recipe_fingerprint(run.assistant_model, run.task, run.train.model_dump(
        include={"epochs", "alpha", "kd_temperature", "lr", "batch_size", "optimizer"}),
        teachers.teacher_info(run.teacher_dir)["fingerprint"], run.augment_seed)
    folder = Path(base) / "assistants" / fp
    if not (folder / teachers.TEACHER_FILE).exists():
        link = run.model_copy(update={"method": "kd", "student_model": run.assistant_model, "seed": run.augment_seed})
        metrics = run_distillation(link, save_dir=folder, task=task)
        info = {"name": "assistant", "fingerprint": teachers.weights_fingerprint(folder), "metrics": metrics}
        (folder / teachers.TEACHER_FILE).write_text(json.dumps(info, indent=2))
    return folder
