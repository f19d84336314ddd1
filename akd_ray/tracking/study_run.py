"""The study's experiment and its parent run: created once, found again by tag when a study resumes,
closed FINISHED / FAILED / KILLED; the teachers, the report and the verdict land on it."""

from __future__ import annotations

import getpass
import logging
import math
import subprocess
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE, MLFLOW_USER

import akd_ray
from akd_ray.config import Study
from akd_ray.tracking.store import (ALIAS, PAIR_LEVEL, PAIR_LEVEL_TAG, PAIR_TAG, STUDY_RUN_TAG, STUDY_TAG, TrackingError, _is_number, _log_batch,
                                    _now_ms, check_reachable, client_for, shown_param, study_dir, tracking_uri)

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
            "study": parent.data.tags.get(STUDY_TAG, ""), PAIR_LEVEL_TAG: PAIR_LEVEL}
    return client.create_run(parent.info.experiment_id, run_name=pair_name(teacher, student), tags=tags).info.run_id


def pair_name(teacher: str, student: str) -> str:
    """`mlp-16 ← mlp-256x2`: the student first, since it is what differs between a study's pairs and
    the runs table cuts long names at the end."""
    return f"{student} ← {teacher}"


def log_picks(parent_run_id: str, verdicts: list) -> None:
    """Each pair's run gets its pick, then FINISHED. Every pair run carries the same names (README,
    "MLflow"), numbers in points (x100) like the report's text:

    params   `pick.method`, `pick.<knob>` (tau_max, schedule, ...)
    metrics  `pick.mean`, `pick.std`, `pick.ci95_low`, `pick.ci95_high` (95% t-interval), `pick.seeds`;
             `<method>.mean` and `gain_over_<method>` (pick - method on test, the paired-bootstrap
             interval at the Holm-corrected level in `gain_over_<method>.ci_low` / `.ci_high`) for
             every method of the study: 0 for the pick itself, NaN where a method has no result
    tags     `recommended` (the pick in words, and whether it is decided), `verdict`, `decided` (true: ahead of every other
             method on validation beyond noise, nothing missing), `registered_model`
             (`models:/<name>/<version>`)
    note     the run's description: the verdict and a table of every method (`pair_note`)

    Sorted or filtered in the runs table, the pair runs *are* the study's answer.
    """
    client = client_for()
    study_name = client.get_run(parent_run_id).data.tags.get(STUDY_TAG, "")
    for v in verdicts:
        run_id = pair_run(client, parent_run_id, v.teacher, v.student)
        best = v.methods.get(v.best) if v.best else None
        params = {"pick.method": v.best or "none",
                  **{f"pick.{k}": shown_param(val) for k, val in (best.config if best else {}).items()}}
        held = client.get_run(run_id).data.params
        changed = sorted(k for k, val in params.items() if k in held and held[k] != str(val))
        if changed:  # MLflow params are immutable: the verdict tag says what the pick is now
            log.warning("pair run %s keeps its first %s; the new pick is in its `verdict` tag", run_id, changed)
        model = _registered(client, study_name, v.teacher, v.student)
        tags = {"verdict": v.text, "decided": str(v.decided).lower(),
                "recommended": recommended(v),
                MLFLOW_RUN_NOTE: pair_note(v, model)}
        if model is not None:
            tags["registered_model"] = model
        _log_batch(client, run_id, params={k: val for k, val in params.items() if k not in held},
                   metrics=[Metric(k, round(float(val), 2), _now_ms(), 0) for k, val in pair_metrics(v).items()],
                   tags=tags)  # 2 decimals: the runs table shows a float's every digit
        client.set_terminated(run_id, status="FINISHED")


def recommended(v) -> str:
    """The pick in words and how certain it is: `Annealing-KD tau_max 4, cosine — decided`, or
    `scratch — not decided (no method clearly better)`: the first column of the UI's pair view."""
    from akd_ray.verdict import describe

    best = v.methods.get(v.best) if v.best else None
    if best is None:
        return "none — no method has a result"
    return f"{describe(v.best, best.config)} — " + ("decided" if v.decided else "not decided (no method clearly better)")


def pair_metrics(v) -> dict[str, float]:
    """A verdict's numbers under the names every pair run shares (see `log_picks`), in points."""
    nan = math.nan
    best = v.methods.get(v.best) if v.best else None
    out = {"pick.mean": nan, "pick.std": nan, "pick.ci95_low": nan, "pick.ci95_high": nan, "pick.seeds": 0.0}
    if best is not None:
        out.update({"pick.mean": 100 * best.mean, "pick.std": 100 * best.std, "pick.ci95_low": 100 * best.low,
                    "pick.ci95_high": 100 * best.high, "pick.seeds": float(best.n)})
    for m, r in v.methods.items():
        key = m.replace("+", "-")  # MLflow metric names take no '+': 'annealing+layers' -> 'annealing-layers'
        out[f"{key}.mean"] = 100 * r.mean if r.n else nan
        diff, low, high = (0.0, 0.0, 0.0) if m == v.best else v.differences.get(m, (nan, nan, nan))
        out.update({f"gain_over_{key}": 100 * diff, f"gain_over_{key}.ci_low": 100 * low,
                    f"gain_over_{key}.ci_high": 100 * high})
    return out


def pair_note(v, model: str | None = None) -> str:
    """The pair run's description (Markdown): the verdict in one line, then one row per method."""
    from akd_ray.verdict import NAMES, describe

    best = v.methods.get(v.best) if v.best else None
    verb = "use" if v.decided else "no method clearly better; recommended"
    head = (f"**{pair_name(v.teacher, v.student)}: {verb} {describe(v.best, best.config)}**, "
            f"test {_points(best)} points" if best else f"**{pair_name(v.teacher, v.student)}: no pick**")
    lines = [head, "", v.text + ("" if v.decided else
                                 " *(not decided: chosen on validation, the pick is not ahead of every other "
                                 "method beyond noise, or a run is missing)*"), "",
             "| method | config | test mean ± seed SD [95% CI] (points) | seeds finished/run | pick − this on test "
             "(seeds × test examples, Holm) |", "|---|---|---|---|---|"]
    for m, r in v.methods.items():
        config = ", ".join(f"{k} {val:.3g}" if isinstance(val, float) else f"{k} {val}" for k, val in r.config.items())
        d = (0.0, 0.0, 0.0) if m == v.best else v.differences.get(m)
        gain = "—" if m == v.best or d is None else f"{_signed(d[0])} ({_signed(d[1])}…{_signed(d[2])})"
        name = f"**{NAMES.get(m, m)}** (pick)" if m == v.best else NAMES.get(m, m)
        seeds = f"{r.finished}/{r.run}" if getattr(r, "run", 0) else str(r.n)
        lines.append(f"| {name} | {config if r.n else ''} | {_points(r) if r.n else 'n/a'} | {seeds} | {gain} |")
    if model is not None:
        lines += ["", f"Registered student: `{model}` (alias `best`)"]
    return "\n".join(lines)


def _points(r) -> str:
    if r.n < 2 or r.low != r.low:
        return f"{100 * r.mean:.2f} (1 run)" if r.n == 1 else f"{100 * r.mean:.2f}"
    # "±" is the seed standard deviation everywhere akd-ray prints it; the interval comes in brackets
    return f"{100 * r.mean:.2f} ± {100 * r.std:.2f} [{100 * r.low:.2f}…{100 * r.high:.2f}]"


def _signed(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:+.2f}"


def _registered(client: MlflowClient, study_name: str, teacher: str | None, student: str,
                name: str | None = None) -> str | None:
    """`models:/<name>/<version>` of the pair's registered best student (or the model `name`), None if
    there is none."""
    from mlflow.exceptions import MlflowException

    from akd_ray.tracking.registry import model_name

    name = name or model_name(study_name, teacher, student)
    try:
        version = client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        return None
    return f"models:/{name}/{version.version}"


def _find_or_create_experiment(client: MlflowClient, study: Study) -> str:
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


def _experiment(client: MlflowClient, study: Study) -> str:
    """The study's experiment, with the UI's pair view saved on it (akd_ray.tracking.ui)."""
    from akd_ray.tracking.ui import save_view

    experiment_id = _find_or_create_experiment(client, study)
    save_view(client, experiment_id, study.search.methods)
    return experiment_id


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
    metrics = [Metric(f"teacher.{n}.{k}", round(100 * float(v), 2), _now_ms(), 0)  # points, like every score
               for n, q in quality.items() for k, v in q.items() if _is_number(v)]
    _log_batch(client_for(), parent_run_id, metrics=metrics,
               tags={f"teacher.{n}.fingerprint": fp for n, fp in fingerprints.items()})


def log_report(parent_run_id: str, files: list[Path], verdicts: list = ()) -> None:
    """Attach the report (CSV, Markdown, plots; folders too) to the study run under `report/`; the
    run's description opens with one line per pair (`verdict_lines`), then the Markdown report; tags
    `verdict.<teacher>.<student>` and `recommended.<teacher>.<student>`."""
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
    if markdown is not None or verdicts:
        head = verdict_lines(verdicts)
        tags[MLFLOW_RUN_NOTE] = "\n".join([*head, "", "---", "", markdown or ""]) if head else markdown
    _log_batch(client, parent_run_id, tags=tags)


def verdict_lines(verdicts: list) -> list[str]:
    """One Markdown line per pair, the answer first: `- **mlp-16 ← mlp-256x2**: Annealing-KD tau_max 4,
    cosine, 98.33 ± 0.28 points`, then the verdict."""
    from akd_ray.verdict import describe

    out = []
    for v in verdicts:
        best = v.methods.get(v.best) if v.best else None
        pick = f"{describe(v.best, best.config)}, {_points(best)} points" if best else "no pick"
        out.append(f"- **{pair_name(v.teacher, v.student)}**: {pick}. {v.text}"
                   + ("" if v.decided or best is None else " (not decided)"))
    return out
