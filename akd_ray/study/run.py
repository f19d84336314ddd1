"""A whole study: check, start Ray, teachers, search, confirm, track, report.

    study file -> Study -> PairedSearch (one OptunaSearch per pair and method) -> trials
    trial: one run_distillation, reported to Tune every epoch with a resumable checkpoint

Re-running a study resumes it: each phase is a Tune experiment under the study's storage, restored
with `Tuner.restore`, so finished trials are never run again.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ray
from ray import tune
from ray.tune.search import Searcher

from akd_ray import preflight, progress, teacher_verdict
from akd_ray.capacity import COST, smallest_within
from akd_ray.config import Study
from akd_ray.preflight import budgets
from akd_ray.space import STUDENT
from akd_ray.study.cluster import check_resources
from akd_ray.study.layout import IDENTITY, METRIC, MODE, PREDICTIONS_FILE, STUDENT_DIR, Layout, optuna_storage
from akd_ray.study.scheduler import GroupedHalving
from akd_ray.study.search import Points, recipe_of, recipe_phases, searcher_for, shared_knobs
from akd_ray.study.signals import Interrupted, Signals
from akd_ray.study.teachers import (assess_teachers, check_teachers, prepare_teachers, teacher_line,
                                    teacher_vs_scratch)
from akd_ray.study.trial import trial
from akd_ray.teacher import teacher_info


def run_phase(study: Study, phase: str, searcher: Callable[[], Searcher], num_samples: int,
              teacher_dirs: dict[str, Path], callbacks: list, max_concurrent: int,
              signals: Signals | None = None) -> tune.ResultGrid:
    """One phase as a Tune experiment under the study's storage: restored if one is there (the searcher
    comes back from its checkpoint, so `searcher` -- a factory -- is only called for a fresh start:
    a fresh search clears the Optuna studies of its names, which a restored one still reads)."""
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
        if study.search.scheduler == "asha" and phase.startswith("search"):
            scheduler = GroupedHalving(study.search.grace_period, study.search.reduction_factor,
                                       max_t=study.train.epochs)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher(), metric=METRIC, mode=MODE, num_samples=num_samples,
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
        # Train-wrapped trials hand Tune the path of the Train checkpoint (TuneReportCallback)
        checkpoint = (m.get("checkpoint_path") or (result.checkpoint.path if result.checkpoint else None)) if finished else None
        predictions = Path(checkpoint) / PREDICTIONS_FILE if checkpoint else None
        rows.append({
            **{k: config.get(k) for k in IDENTITY},
            "params": {k: v for k, v in config.items() if k not in IDENTITY},
            **{k: v for k, v in m.items() if k.startswith("test_") or k in
               ("val_best", "best_epoch", "best_stage", "student_parameters", "student_latency_ms", COST, "time_total_s",
                "trial_id", "node_id")},
            "finished": finished,
            "stopped": not finished and not result.error,  # by early stopping
            "error": str(result.error) if result.error else None,
            "checkpoint": checkpoint,
            "predictions": str(predictions) if predictions and predictions.exists() else None,
        })
    return rows


def confirmation_points(study: Study, rows: list[dict], quality: dict[str, dict] | None = None) -> list[dict]:
    """Each pair's best config of every method, once per confirmation seed (fresh seeds: the search
    picked on `study.seed`, so its own score would carry the winner's luck).

    With a family, methods are compared at one student size -- that of the group's best search trial
    -- so the verdict never weighs Annealing-KD at one depth against KD at another: each method's best
    trial at that size, or its best config moved to that size when it never tried it. Then also each
    teacher's smallest student within X points of it (`family.within`), unless that is one of the former.
    """
    points = []
    chosen: set[tuple] = set()
    for teacher, student in study.pairs:
        pair = [r for r in rows if (r["teacher"], r["student"]) == (teacher, student) and r["finished"]]
        size = _size(max(pair, key=lambda r: r[METRIC])["params"]) if pair and study.family is not None else None
        for method in study.search.methods:
            done = [r for r in pair if r["method"] == method]
            if not done:
                continue
            at_size = [r for r in done if size is None or _size(r["params"]) == size]
            params = max(at_size or done, key=lambda r: r[METRIC])["params"]
            params = {**params, **(size or {})}
            chosen.add((teacher, method, json.dumps(params, sort_keys=True)))
            for s in range(1, study.search.confirm_seeds + 1):
                points.append({"teacher": teacher, "student": student, "method": method, "phase": "confirm",
                               "seed": study.seed + s, **params})
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


def _size(params: dict[str, Any]) -> dict[str, Any]:
    """A family trial's student size: its `student.<field>` values."""
    return {k: v for k, v in params.items() if k.startswith(STUDENT)}


def register_best_students(study: Study, rows: list[dict], teacher_dirs: dict[str, Path], callback,
                           verdicts: list) -> None:
    """Each pair's recommended method -> its best student (by validation, search or confirmation run)
    in the MLflow registry, with the pick on the model version."""
    from akd_ray import tracking
    from akd_ray.tasks import load_task

    task = None
    for v in verdicts:
        done = [r for r in rows if (r["teacher"], r["student"], r["method"]) == (v.teacher, v.student, v.best)
                and r["checkpoint"] and not r.get("shared_from")]  # a shared scratch: registered in its own pair
        if not done:
            continue
        best = max(done, key=lambda r: r[METRIC])
        run_id = callback.run_id(best["trial_id"])
        if run_id is None:  # MLflow never received this trial (e.g. it was down): nothing to attach to
            continue
        task = task or load_task(study.task, str(teacher_dirs[v.teacher]))
        tracking.register_best(study, (v.teacher, v.student), run_id, Path(best["checkpoint"]) / STUDENT_DIR, task,
                               pick=v)


def search(study: Study, space, teacher_dirs: dict[str, Path], callback, max_concurrent: int,
           signals: Signals) -> list[dict]:
    """The search phase. With a shared recipe (search.shared), two Tune experiments: `search-recipe`
    (scratch over the full space: the recipe, on scratch's budget), then `search` (every other method
    over its own knobs, trained with the recipe scratch found for its pair)."""
    phases = recipe_phases(study, space)
    if phases is None:
        return _search_phase(study, space, "search", teacher_dirs, callback, max_concurrent, signals)
    (first, full), (second, own) = phases
    rows = _search_phase(first, full, "search-recipe", teacher_dirs, callback, max_concurrent, signals)
    fixed = recipe_of(rows, shared_knobs(study, space), study)
    return rows + _search_phase(second, own, "search", teacher_dirs, callback, max_concurrent, signals, fixed)


def _search_phase(study: Study, space, phase: str, teacher_dirs: dict[str, Path], callback, max_concurrent: int,
                  signals: Signals, fixed: dict | None = None) -> list[dict]:
    budget = budgets(study, space)
    groups = {f"{t}->{s}|{m}": n for t, s in study.pairs for m, n in budget.items() if study.searches(t, m)}
    total = sum(groups.values())
    if not total:
        return []
    return trial_rows(run_phase(study, phase, lambda: searcher_for(study, space, optuna_storage(study), fixed), total,
                                teacher_dirs, [callback, progress.ProgressCallback(phase, groups)],
                                max_concurrent, signals))


def race(study: Study, rows: list[dict], quality: dict, teacher_dirs: dict[str, Path], callback, tracker,
         max_concurrent: int, signals: Signals) -> list[dict]:
    """Racing: while a pair's pick is undecided on validation, its leader and the methods tied with it get
    more seeds, one round per planned look (verdict.planned_looks), each round its own resumable Tune
    experiment (`confirm-2`, `confirm-3`, ...). Returns the rows of the rounds run."""
    from akd_ray import report as reports
    from akd_ray.verdict import planned_looks, racing_points

    new: list[dict] = []
    for k in range(2, 1 + len(planned_looks(study))):
        # a shared scratch (searched once per student) is every pair's floor; it races in its own pair only
        shared = teacher_verdict.share_scratch(study, rows + new)
        points = [p for p in racing_points(study, reports.verdicts(study, shared, quality))
                  if study.searches(p["teacher"], p["method"])]
        if not points:
            break
        tracker.phase(f"confirm-{k}")
        new += trial_rows(run_phase(study, f"confirm-{k}", lambda: Points(points), len(points), teacher_dirs,
                                    [callback, progress.ProgressCallback(f"confirm-{k}", progress.budgets_of(points))],
                                    max_concurrent, signals))
    return new


def tau_points(study: Study, space, verdicts: list) -> list[dict]:
    """For each pair whose pick is an Annealing-family method: its config at the neighbouring tau_max
    values (the pick ± one step of an int space, within its bounds) on the pick's own seeds, so the
    verdict can say which temperatures cannot be told apart (verdict.tau_range)."""
    from akd_ray.config import base_method
    from akd_ray.verdict import TAU_PHASE

    p = space.params.get("tau_max")
    if p is None or p.type != "int":
        return []
    points = []
    for v in verdicts:
        if not v.best or base_method(v.best) not in ("annealing", "prokd") or not v.methods[v.best].seeds:
            continue
        r = v.methods[v.best]
        params = next(iter(r.seeds.values()))["params"]
        tau, step = params.get("tau_max"), int(p.step or 1)
        for t in ([] if tau is None else (tau - step, tau + step)):
            if p.low <= t <= p.high:
                points += [{"teacher": v.teacher, "student": v.student, "method": v.best, "phase": TAU_PHASE,
                            "seed": s, **params, "tau_max": t} for s in sorted(r.seeds)]
    return points


def register_picked_teachers(study: Study, rows: list[dict], teacher_dirs: dict[str, Path], callback,
                             choices: list) -> None:
    """Each student's best run (by validation) of the picked teacher and method, as the registered
    model `<study>-<student>` (akd_ray.teacher_verdict; scratch where no teacher helps)."""
    from akd_ray import tracking
    from akd_ray.tasks import load_task
    from akd_ray.tracking.registry import student_model_name

    for c in choices:
        done = [r for r in rows if r["student"] == c.student and r["method"] == c.method and r["checkpoint"]
                and (c.teacher is None or r["teacher"] == c.teacher) and not r.get("shared_from")]
        best = max(done, key=lambda r: r[METRIC]) if done else None
        run_id = callback.run_id(best["trial_id"]) if best else None
        if run_id is None:
            continue
        tracking.register_best(study, (best["teacher"], c.student), run_id, Path(best["checkpoint"]) / STUDENT_DIR,
                               load_task(study.task, str(teacher_dirs[best["teacher"]])), pick=c.as_verdict(),
                               name=student_model_name(study.name, c.student))


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

        tracker.phase("search")
        rows = search(study, space, teacher_dirs, callback, max_concurrent, signals)
        for line in teacher_vs_scratch(study, quality, rows):
            say(line)
        points = confirmation_points(study, rows, quality)
        if points:
            tracker.phase("confirm")
            rows += trial_rows(run_phase(study, "confirm", lambda: Points(points), len(points), teacher_dirs,
                                         [callback, progress.ProgressCallback("confirm", progress.budgets_of(points))],
                                         max_concurrent, signals))
            rows += race(study, rows, quality, teacher_dirs, callback, tracker, max_concurrent, signals)
            taus = tau_points(study, space, reports.verdicts(study, teacher_verdict.share_scratch(study, rows), quality))
            if taus:
                tracker.phase("confirm-tau")
                rows += trial_rows(run_phase(study, "confirm-tau", lambda: Points(taus), len(taus), teacher_dirs,
                                             [callback, progress.ProgressCallback("confirm-tau",
                                                                                  progress.budgets_of(taus))],
                                             max_concurrent, signals))
        signals.stage = "the report (every trial had finished)"
        tracker.phase("report")
        rows = teacher_verdict.share_scratch(study, rows)  # a shared scratch joins every pair of its student
        files = reports.write_report(study, rows, layout.report, quality)  # local first: never lost to MLflow
        if callback.flush():
            raise tracking.TrackingError(
                f"MLflow at {uri} is unreachable at the end of the study: results are in {layout.root}, "
                f"unsent MLflow calls are kept there; run `akd-ray tune` on the study again to send them")
        verdicts = reports.verdicts(study, rows, quality)
        if study.mlflow.register_best:
            register_best_students(study, rows, teacher_dirs, callback, verdicts)
        tracking.log_picks(parent, verdicts)
        choices = teacher_verdict.choose_teachers(study, rows, quality)
        if choices:
            if study.mlflow.register_best:
                register_picked_teachers(study, rows, teacher_dirs, callback, choices)
            tracking.log_teacher_choices(parent, choices)
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
