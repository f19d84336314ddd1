"""The worker loop: one student, one method, one seed, end to end -- pure PyTorch, no Ray.

    setup -> for each epoch of the plan: train, evaluate on val, report -> test the best checkpoint

Methods (each a plan of stages; a stage is a loss over some epochs):
  scratch    hard labels for all epochs
  kd         Hinton KD for all epochs
  takd       KD from a teacher assistant, itself KD-trained from the teacher (cached per study)
  annealing  stage I: MSE to phi(T) * teacher logits, T annealed tau_max -> 1;
             stage II: hard labels from the best stage-I checkpoint, fresh optimizer and lr schedule
  prokd      annealing, but stage I follows the teacher's training checkpoints in order
  +layers, +minimax  (kd+layers, annealing+minimax, ...): the base method's loss plus a lever's term in
             every distilling stage (akd_ray.levers); the lone `layers` / `minimax` add it to hard labels

Few labels (`task.labelled_samples`, `task.unlabelled`): an epoch is one pass over the union of
labelled and unlabelled training rows for every stage. A stage with a teacher term trains on every
row, its batches carrying the label mask (label terms average over the labelled rows, teacher terms
over all); a stage on labels alone (scratch, stage II) draws as many rows from the labelled ones.

Model selection uses the validation split held out of training; the test split is only evaluated
on the checkpoint that selection picked.

Under torch.distributed (Ray Train sets it up) the model is wrapped in DDP and the ranks train one
model: `train.batch_size` is the global batch, each rank taking its share of every batch; BatchNorm
buffers are broadcast from rank 0 before every evaluation; val and test are split across ranks and
gathered, so every rank computes the same metrics and takes the same decisions; every weight load
is followed by a broadcast; the reported loss is the mean over ranks.

GLUE: each model reads its own tokenizer's ids (a pretrained `hf` student its own, a student derived
from the teacher the teacher's); the teacher's logits are per example, so they need no re-encoding.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from akd_ray.config import HF_KINDS, ModelSpec, RunConfig, TrainSpec, base_method, levers, two_stage
from akd_ray.distributed import (broadcast_object, broadcast_state, gather_rows, is_chief, mean_over_ranks,
                                 sync_batchnorm, world)
from akd_ray.levers import Levers, build_levers
from akd_ray.logits import TEACHER_FILE, TeacherLogits, snapshot_dir
from akd_ray.method import annealing_loss, hard_label_loss, kd_loss, phi, regression_kd_loss, stage_split
from akd_ray.method.schedules import temperature
from akd_ray.models import build_model, load_model, logits_of, num_parameters, save_model
from akd_ray.models.features import hidden_states
from akd_ray.tasks import TaskData, load_task
from akd_ray.tasks.base import Augment, Split
from akd_ray.tasks.metrics import compute_metrics

# Length buckets: a window of this many batches is sorted by length before it is cut into batches,
# so a batch holds rows of similar length; the batches are then shuffled. Wide enough that a batch
# pads little, narrow enough that batches still mix the data set.
BUCKET_BATCHES = 50

# on_epoch(metrics, state): `state()` returns everything needed to resume after this epoch
EpochCallback = Callable[[dict[str, Any], Callable[[], dict[str, Any]]], None]


@dataclass(frozen=True)
class Stage:
    loss: str  # "ce" | "kd" | "anneal"
    epochs: int
    number: int  # 1: distillation stage, 2: hard-label stage (scratch runs are all stage 2)
    levers: tuple[str, ...] = ()  # whose term joins the loss (akd_ray.levers)


def plan(run: RunConfig) -> list[Stage]:
    epochs = run.train.epochs
    base = base_method(run.method)
    if base == "scratch":
        stages = [Stage("ce", epochs, 2)]
    elif base in ("kd", "takd"):
        stages = [Stage("kd", epochs, 1)]
    else:
        first, second = stage_split(epochs, run.train.stage1_fraction)
        stages = [Stage("anneal", first, 1), Stage("ce", second, 2)]
    # a lever joins every distilling stage, and the one stage of a lone lever; never Annealing-KD's stage II
    return [dataclasses.replace(s, levers=levers(run.method)) if s.number == 1 or base == "scratch" else s
            for s in stages]


def reads_teacher(stage: Stage) -> bool:
    """Whether a stage has a term on the teacher: it then trains on every row, labelled or not."""
    return stage.loss != "ce" or bool(stage.levers)


def batch_loss(stage: Stage, model: nn.Module, inputs: dict, labels: torch.Tensor,
               soft_targets: Callable[[], torch.Tensor], train: TrainSpec, T: float | None,
               autocast: torch.autocast, regression: bool, lever: Levers | None,
               labelled: torch.Tensor | None = None, n_labelled: torch.Tensor | None = None) -> torch.Tensor:
    """One batch's loss: the stage's own (teacher logits fetched only if it needs them), plus its levers' term.

    `labelled` (few labels): the batch's mask; the label terms average over its labelled rows
    (`n_labelled`: their count over the global batch per rank), the teacher terms over every row.
    """
    with autocast:
        if "layers" in stage.levers:
            z_s, h_s = hidden_states(model, inputs)
        else:
            z_s, h_s = logits_of(model, inputs), None
    p = phi(T, train.tau_max) if T is not None else None
    if stage.loss == "ce":
        loss = hard_label_loss(z_s, labels, labelled, n_labelled)
    elif stage.loss == "anneal":
        loss = annealing_loss(z_s, soft_targets(), p)  # no labels: every row
    elif regression:
        loss = regression_kd_loss(z_s, soft_targets(), labels, train.alpha, labelled, n_labelled)
    else:
        loss = kd_loss(z_s, soft_targets(), labels, train.alpha, train.kd_temperature, labelled, n_labelled)
    if stage.levers:
        loss = loss + lever.term(stage.loss, model, inputs, h_s, p, autocast)
    return loss


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
                               weight_decay=train.weight_decay, fused=device.type == "cuda")  # one kernel per step
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


def epoch_order(n: int, seed: int, epoch: int, batch_size: int,
                lengths: torch.Tensor | None = None) -> list[torch.Tensor]:
    """This rank's share of each global batch of `epoch`: a seeded permutation cut into batches of
    `batch_size` (the global batch), every batch dealt out across ranks.

    With `lengths`, batches come from length buckets (see BUCKET_BATCHES), still a seeded shuffle.
    """
    rank, size = world()
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    perm = perm[: n - n % size]  # equal shares, so every rank takes the same number of steps
    if lengths is not None:
        lengths = lengths.cpu()
        window = batch_size * BUCKET_BATCHES
        perm = torch.cat([w[lengths[w].argsort(stable=True)] for w in perm.split(window)])
        batches = perm.split(batch_size)
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g)]
    else:
        batches = list(perm.split(batch_size))
    return [b[rank::size] for b in batches]


def epoch_batches(split: Split, labels_only: bool, seed: int, epoch: int, batch_size: int
                  ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """An epoch's batches over the training split: (this rank's batches, the rows they stand for).

    An epoch is one pass over the union of labelled and unlabelled rows (`epoch_order`), for every
    stage, so every method takes the same steps. A stage on labels alone (`labels_only`: scratch,
    stage II) draws as many rows from the labelled ones, each repeated about len(union) /
    len(labelled) times: position v of the epoch is labelled row `rows[v]`. Batches then hold
    positions (distinct per repeat, so augmentation draws a fresh view of each); `rows` maps them
    to rows of the split (None: positions are rows).
    """
    n = len(split)
    if not labels_only or split.labelled is None:
        return epoch_order(n, seed, epoch, batch_size, split.lengths), None
    labelled = split.labelled_rows()
    rows = labelled[torch.arange(n) % len(labelled)]
    lengths = None if split.lengths is None else split.lengths.cpu()[rows]
    return epoch_order(n, seed, epoch, batch_size, lengths), rows


def batches_per_epoch(n: int, batch_size: int) -> int:
    """How many batches `epoch_order` gives each rank, without drawing a permutation."""
    size = world()[1]
    return math.ceil((n - n % size) / batch_size)


@torch.no_grad()
def predict(model: nn.Module, task: TaskData, split: Split, device: torch.device, batch_size: int,
            autocast: torch.autocast) -> torch.Tensor:
    """The logits of `model` for every row of `split`, in the split's order: each rank runs its share
    of the rows, all ranks get all logits.

    Rows go shortest first where the split knows lengths (a batch then pads little); `batch_size`
    is per rank.
    """
    model.eval()
    rank, size = world()
    order = split.lengths.argsort(stable=True).cpu() if split.lengths is not None else torch.arange(len(split))
    mine = order[rank::size]
    logits = [torch.empty(0, task.num_labels, device=device)]
    for idx in mine.split(batch_size):
        inputs, _ = task.batch(split, idx, device)
        with autocast:
            logits.append(logits_of(model, inputs).float().reshape(len(idx), -1))
    return gather_rows(torch.cat(logits), order, len(split))


def evaluate(model: nn.Module, task: TaskData, split: Split, device: torch.device, batch_size: int,
             autocast: torch.autocast, logits: torch.Tensor | None = None) -> dict[str, float]:
    """Metrics of `model` (or of its `logits`, already predicted) on `split`."""
    if logits is None:
        logits = predict(model, task, split, device, batch_size, autocast)
    # the same numbers on every rank; rank 0's are handed out all the same, so no rounding
    # difference between ranks can ever split a decision taken on them
    return broadcast_object(compute_metrics(task.name, logits, split.labels))


def save_predictions(path: Path, logits: torch.Tensor, labels: torch.Tensor, regression: bool,
                     val_logits: torch.Tensor | None = None, val_labels: torch.Tensor | None = None) -> None:
    """One run's per-example test predictions (`pred`: class ids, or values for regression) and the
    labels, in the split's order, and those of the validation split (`val_pred`, `val_label`): what the
    verdict's intervals on test and its decision on validation take the test set's noise from."""
    import numpy as np

    def ids(x):
        return (x.squeeze(-1).float() if regression else x.argmax(-1)).cpu().numpy()

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    val = {} if val_logits is None else {"val_pred": ids(val_logits), "val_label": val_labels.cpu().numpy()}
    np.savez_compressed(path, pred=ids(logits), label=labels.cpu().numpy(), **val)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ---------------------------------------------------------------------------------------- setup
def tokenizer_of(spec: ModelSpec, teacher_dir: Path | None) -> str | None:
    """GLUE: whose tokenizer a model reads. A pretrained model its own; one derived from the teacher
    (`hf_truncate`, `hf_config`) the teacher's, which its prepared folder holds."""
    if spec.kind == "hf":
        return spec.path
    if spec.kind in HF_KINDS:
        return str(teacher_dir)
    return None


def student_task(run: RunConfig) -> TaskData:
    """The task as the student reads it (GLUE: in the student's own tokens)."""
    return load_task(run.task, run.tokenizer or tokenizer_of(run.student_model, run.teacher_dir), run.cache_dir)


def logits_source(run: RunConfig, task: TaskData, device: torch.device) -> TeacherLogits | None:
    """Where the soft targets come from: the teacher, or for TAKD the assistant prepared for the study."""
    if base_method(run.method) == "scratch":  # a lone lever reads the live teacher, never its logits
        return None
    source = run.teacher_dir
    if run.method == "takd":
        source = run.assistant_dir
        if source is None or not (Path(source) / TEACHER_FILE).exists():
            raise ValueError(f"takd needs the study's prepared assistant (akd_ray.teacher.prepare_assistant); "
                             f"assistant_dir = {source} holds none")
    teacher_task = None
    if run.task.is_glue and str(source) != (run.tokenizer or tokenizer_of(run.student_model, run.teacher_dir)):
        # the teacher reads its own tokens; loaded only if a table has to be computed
        def teacher_task() -> TaskData:
            return load_task(run.task, str(source), run.cache_dir)
    return TeacherLogits(source, task, device, run.augment_seed, run.cache_dir, run.train.eval_batch_size,
                         teacher_task=teacher_task)


# ---------------------------------------------------------------------------------------- the run
def begin_stage(run: RunConfig, stage: Stage, epochs: range, state: dict[str, Any], model: nn.Module,
                lever: Levers | None, n_train: int, device: torch.device, resume: dict | None):
    """The optimizer and lr schedule of a stage, and the model it starts from: the one place a resumed
    run differs from a fresh one, so the loop below is the same for both.

    Fresh (its first epoch is next): a fresh optimizer, as the paper does (the lever's layer maps train
    with the student); a two-stage method's stage II starts from the best stage-I weights. Resumed
    mid-stage: the model, the lever's layer maps, the optimizer and lr schedule as the checkpoint left them.
    """
    train = run.train
    optimizer = make_optimizer(model, train, device)
    if lever is not None and len(lever.projections):
        optimizer.add_param_group({"params": list(lever.parameters())})
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(train, stage.epochs * batches_per_epoch(n_train, train.batch_size)))
    if state["epoch"] > epochs.start:  # resumed mid-stage
        if lever is not None:
            lever.load_state_dict(resume["levers"])
        unwrap(model).load_state_dict(resume["model"])
        broadcast_state(unwrap(model))
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        return optimizer, scheduler
    if stage.number == 2 and state["stage_weights"] is not None and two_stage(run.method):
        unwrap(model).load_state_dict(state["stage_weights"])  # stage II from best stage I
        broadcast_state(unwrap(model))
        # the run's result is its stage-II best, never a stage-I checkpoint that did not run the paper's
        # stage II: the selection (val_best), Optuna and the tested checkpoint judge what early stopping does
        state["best"], state["best_epoch"], state["best_weights"] = -math.inf, -1, None
    state["stage_best"], state["stage_weights"] = -math.inf, None
    return optimizer, scheduler


def run_distillation(run: RunConfig, on_epoch: EpochCallback | None = None, resume: dict | None = None,
                     save_dir: Path | None = None, snapshots: int = 0, task: TaskData | None = None,
                     predictions_file: Path | None = None) -> dict:
    """Train one student by `run.method`; return its final metrics (test metrics of the best val epoch).

    `resume` is a state returned by an earlier `on_epoch`; `save_dir` receives the best model and,
    with `snapshots` > 0, that many evenly spaced training checkpoints (a teacher's, for Pro-KD);
    `predictions_file` the best model's per-example test predictions (`save_predictions`).
    Under torch.distributed every rank returns the same metrics; rank 0 saves.
    """
    # -- setup ---------------------------------------------------------------------------------
    train = run.train
    _, ranks = world()
    if train.batch_size % ranks:
        raise ValueError(f"train.batch_size = {train.batch_size} is the global batch; it must split evenly "
                         f"over the {ranks} workers")
    device = pick_device(train)
    bf16 = train.precision == "bf16" or (train.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    torch.manual_seed(run.seed)
    task = task or student_task(run)
    if device.type == "cuda":  # the whole task on the GPU: batches are gathered there, no copy per step
        task = task.to(device)
    stages = plan(run)

    teacher_model = None
    if run.student_model.kind in ("hf_truncate", "hf_config"):  # students derived from the teacher
        teacher_model = load_model(run.teacher_dir, task)
    model = build_model(run.student_model, task, teacher=teacher_model).to(device)
    lever = build_levers(run, task, model, device, teacher_model)  # None unless the method uses a lever
    del teacher_model
    if run.task.name in ("cifar10", "cifar100") and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)

    soft = logits_source(run, task, device)
    n_snapshots = soft.snapshots if run.method == "prokd" else 0
    if run.method == "prokd" and n_snapshots == 0:
        raise ValueError(f"prokd needs the teacher's training checkpoints; {run.teacher_dir} has none")

    # -- state: everything a resumed run needs (its model and optimizer: begin_stage) --------------
    total_epochs = sum(s.epochs for s in stages)
    state: dict[str, Any] = {"epoch": 0, "best": -math.inf, "best_epoch": -1, "best_stage": 0, "best_weights": None,
                             "stage_best": -math.inf, "stage_weights": None, "history": []}
    if resume is not None:
        state.update({k: v for k, v in resume.items() if k in state})
    if save_dir is not None and snapshots:
        snapshot_epochs = {round((k + 1) * total_epochs / snapshots) - 1 for k in range(snapshots)}
    else:
        snapshot_epochs = set()

    # DDP copies rank 0's parameters and buffers to every rank here: one model from the start
    model = sync_batchnorm(model, device)
    wrapped = nn.parallel.DistributedDataParallel(model) if ranks > 1 else model
    epoch0 = 0
    for stage in stages:
        stage_range = range(epoch0, epoch0 + stage.epochs)
        epoch0 += stage.epochs
        if state["epoch"] >= stage_range.stop:
            continue  # finished before a resume
        optimizer, scheduler = begin_stage(run, stage, stage_range, state, wrapped, lever, len(task.train), device,
                                           resume)

        for epoch in range(state["epoch"], stage_range.stop):
            # -- train one epoch -------------------------------------------------------------------
            stage_epoch = epoch - stage_range.start
            T = (temperature(train.schedule, stage_epoch, stage.epochs, train.tau_max, train.decay)
                 if stage.loss == "anneal" else None)
            snapshot = (min(n_snapshots - 1, stage_epoch * n_snapshots // stage.epochs)
                        if run.method == "prokd" else None)
            wrapped.train()
            if lever is not None:
                lever.set_epoch(epoch)
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device)  # summed on device: no per-step CPU-GPU sync
            batches, rows = epoch_batches(task.train, not reads_teacher(stage), run.seed, epoch, train.batch_size)
            masked = rows is None and task.train.labelled is not None  # a batch of labelled and unlabelled rows
            for positions in batches:
                idx = positions if rows is None else rows[positions]
                augment = Augment(run.augment_seed, epoch, positions) if task.augments else None
                inputs, labels = task.batch(task.train, idx, device, augment)
                labelled = n_labelled = None
                if masked:
                    labelled = task.train.labelled[idx.to(task.train.labelled.device)].to(device, non_blocking=True)
                    n_labelled = mean_over_ranks(labelled.sum().float())  # DDP averages: count over the global batch / ranks
                loss = batch_loss(stage, wrapped, inputs, labels, lambda: soft.get(epoch, idx, snapshot), train, T,
                                  autocast, task.is_regression, lever, labelled, n_labelled)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # DDP averages the gradients of the ranks' equal shares: the global batch's
                optimizer.step()
                scheduler.step()
                loss_sum += loss.detach()
            train_loss = mean_over_ranks(loss_sum).item() / max(1, len(batches))
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"{stage.loss} loss became {train_loss} in epoch {epoch}")
            seconds = time.perf_counter() - t0

            # -- evaluate on val, keep the best ----------------------------------------------------
            # each rank's forward passes moved its own BatchNorm statistics: rank 0's count
            broadcast_state(unwrap(wrapped), buffers_only=True)
            val = evaluate(unwrap(wrapped), task, task.val, device, train.eval_batch_size, autocast)
            score = val[task.metric]
            weights = None
            if score > state["stage_best"]:
                weights = copy.deepcopy(unwrap(wrapped).state_dict())
                state["stage_best"], state["stage_weights"] = score, weights
            if score > state["best"]:
                state["best"], state["best_epoch"], state["best_stage"] = score, epoch, stage.number
                state["best_weights"] = weights if weights is not None else copy.deepcopy(unwrap(wrapped).state_dict())
            if epoch in snapshot_epochs and is_chief():
                save_model(unwrap(wrapped), run.student_model, snapshot_dir(save_dir, sorted(snapshot_epochs).index(epoch)),
                           task)

            metrics = {"epoch": epoch, "stage": stage.number, "stage_epoch": stage_epoch, "stage_epochs": stage.epochs,
                       "stage_best": state["stage_best"], "train_loss": train_loss,
                       "lr": scheduler.get_last_lr()[0], "epoch_seconds": seconds,
                       "samples_per_second": len(batches) * train.batch_size / seconds,
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
                    "scheduler": scheduler.state_dict(), "levers": lever.state_dict() if lever is not None else {}}))

    # -- test the checkpoint that validation picked ---------------------------------------------
    best = unwrap(wrapped)
    best.load_state_dict(state["best_weights"])
    broadcast_state(best)
    test_logits = predict(best, task, task.test, device, train.eval_batch_size, autocast)
    test = evaluate(best, task, task.test, device, train.eval_batch_size, autocast, test_logits)
    # predict() gathers across ranks, so under DDP every rank runs it, though only the chief saves the file
    val_logits = (predict(best, task, task.val, device, train.eval_batch_size, autocast)
                  if predictions_file is not None or (dist.is_available() and dist.is_initialized()) else None)
    if predictions_file is not None and is_chief():
        save_predictions(predictions_file, test_logits, task.test.labels, task.is_regression, val_logits,
                         task.val.labels)
    result = {"best_epoch": state["best_epoch"], "best_stage": state["best_stage"], "val_best": state["best"],
              **{f"test_{k}": v for k, v in test.items()}, "test_metric": test[task.metric],
              "student_parameters": num_parameters(best)}
    for name, split in task.extra_tests.items():
        extra = evaluate(best, task, split, device, train.eval_batch_size, autocast)
        result.update({f"test_{name}_{k}": v for k, v in extra.items()})
    if run.latency_batch_size is not None:
        result["student_latency_ms"] = inference_latency(best, task, run.latency_batch_size, run.latency_device)
    if save_dir is not None and is_chief():
        save_model(best, run.student_model, Path(save_dir), task)
    return result


def inference_latency(model: nn.Module, task: TaskData, batch_size: int, where: str = "auto",
                      repeats: int = 20) -> float:
    """Median wall time (ms) of one fp32 forward pass on `batch_size` validation examples, on this
    worker's hardware: the cost a family study can minimise. Three warm-up passes first."""
    device = pick_device(TrainSpec(device=where))
    model = model.to(device).eval()
    idx = torch.arange(batch_size) % len(task.val)
    inputs, _ = task.batch(task.val, idx, device)
    times = []
    with torch.no_grad():
        for i in range(repeats + 3):
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # time the kernels, not their launch
            t0 = time.perf_counter()
            logits_of(model, inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)
