"""One trial: the Tune function trainable, and the Ray Train wrapper a multi-worker trial runs.

Single-worker trials run the engine in the trial itself; a trial with resources.workers > 1 wraps a
Ray Train TorchTrainer (DDP) instead -- single-worker trials skip the extra worker group, which costs
seconds per trial.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import ray
import torch
from ray import tune

from akd_ray.capacity import COST
from akd_ray.config import RunConfig, Study, TrainSpec
from akd_ray.space import STUDENT, student_values
from akd_ray.study.faults import inject_fault
from akd_ray.study.layout import IDENTITY, METRIC, PREDICTIONS_FILE, STATE_FILE, STUDENT_DIR, Layout


def run_config(study: Study, config: dict[str, Any], teacher_dirs: dict[str, Path]) -> RunConfig:
    """The RunConfig of one trial: the study's defaults with the trial's searched values on top."""
    train = study.train.model_copy(update={k: v for k, v in config.items()
                                           if k not in IDENTITY and not k.startswith(STUDENT)})
    teacher_dir = teacher_dirs[config["teacher"]]
    assistant_dir = None
    if config["method"] == "takd":  # prepared once per study by prepare_teachers, never per trial
        from akd_ray.teacher import assistant_folder
        assistant_dir = assistant_folder(Layout.of(study).root, study.assistant, study.task,
                                         study.assistant_train or study.train, teacher_dir, study.seed)
    return RunConfig(
        study=study.name, task=study.task, teacher=config["teacher"], teacher_dir=teacher_dir,
        student=config["student"], student_model=student_model(study, config),
        assistant_model=study.assistant, assistant_dir=assistant_dir, method=config["method"],
        train=TrainSpec.model_validate(train.model_dump()),
        # a confirmation seed draws its own init, batch order and augmented views (the teacher-logit
        # cache keys on the augment seed): the spread over seeds covers all three
        seed=config.get("seed", study.seed), augment_seed=config.get("seed", study.seed),
        cache_dir=Layout.of(study).cache,
        **({"latency_batch_size": study.family.latency_batch_size, "latency_device": study.family.latency_device}
           if study.family is not None and study.family.cost == "latency" else {}))


def student_model(study: Study, config: dict[str, Any]):
    """A named student's spec, or the family's model with the trial's `student.<field>` values."""
    if study.family is not None and config["student"] == study.family.name:
        return study.family.student(student_values(config))
    return study.students[config["student"]]


def fit(run: RunConfig, report: Callable, get_checkpoint: Callable, checkpoint_cls: type,
        is_chief: bool = True) -> None:
    """Run the engine under Tune or Train: report each epoch with a resumable checkpoint, then the
    final metrics with the best student. `report`/`get_checkpoint` come from ray.tune or ray.train."""
    from akd_ray.engine import run_distillation

    resume = None
    checkpoint = get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            if (Path(d) / STATE_FILE).exists():
                resume = torch.load(Path(d) / STATE_FILE, weights_only=True, map_location="cpu")

    node_id = ray.get_runtime_context().get_node_id()  # which node trained it, in every result

    def on_epoch(metrics: dict, state: Callable[[], dict]) -> None:
        metrics = {**metrics, "node_id": node_id}
        if not is_chief:
            return report(metrics)
        with tempfile.TemporaryDirectory() as d:
            torch.save(state(), Path(d) / STATE_FILE)
            report(metrics, checkpoint=checkpoint_cls.from_directory(d))
        inject_fault(metrics["epoch"], node_id)

    with tempfile.TemporaryDirectory() as d:
        result = run_distillation(run, on_epoch=on_epoch, resume=resume,
                                  save_dir=Path(d) / STUDENT_DIR if is_chief else None,
                                  predictions_file=Path(d) / PREDICTIONS_FILE if is_chief else None)
        final = {**result, "final": 1, METRIC: result["val_best"], "node_id": node_id,
                 COST: result.get("student_latency_ms", result["student_parameters"])}
        if is_chief:
            report(final, checkpoint=checkpoint_cls.from_directory(d))
        else:
            report(final)


def _train_worker(config: dict) -> None:
    """Ray Train's per-worker loop: the same `fit`, DDP set up by TorchTrainer."""
    import ray.train

    fit(config["run"], ray.train.report, ray.train.get_checkpoint, ray.train.Checkpoint,
        is_chief=ray.train.get_context().get_world_rank() == 0)


def trial(config: dict, study: Study, teacher_dirs: dict[str, Path]) -> None:
    """A Tune function trainable: one trial of the study."""
    run = run_config(study, config, teacher_dirs)
    r = study.resources
    if r.workers == 1:
        return fit(run, tune.report, tune.get_checkpoint, tune.Checkpoint)

    from ray.train import CheckpointConfig, FailureConfig, RunConfig as TrainRunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    trainer = TorchTrainer(
        _train_worker, train_loop_config={"run": run},
        scaling_config=ScalingConfig(num_workers=r.workers, use_gpu=r.gpus_per_worker > 0,
                                     resources_per_worker={"CPU": r.cpus_per_worker,
                                                           **({"GPU": r.gpus_per_worker} if r.gpus_per_worker else {})}),
        # the trial id in the name: a restarted trial finds its own Train checkpoints
        run_config=TrainRunConfig(name=f"train-{trial_id}", storage_path=str(Layout.of(study).tune),
                                  failure_config=FailureConfig(max_failures=r.max_failures),
                                  # the latest (to resume) and one before it: a checkpoint per epoch would
                                  # otherwise pile up (a 6-layer BERT student: 1.3 GB each)
                                  checkpoint_config=CheckpointConfig(num_to_keep=2),
                                  callbacks=[TuneReportCallback()]))
    trainer.fit()
