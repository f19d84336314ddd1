"""Studies on Ray: prepare teachers, search each teacher-student pair with Optuna through Ray Tune,
confirm the picks over seeds, and hand every result to the tracking module.

    study file -> Study -> PairedSearch (one OptunaSearch per pair and method) -> trials
    trial: one run_distillation, reported to Tune every epoch with a resumable checkpoint;
           with resources.workers > 1 the trial wraps a Ray Train TorchTrainer (DDP) instead --
           single-worker trials skip the extra worker group, which costs seconds per trial.

Re-running a study resumes it: each phase is a Tune experiment under the study's storage, restored
with `Tuner.restore`, so finished trials are never run again.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
import ray
import torch
from optuna.samplers import TPESampler
from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from akd_ray import preflight, progress
from akd_ray.capacity import COST, smallest_within
from akd_ray.config import ConfigError, RunConfig, Study, TaskSpec, TrainSpec, two_stage
from akd_ray.preflight import budgets, check_space
from akd_ray.space import STUDENT, Space, define_by_run, student_values
from akd_ray.teacher import teacher_info

optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per Optuna study is noise here
METRIC, MODE = "val_best", "max"  # best-so-far validation metric: comparable across stages (ASHA)
IDENTITY = ("teacher", "student", "method", "phase", "seed")  # fixed per trial, never searched
TWO_STAGE = ("annealing", "prokd")  # stage I distils, stage II trains on the labels
STATE_FILE = "state.pt"
STUDENT_DIR = "student"
FAULTS_ENV = "AKD_RAY_FAULTS"  # tests only: see _inject_fault


# ---------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Layout:
    """Where a study keeps its things, under `<storage>/<name>/`."""
    root: Path

    @classmethod
    def of(cls, study: Study) -> "Layout":
        return cls(Path(study.storage).expanduser().resolve() / study.name)

    teachers = property(lambda self: self.root / "teachers")
    cache = property(lambda self: self.root / "cache")
    tune = property(lambda self: self.root / "tune")
    report = property(lambda self: self.root / "report")


# ---------------------------------------------------------------------------------------- validation
validate = check_space  # the space against the study (and `budgets`): akd_ray.preflight, run before Ray starts


def check_resources(study: Study) -> int:
    """Fail before any trial when one trial needs more than the cluster has; return max concurrency."""
    r = study.resources
    have = ray.cluster_resources()
    need_cpu, need_gpu = r.workers * r.cpus_per_worker, r.workers * r.gpus_per_worker
    cpus, gpus = have.get("CPU", 0), have.get("GPU", 0)
    if need_gpu > gpus:
        raise ConfigError(f"{study.source}: resources: a trial needs {need_gpu:g} GPU(s) "
                          f"({r.workers} workers x {r.gpus_per_worker:g}) but the cluster has {gpus:g}")
    if need_cpu > cpus:
        raise ConfigError(f"{study.source}: resources: a trial needs {need_cpu:g} CPU(s) "
                          f"({r.workers} workers x {r.cpus_per_worker:g}) but the cluster has {cpus:g}")
    # A Train-wrapped trial's own process holds no resources (see run_phase), so cap concurrency
    # by what the workers need: otherwise waiting trials could starve running ones. A max_concurrent
    # set in the study is kept even above that: an autoscaling cluster adds nodes for waiting trials.
    fits = math.floor(cpus / need_cpu)
    if need_gpu:
        fits = min(fits, math.floor(gpus / need_gpu))
    return r.max_concurrent or max(1, fits)


# ---------------------------------------------------------------------------------------- early stopping
class PickledState:
    """save/restore for a Tune searcher or scheduler whose whole state pickles: Tune saves it with the
    experiment and `Tuner.restore` reloads it."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def group_of(config: dict) -> tuple[str, str, str]:
    return config["teacher"], config["student"], config["method"]


def rung_time(method: str, result: dict) -> int | None:
    """Where a result stands on its group's ladder: epochs done, counted in stage II for a two-stage
    method. None (never compared) for stage-I results of a two-stage method -- a student regressing
    onto phi(T) * teacher logits is not yet trained for the labels -- and for the final result."""
    if "stage_epoch" not in result or result.get("final"):
        return None
    if two_stage(method):
        return result["stage_epoch"] + 1 if result["stage"] == 2 else None
    return result["epoch"] + 1


class GroupedHalving(PickledState, FIFOScheduler):
    """Asynchronous successive halving (ASHA, Li et al. 2020) with one ladder of rungs per
    (teacher, student, method): a trial is only ever stopped for trailing trials of its own group.

    Rungs sit at grace_period * reduction_factor^k epochs (see `rung_time`). The first trial to
    reach a rung always passes; a later one is stopped when its metric is below the
    (1 - 1/reduction_factor) quantile of the group's trials recorded at that rung so far.
    """

    def __init__(self, grace_period: int, reduction_factor: int, max_t: int, metric: str = METRIC, mode: str = MODE):
        super().__init__()
        self._metric, self._mode, self.sign = metric, mode, 1.0 if mode == "max" else -1.0
        self.reduction_factor = reduction_factor
        self.milestones: list[int] = []
        t = grace_period
        while t < max_t:  # a rung at the last epoch would only stop trials that are done anyway
            self.milestones.append(t)
            t *= reduction_factor
        self.rungs: dict[tuple[str, str, str], dict[int, dict[str, float]]] = {}  # group -> rung -> trial -> score
        self.stopped: dict[str, tuple[tuple[str, str, str], int]] = {}  # trial -> (group, rung) it was stopped at

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        return True  # metric and mode are the study's own, set at construction

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        group = group_of(trial.config)
        t = rung_time(group[2], result)
        if t is None or self._metric not in result:
            return TrialScheduler.CONTINUE
        ladder = self.rungs.setdefault(group, {m: {} for m in self.milestones})
        for milestone in reversed(self.milestones):  # the highest rung reached and not yet recorded
            recorded = ladder[milestone]
            if t < milestone or trial.trial_id in recorded:
                continue
            score = self.sign * result[self._metric]
            cutoff = (float(np.quantile(list(recorded.values()), 1 - 1 / self.reduction_factor))
                      if recorded else None)
            recorded[trial.trial_id] = score
            if cutoff is not None and score < cutoff:
                self.stopped[trial.trial_id] = (group, milestone)
                return TrialScheduler.STOP
            break
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        return f"GroupedHalving: {len(self.rungs)} group(s), {len(self.stopped)} trial(s) stopped early"


# ---------------------------------------------------------------------------------------- search
class Resumable(PickledState, Searcher):
    """A searcher whose whole state pickles: Tune saves it with the experiment, `Tuner.restore` reloads it."""


class PairedSearch(Resumable):
    """One OptunaSearch per (teacher, student, method): each group gets exactly its trial budget.

    Suggestions go round-robin to the group with the fewest trials so far, so every pair advances
    together and an interrupted study has covered all pairs evenly.
    """

    objectives, directions = METRIC, MODE  # of each group's OptunaSearch (FamilySearch: two of each)

    def __init__(self, study: Study, space: Space):
        super().__init__(metric=METRIC, mode=MODE)
        budget = budgets(study, space)
        self.groups: dict[tuple[str, str, str], OptunaSearch] = {}
        self.budget: dict[tuple[str, str, str], int] = {}
        self.started: dict[tuple[str, str, str], int] = {}
        self.owner: dict[str, tuple[str, str, str]] = {}
        for i, (teacher, student) in enumerate(study.pairs):
            for j, method in enumerate(study.search.methods):
                params = space.for_method(method)
                warm = [{k: v for k, v in p.items() if k in params} for p in study.search.warm_start]
                key = (teacher, student, method)
                self.groups[key] = OptunaSearch(
                    space=define_by_run(space, method), metric=self.objectives, mode=self.directions,
                    sampler=TPESampler(seed=study.seed + 1000 * i + j, multivariate=True),
                    points_to_evaluate=[p for p in warm if p] or None)
                self.budget[key] = budget[method]
                self.started[key] = 0
        self.warm_from_pairs = study.search.warm_start_from_pairs
        self.params_of: dict[str, dict] = {}
        self.best: dict[tuple[str, str, str], tuple[float, dict]] = {}  # key -> (score, params)
        self.seeded: set[tuple[str, str, str]] = set()

    def suggest(self, trial_id: str) -> dict | str | None:
        open_groups = [k for k in self.groups if self.started[k] < self.budget[k]]
        if not open_groups:
            return Searcher.FINISHED
        key = min(open_groups, key=lambda k: self.started[k])
        self._seed_from_other_pairs(key)
        params = self.groups[key].suggest(trial_id)
        if params is None:
            return None
        self.started[key] += 1
        self.owner[trial_id] = key
        self.params_of[trial_id] = params
        teacher, student, method = key
        return {"teacher": teacher, "student": student, "method": method, "phase": "search", **params}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.owner:
            self.groups[self.owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.owner:
            return
        key = self.owner[trial_id]
        finished = bool(result and result.get("final")) and not error
        # a trial stopped early reaches Optuna as pruned, with the values it reported per epoch: what
        # it really reached, never a final score it did not earn
        self.groups[key].on_trial_complete(trial_id, result if finished else None, error)
        if finished and (key not in self.best or result[METRIC] > self.best[key][0]):
            self.best[key] = (result[METRIC], self.params_of[trial_id])

    def _seed_from_other_pairs(self, key: tuple[str, str, str]) -> None:
        """Warm start: a pair's search tries the best point another pair found for the same method
        first (once), so temperatures carry across pairs instead of every pair starting cold."""
        if not self.warm_from_pairs or key in self.seeded:
            return
        # not a point this pair tried already: its own best may have come back as another pair's best
        tried = [params for trial_id, params in self.params_of.items() if self.owner[trial_id] == key]
        donors = [best for k, best in self.best.items()
                  if k[2] == key[2] and k[:2] != key[:2] and best[1] not in tried]
        if donors:
            point = max(donors, key=lambda b: b[0])[1]
            if point:
                # OptunaSearch keeps its optuna.Study private; enqueue_trial is how it seeds its
                # own points_to_evaluate too
                self.groups[key]._ot_study.enqueue_trial(point)
            self.seeded.add(key)


class FamilySearch(PairedSearch):
    """A study with a student family: one multi-objective OptunaSearch per (teacher, family, method) --
    a *size group* -- maximising the validation metric and minimising the student's cost (`COST`:
    parameters or measured latency) over the student fields and the method's knobs together.

    Budgets, round-robin and warm starts are PairedSearch's, per size group. Optuna cannot prune a
    multi-objective study, so per-epoch results are not passed on (Ray's OptunaSearch drops them) and
    a family study refuses early stopping (config.Study). A stopped or failed trial reaches Optuna
    without values (pruned / failed).
    """

    objectives, directions = [METRIC, COST], [MODE, "min"]


def searcher_for(study: Study, space: Space) -> PairedSearch:
    return FamilySearch(study, space) if study.family is not None else PairedSearch(study, space)


# ---------------------------------------------------------------------------------------- trials
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
        _inject_fault(metrics["epoch"], node_id)

    with tempfile.TemporaryDirectory() as d:
        result = run_distillation(run, on_epoch=on_epoch, resume=resume,
                                  save_dir=Path(d) / STUDENT_DIR if is_chief else None)
        final = {**result, "final": 1, METRIC: result["val_best"], "node_id": node_id,
                 COST: result.get("student_latency_ms", result["student_parameters"])}
        if is_chief:
            report(final, checkpoint=checkpoint_cls.from_directory(d))
        else:
            report(final)


def _inject_fault(epoch: int, node_id: str) -> None:
    """Faults on demand, for the cluster tests: `$AKD_RAY_FAULTS` names a folder of `*.fault` files,
    each holding `exit N` or `pause N`. The first trial to report epoch N (with its checkpoint) claims
    a file -- an atomic rename to `*.claimed`, so one trial per file -- says who it is in `*.json`, then
    dies at once (`exit`: a killed worker) or waits until the test deletes `*.claimed` (`pause`)."""
    folder = os.environ.get(FAULTS_ENV)
    for fault in sorted(Path(folder).glob("*.fault")) if folder else []:
        try:
            action, at = fault.read_text().split()
            if int(at) != epoch:
                continue
            claimed = fault.rename(fault.with_suffix(".claimed"))
        except (OSError, ValueError):  # another trial claimed it first
            continue
        who = {"trial_id": tune.get_context().get_trial_id(), "node_id": node_id, "pid": os.getpid(),
               "epoch": epoch}
        fault.with_suffix(".tmp").write_text(json.dumps(who))
        fault.with_suffix(".tmp").rename(fault.with_suffix(".json"))
        if action == "exit":
            os._exit(1)
        while claimed.exists():
            time.sleep(0.1)
        return


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


class Points(Resumable):
    """Fixed configurations in order (the confirmation re-runs), resumable like any searcher."""

    def __init__(self, points: list[dict]):
        super().__init__(metric=METRIC, mode=MODE)
        self.points, self.next = points, 0

    def suggest(self, trial_id: str) -> dict | str:
        if self.next >= len(self.points):
            return Searcher.FINISHED
        self.next += 1
        return self.points[self.next - 1]

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass



# ---------------------------------------------------------------------------------------- interrupts
class Interrupted(KeyboardInterrupt):
    """The user stopped the study (SIGINT or SIGTERM): finished trials are kept and a rerun resumes.
    A KeyboardInterrupt, so no `except Exception` on its way out (Tune's own cleanup) swallows it."""

    def __init__(self, signum: int, where: str = "the study"):
        super().__init__(signum, where)
        self.signum, self.where = signum, where

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class Signals:
    """SIGINT and SIGTERM in the driver, installed after `ray.init` (which sets its own SIGTERM handler).

    The first signal during a Tune run asks Tune to stop as its own Ctrl-C handling does (SIGUSR1:
    running trials end at their last checkpoint, the experiment state is saved and stays resumable);
    `run_phase` then raises `Interrupted`. Outside a Tune run, or on a second signal, `Interrupted`
    is raised at once.
    """

    def __init__(self):
        self.signum: int | None = None
        self.in_tune = False
        self.stage = "the start of the study"  # what the driver is doing: for the message
        self._before: dict[int, Any] = {}

    def __enter__(self) -> "Signals":
        if threading.current_thread() is threading.main_thread():
            # Tune would install its own SIGINT handler, which stops the run but tells no one
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._before[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._before.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
            if self.in_tune:
                os.kill(os.getpid(), signal.SIGUSR1)  # Tune's graceful stop (tune.run registers it)
                return
        raise Interrupted(signum, self.stage)


# ---------------------------------------------------------------------------------------- teachers
def prepare_teachers(study: Study) -> dict[str, Path]:
    """Each teacher trained (or loaded) once, as a Ray task with one trial's resources (the live view
    follows its epochs through a small file each task writes); then, for TAKD, each teacher's
    assistant, once per study, with the study's assistant recipe."""
    from akd_ray.teacher import prepare_assistant, prepare_teacher

    files = {name: Layout.of(study).teachers / f".{name}.epoch.json" for name in study.teachers}
    refs = {name: _as_task(study, prepare_teacher).remote(name, spec, study.task, Layout.of(study).root, study.seed,
                                                          on_epoch=progress.TeacherEpochs(files[name], spec.train.epochs))
            for name, spec in study.teachers.items()}
    dirs = progress.wait_teachers(refs, files)
    if "takd" in study.search.trials:
        ray.get([_as_task(study, prepare_assistant).remote(study.assistant, study.task, study.assistant_train or study.train, d,
                                  Layout.of(study).root, study.seed) for d in dirs.values()])
    return dirs


def _as_task(study: Study, fn: Callable):
    r = study.resources
    return ray.remote(fn).options(num_cpus=r.cpus_per_worker, num_gpus=min(1, r.gpus_per_worker))


def assess_teacher(folder: Path, task_spec: TaskSpec, cache_dir: Path | None = None) -> dict[str, Any]:
    """The teacher's metric on val and test beside the majority-class baseline on the same splits."""
    from akd_ray.engine import evaluate, pick_device
    from akd_ray.models import load_model
    from akd_ray.tasks import load_task
    from akd_ray.tasks.metrics import majority_baseline

    task = load_task(task_spec, str(folder), cache_dir)
    device = pick_device(TrainSpec())
    model = load_model(folder, task, device)
    fp32 = torch.autocast(device.type, enabled=False)
    out: dict[str, Any] = {"metric": task.metric}
    for name, split in (("val", task.val), ("test", task.test)):
        out[name] = evaluate(model, task, split, device, 512, fp32)[task.metric]
        out[f"majority_{name}"] = majority_baseline(task, split)
    return out


def assess_teachers(study: Study, teacher_dirs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    refs = {name: _as_task(study, assess_teacher).remote(folder, study.task, Layout.of(study).cache)
            for name, folder in teacher_dirs.items()}
    return {name: ray.get(ref) for name, ref in refs.items()}


def check_teachers(study: Study, quality: dict[str, dict[str, Any]]) -> None:
    """Stop before the search when a teacher is not clearly better than predicting the majority class:
    searching temperatures for such a teacher distils noise."""
    for name, q in quality.items():
        margin = study.teachers[name].min_margin
        if margin is not None and q["val"] < q["majority_val"] + margin:
            raise StudyStopped(
                f"{study.source}: teachers.{name}: validation {q['metric']} {100 * q['val']:.1f} is not clearly "
                f"above the majority-class baseline {100 * q['majority_val']:.1f} (min_margin: needs "
                f"+{100 * margin:.1f}), so no search was started. Train it longer or with another lr "
                f"(teachers.{name}.train), on more data (task.max_train_samples), or load a stronger one "
                f"(prepare: load); set teachers.{name}.min_margin: null to distil from it anyway.")


class StudyStopped(RuntimeError):
    """The study cannot go on as asked; the message says why and what to change."""


def teacher_line(name: str, q: dict[str, Any]) -> str:
    return (f"teacher {name}: {q['metric']} val {100 * q['val']:.1f} / test {100 * q['test']:.1f} "
            f"(majority class: val {100 * q['majority_val']:.1f} / test {100 * q['majority_test']:.1f})")


# ---------------------------------------------------------------------------------------- phases
def run_phase(study: Study, phase: str, searcher: Searcher, num_samples: int, teacher_dirs: dict[str, Path],
              callbacks: list, max_concurrent: int, signals: Signals | None = None) -> tune.ResultGrid:
    r = study.resources
    # single-worker trials train in the trial itself; a multi-worker trial only drives its TorchTrainer,
    # whose worker group asks for the resources
    per_trial = ({"cpu": r.cpus_per_worker, "gpu": r.gpus_per_worker} if r.workers == 1 else {"cpu": 0, "memory": 1})
    trainable = tune.with_resources(tune.with_parameters(trial, study=study, teacher_dirs=teacher_dirs), per_trial)
    path = Layout.of(study).tune / phase
    if tune.Tuner.can_restore(str(path)):  # a re-run resumes: finished trials stay finished
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=False, restart_errored=False)
    else:
        scheduler = None
        if study.search.scheduler == "asha" and phase == "search":
            scheduler = GroupedHalving(study.search.grace_period, study.search.reduction_factor,
                                       max_t=study.train.epochs)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, metric=METRIC, mode=MODE, num_samples=num_samples,
                                        scheduler=scheduler, max_concurrent_trials=max_concurrent),
            run_config=tune.RunConfig(
                name=phase, storage_path=str(Layout.of(study).tune), callbacks=callbacks,
                failure_config=tune.FailureConfig(max_failures=r.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                verbose=int(os.environ.get("AKD_RAY_VERBOSE", "1"))))
    signals = signals or Signals()
    signals.stage = f"the {phase} phase"
    signals.in_tune = True
    try:
        grid = tuner.fit()
    finally:
        signals.in_tune = False
    if signals.signum is not None:
        done = sum(1 for result in grid if (result.metrics or {}).get("final"))
        raise Interrupted(signals.signum, f"the {phase} phase, with {done} of {num_samples} trials finished")
    return grid


def trial_rows(grid: tune.ResultGrid) -> list[dict]:
    """One row per trial: who/what (identity), the searched params, final metrics or the error."""
    rows = []
    for result in grid:
        m, config = result.metrics or {}, result.config or {}
        finished = bool(m.get("final"))
        rows.append({
            **{k: config.get(k) for k in IDENTITY},
            "params": {k: v for k, v in config.items() if k not in IDENTITY},
            **{k: v for k, v in m.items() if k.startswith("test_") or k in
               ("val_best", "best_epoch", "student_parameters", "student_latency_ms", COST, "time_total_s",
                "trial_id", "node_id")},
            "finished": finished,
            "stopped": not finished and not result.error,  # by early stopping
            "error": str(result.error) if result.error else None,
            # Train-wrapped trials hand Tune the path of the Train checkpoint (TuneReportCallback)
            "checkpoint": (m.get("checkpoint_path") or (result.checkpoint.path if result.checkpoint else None))
                          if finished else None,
        })
    return rows


def confirmation_points(study: Study, rows: list[dict], quality: dict[str, dict] | None = None) -> list[dict]:
    """Each pair's best config of every method, once per confirmation seed (fresh seeds: the search
    picked on `study.seed`, so its own score would carry the winner's luck). With a family, also each
    teacher's smallest student within X points of it (`family.within`), unless that is one of the
    former."""
    points = []
    chosen: set[tuple] = set()
    for teacher, student in study.pairs:
        for method in study.search.methods:
            done = [r for r in rows if (r["teacher"], r["student"], r["method"]) == (teacher, student, method)
                    and r["finished"]]
            if not done:
                continue
            best = max(done, key=lambda r: r[METRIC])
            chosen.add((teacher, method, json.dumps(best["params"], sort_keys=True)))
            for s in range(1, study.search.confirm_seeds + 1):
                points.append({"teacher": teacher, "student": student, "method": method, "phase": "confirm",
                               "seed": study.seed + s, **best["params"]})
    for teacher, family in (study.pairs if study.family is not None and quality else []):
        for x in study.family.within:
            pick = smallest_within(rows, teacher, quality[teacher]["val"], x)
            key = pick and (teacher, pick["method"], json.dumps(pick["params"], sort_keys=True))
            if pick is None or key in chosen:
                continue
            chosen.add(key)
            for s in range(1, study.search.confirm_seeds + 1):
                points.append({"teacher": teacher, "student": family, "method": pick["method"], "phase": "confirm",
                               "seed": study.seed + s, **pick["params"]})
    return points


def register_best_students(study: Study, rows: list[dict], teacher_dirs: dict[str, Path], callback,
                           verdicts: list) -> None:
    """Each pair's recommended method -> its best student (by validation, search or confirmation run)
    in the MLflow registry, with the pick on the model version."""
    from akd_ray import tracking
    from akd_ray.tasks import load_task

    task = None
    for v in verdicts:
        done = [r for r in rows if (r["teacher"], r["student"], r["method"]) == (v.teacher, v.student, v.best)
                and r["checkpoint"]]
        if not done:
            continue
        best = max(done, key=lambda r: r[METRIC])
        run_id = callback.run_id(best["trial_id"])
        if run_id is None:  # MLflow never received this trial (e.g. it was down): nothing to attach to
            continue
        task = task or load_task(study.task, str(teacher_dirs[v.teacher]))
        tracking.register_best(study, (v.teacher, v.student), run_id, Path(best["checkpoint"]) / STUDENT_DIR, task,
                               pick=v)


@dataclass
class StudyResult:
    rows: list[dict]
    layout: Layout
    tracking_uri: str
    report_files: list[Path]
    teachers: dict[str, dict[str, Any]]


def run_study(study: Study, address: str | None = None, say: Callable[[str], None] = print,
              plan: preflight.Plan | None = None, verbose: bool = False) -> StudyResult:
    """Run (or resume) a whole study: check, start Ray, teachers, search, confirm, track, report.

    `plan`: what `preflight.check` returned (checked here when None) -- every check that needs no
    training runs before Ray or MLflow start or any folder is made. While it runs, the live view and
    status.json (akd_ray.progress) follow it, and Tune's own output goes to `<storage>/<name>/tune.log`
    unless `verbose`; `say` is then the live view's.

    Raises `Interrupted` on SIGINT/SIGTERM (the MLflow study run and its unfinished trial runs are
    marked KILLED, no report is written) and `StudyStopped` when a teacher is too weak to distil.
    """
    from akd_ray import report as reports
    from akd_ray import tracking

    plan = plan or preflight.check(study, address)
    space = plan.space
    # one checkpoint per epoch is by design (resumable trials): Tune's warning about it is noise
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    uri = tracking.tracking_uri(study)
    tracking.check_reachable(uri)  # before any trial or run exists
    parent = callback = None
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=address or os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    signals = Signals().__enter__()
    try:
        max_concurrent = check_resources(study)
        layout = Layout.of(study)
        layout.root.mkdir(parents=True, exist_ok=True)
        tracker = progress.start(study, plan, layout.root, verbose)
        say = tracker.view.say
        parent = tracking.start_study(study, Path(study.source).read_text() if study.source else "",
                                      Path(study.search.space).read_text())
        signals.stage = "the teachers' preparation (no trial had started)"
        tracker.phase("teachers")
        teacher_dirs = prepare_teachers(study)
        quality = assess_teachers(study, teacher_dirs)
        for name, q in quality.items():
            say(teacher_line(name, q))
        tracking.log_teachers(parent, {n: teacher_info(d)["fingerprint"] for n, d in teacher_dirs.items()}, quality)
        check_teachers(study, quality)
        callback = tracking.MlflowCallback(study, parent)

        budget = budgets(study, space)
        total = sum(budget.values()) * len(study.pairs)
        tracker.phase("search")
        rows = trial_rows(run_phase(study, "search", searcher_for(study, space), total, teacher_dirs,
                                    [callback, progress.ProgressCallback("search", {
                                        f"{t}->{s}|{m}": n for t, s in study.pairs for m, n in budget.items()})],
                                    max_concurrent, signals))
        points = confirmation_points(study, rows, quality)
        if points:
            tracker.phase("confirm")
            rows += trial_rows(run_phase(study, "confirm", Points(points), len(points), teacher_dirs,
                                         [callback, progress.ProgressCallback("confirm", progress.budgets_of(points))],
                                         max_concurrent, signals))
        signals.stage = "the report (every trial had finished)"
        tracker.phase("report")
        files = reports.write_report(study, rows, layout.report, quality)  # local first: never lost to MLflow
        if callback.flush():
            raise tracking.TrackingError(
                f"MLflow at {uri} is unreachable at the end of the study: results are in {layout.root}, "
                f"unsent MLflow calls are kept there; run `akd-ray tune` on the study again to send them")
        verdicts = reports.verdicts(study, rows)
        if study.mlflow.register_best:
            register_best_students(study, rows, teacher_dirs, callback, verdicts)
        tracking.log_picks(parent, verdicts)
        tracking.log_report(parent, files, verdicts)
        tracking.finish_study(parent)
        progress.stop("done")
        return StudyResult(rows, layout, uri, files, quality)
    except KeyboardInterrupt:  # Interrupted, or a Ctrl-C outside our handler
        progress.stop("interrupted")
        if parent is not None:
            with contextlib.suppress(Exception):  # MLflow may be away; the spool keeps what it can
                if callback is not None:
                    callback.flush()
                tracking.finish_study(parent, "KILLED", unfinished="KILLED")
        raise
    except BaseException:
        progress.stop("failed")
        if parent is not None:
            with contextlib.suppress(Exception):  # MLflow may be the thing that failed
                tracking.finish_study(parent, "FAILED")
        raise
    finally:
        progress.stop()
        signals.__exit__()
        if started_ray:
            ray.shutdown()
