"""The study's experiment and its parent run: created once, found again by tag when a study resumes,
closed FINISHED / FAILED / KILLED; the teachers, the report and the verdict land on it."""

from __future__ import annotations

import getpass
import logging
import subprocess
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE, MLFLOW_USER

import akd_ray
from akd_ray.config import Study
from akd_ray.tracking.store import (PAIR_TAG, STUDY_RUN_TAG, STUDY_TAG, TrackingError, _is_number, _log_batch,
                                    _now_ms, check_reachable, client_for, study_dir, tracking_uri)

log = logging.getLogger(__name__)
# MLflow 3's UI opens an experiment by its kind: without this tag, on the GenAI overview ("Traces: 0");
# with it, on the runs table of model training
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def start_study(study: Study, study_file_text: str, space_file_text: str) -> str:
    """The study's parent run id: created on the first start, the same run when the study resumes.

    Also makes the study's tracking URI this process's default, so later calls find it.
    """
    uri = tracking_uri(study)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    client = client_for(uri)
    experiment_id = _experiment(client, study)
    found = client.search_runs([experiment_id], filter_string=f"tags.`{STUDY_TAG}` = '{study.name}'",
                               order_by=["attributes.start_time ASC"], max_results=1)
    tags = {
        STUDY_TAG: study.name, "task": study.task.name,
        "teachers": ", ".join(study.teachers), "students": ", ".join(study.students) or f"family {study.family.name}",
        "methods": ", ".join(study.search.methods), MLFLOW_USER: _user(),
        MLFLOW_RUN_NOTE: (f"Annealing-KD study `{study.name}` on {study.task.name}: "
                          f"{len(study.pairs)} teacher-student pair(s), methods {', '.join(study.search.methods)}."),
        **code_version(),
    }
    if study.source is not None:
        tags["mlflow.source.name"] = str(study.source)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")  # resumed
        log.info("MLflow: resuming study run %s in experiment %s", run_id, experiment_id)
    else:
        run_id = client.create_run(experiment_id, run_name=study.name, tags=tags).info.run_id
    _log_batch(client, run_id, tags=tags)  # the code may have moved on since the first start
    client.log_text(run_id, study_file_text, "study.yaml")
    client.log_text(run_id, space_file_text, "search_space.yaml")
    client.log_text(run_id, study.model_dump_json(indent=2), "study.resolved.json")  # with every default
    return run_id


def finish_study(parent_run_id: str, status: str = "FINISHED", unfinished: str | None = None) -> None:
    """Mark the parent run FINISHED (or FAILED / KILLED) at the end of a study; with `unfinished`, every
    pair or trial run still RUNNING below it gets that status too (an interrupted study's)."""
    client = client_for()
    if unfinished is not None:
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        for run in client.search_runs([experiment_id], max_results=10_000, filter_string=(
                f"tags.`{STUDY_RUN_TAG}` = '{parent_run_id}' and attributes.status = 'RUNNING'")):
            client.set_terminated(run.info.run_id, status=unfinished)
    client.set_terminated(parent_run_id, status=status)


def pair_run(client: MlflowClient, parent_run_id: str, teacher: str, student: str) -> str:
    """The run of a teacher-student pair under the study run (found again by tag, or created): its
    trials nest under it, and at the end it carries the pair's pick (`log_picks`)."""
    parent = client.get_run(parent_run_id)
    pair = f"{teacher}->{student}"
    found = client.search_runs([parent.info.experiment_id], max_results=1, filter_string=(
        f"tags.`{PAIR_TAG}` = '{pair}' and tags.`{STUDY_RUN_TAG}` = '{parent_run_id}'"))
    if found:
        if found[0].info.status != "RUNNING":
            client.update_run(found[0].info.run_id, status="RUNNING")  # a resumed study adds to it
        return found[0].info.run_id
    tags = {MLFLOW_PARENT_RUN_ID: parent_run_id, STUDY_RUN_TAG: parent_run_id, PAIR_TAG: pair,
            "teacher": teacher, "student": student, "pair": pair,
            "study": parent.data.tags.get(STUDY_TAG, ""), "akd.level": "pair"}
    return client.create_run(parent.info.experiment_id, run_name=f"{teacher} → {student}", tags=tags).info.run_id


def log_picks(parent_run_id: str, verdicts: list) -> None:
    """Each pair's run gets its pick: params `pick.method`, `pick.<knob>` (tau_max, schedule, ...),
    metrics `pick.mean` / `pick.ci_low` / `pick.ci_high` / `pick.seeds`, `<method>.mean` per method and
    `gain_over_<method>` with its Welch interval, tags `verdict` and `decided`; then FINISHED. Sorted or
    filtered in the runs table, the pair runs *are* the study's answer."""
    client = client_for()
    for v in verdicts:
        run_id = pair_run(client, parent_run_id, v.teacher, v.student)
        best = v.methods.get(v.best) if v.best else None
        params = {"pick.method": v.best or "none", **{f"pick.{k}": val for k, val in (best.config if best else {}).items()}}
        held = client.get_run(run_id).data.params
        changed = sorted(k for k, val in params.items() if k in held and held[k] != str(val))
        if changed:  # MLflow params are immutable: the verdict tag says what the pick is now
            log.warning("pair run %s keeps its first %s; the new pick is in its `verdict` tag", run_id, changed)
        # MLflow metric names take no '+': 'annealing+layers' is logged as 'annealing-layers'
        metrics = {f"{m.replace('+', '-')}.mean": r.mean for m, r in v.methods.items() if r.n}
        if best is not None:
            metrics.update({"pick.mean": best.mean, "pick.std": best.std, "pick.ci_low": best.low,
                            "pick.ci_high": best.high, "pick.seeds": best.n})
        for m, (diff, low, high) in v.differences.items():
            m = m.replace("+", "-")
            metrics.update({f"gain_over_{m}": diff, f"gain_over_{m}.ci_low": low, f"gain_over_{m}.ci_high": high})
        _log_batch(client, run_id, params={k: val for k, val in params.items() if k not in held},
                   metrics=[Metric(k, float(val), _now_ms(), 0) for k, val in metrics.items() if val == val],
                   tags={"verdict": v.text, "decided": str(v.decided).lower()})
        client.set_terminated(run_id, status="FINISHED")


def _experiment(client: MlflowClient, study: Study) -> str:
    name = study.mlflow.experiment or study.name
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        # the default SQLite store keeps artifacts beside it, not in ./mlruns of whatever the cwd is
        location = None if study.mlflow.tracking_uri else (study_dir(study) / "mlartifacts").as_uri()
        return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND: MODEL_TRAINING})
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(f"MLflow experiment {name!r} at {client.tracking_uri} was deleted. Restore it "
                            f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) "
                            "or set `mlflow.experiment` in the study file to a new name.")
    if EXPERIMENT_KIND not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
    return experiment.experiment_id


def code_version() -> dict[str, str]:
    """`mlflow.source.git.commit` (and whether the tree had uncommitted changes) of the package, else the cwd."""
    for where in (Path(akd_ray.__file__).resolve().parent, Path.cwd()):
        try:
            sha = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                                 text=True, timeout=10)
            if sha.returncode != 0:
                continue
            dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):  # no git installed, or it hangs
            break
        return {MLFLOW_GIT_COMMIT: sha.stdout.strip(), "akd.git.dirty": str(bool(dirty.stdout.strip())).lower()}
    return {}


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return "unknown"


def log_teachers(parent_run_id: str, fingerprints: dict[str, str], quality: dict[str, dict]) -> None:
    """Which teacher weights the study distilled from (tags `teacher.<name>.fingerprint`) and what they
    score beside the majority-class baseline (metrics `teacher.<name>.val`, `...majority_val`, ...)."""
    metrics = [Metric(f"teacher.{n}.{k}", float(v), _now_ms(), 0)
               for n, q in quality.items() for k, v in q.items() if _is_number(v)]
    _log_batch(client_for(), parent_run_id, metrics=metrics,
               tags={f"teacher.{n}.fingerprint": fp for n, fp in fingerprints.items()})


def log_report(parent_run_id: str, files: list[Path], verdicts: list = ()) -> None:
    """Attach the report (CSV, Markdown, plots; folders too) to the study run under `report/`; the
    verdict per pair becomes the run's description and tags `verdict.<teacher>.<student>` and
    `recommended.<teacher>.<student>`."""
    client = client_for()
    for f in map(Path, files):
        if f.is_dir():
            client.log_artifacts(parent_run_id, str(f), f"report/{f.name}")
        else:
            client.log_artifact(parent_run_id, str(f), "report")
    markdown = next((Path(f).read_text() for f in files if Path(f).name == "pairs.md"), None)
    tags = {}
    for v in verdicts:
        tags[f"verdict.{v.teacher}.{v.student}"] = v.text
        tags[f"recommended.{v.teacher}.{v.student}"] = v.best or "none"
    if markdown is not None:
        tags[MLFLOW_RUN_NOTE] = markdown
    _log_batch(client, parent_run_id, tags=tags)
