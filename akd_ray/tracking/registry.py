"""Each pair's best student as a registered MLflow model (`<study>-<teacher>-<student>`, alias
`best`): the pyfunc of akd_ray.tracking.student, with its signature, input example and pins."""

from __future__ import annotations

import contextlib
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

import akd_ray
from akd_ray.config import Study, TaskSpec
from akd_ray.models import SPEC_FILE
from akd_ray.tasks.base import TaskData
from akd_ray.tracking.store import ALIAS, client_for, env_defaults, shown_param, tracking_uri
from akd_ray.tracking.student import STUDENT_ARTIFACT, StudentModel, input_shape, text_columns

MODEL_CODE = '''"""An akd-ray student as an MLflow pyfunc (models from code): see akd_ray.tracking.student."""
import mlflow

from akd_ray.tracking.student import StudentModel

mlflow.models.set_model(StudentModel())
'''


def model_name(study: str, teacher: str, student: str) -> str:
    """The registered model of a pair: `<study>-<teacher>-<student>`, in characters every registry takes."""
    return _registry_safe(f"{study}-{teacher}-{student}")


def _registry_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def student_model_name(study: str, student: str) -> str:
    """The registered model of a student's "which teacher" pick (akd_ray.teacher_verdict): `<study>-<student>`."""
    return _registry_safe(f"{study}-{student}")


def register_best(study: Study, pair: tuple[str, str], run_id: str, checkpoint_dir: Path,
                  task: TaskData | TaskSpec | None = None, pick=None, name: str | None = None):
    """Log the pair's best student into its trial's run as a pyfunc and register it, alias `best`.

    `checkpoint_dir` is the student folder (`model.json` inside) or a trial checkpoint holding
    `student/`. `task` (TaskData: real inputs; default the study's task) makes the input example.
    `pick` (the pair's akd_ray.verdict.Verdict) goes on the version as tags and its description.
    `name`: the registered model's name (default `model_name` of the pair).
    Returns the ModelVersion; `mlflow.pyfunc.load_model("models:/<name>@best")` predicts with it.
    """
    folder = Path(checkpoint_dir)
    if not (folder / SPEC_FILE).exists() and (folder / STUDENT_ARTIFACT / SPEC_FILE).exists():
        folder = folder / STUDENT_ARTIFACT
    if not (folder / SPEC_FILE).exists():
        raise FileNotFoundError(f"{checkpoint_dir}: no saved student ({SPEC_FILE}, or {STUDENT_ARTIFACT}/{SPEC_FILE})")
    teacher, student = pair
    name = name or model_name(study.name, teacher, student)
    uri = tracking_uri(study)
    mlflow.set_tracking_uri(uri)
    client = client_for(uri)
    with contextlib.suppress(MlflowException):  # no such model or alias yet
        current = client.get_model_version_by_alias(name, ALIAS)
        if current.run_id == run_id:  # a resumed study: this trial is already the registered best
            describe_version(client, name, current.version, pick)
            return client.get_model_version(name, current.version)
    task_name = task.name if task is not None else study.task.name
    config = {"task": task_name, "max_seq_length": study.task.max_seq_length}
    example = _input_example(task_name, task, folder)

    wrapper = StudentModel()
    wrapper.load_context(mlflow.pyfunc.PythonModelContext({STUDENT_ARTIFACT: str(folder)}, config))
    with warnings.catch_warnings():  # "integer columns cannot hold missing values": `label` never misses
        warnings.filterwarnings("ignore", message=".*integer column")
        signature = mlflow.models.infer_signature(example, wrapper.predict(None, example))

    quiet = env_defaults({"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})
    with tempfile.TemporaryDirectory() as tmp, quiet, mlflow.start_run(run_id=run_id):
        code = Path(tmp) / "student_model.py"  # models from code: a readable file, no pickled object
        code.write_text(MODEL_CODE)
        info = mlflow.pyfunc.log_model(
            name=STUDENT_ARTIFACT, python_model=str(code), artifacts={STUDENT_ARTIFACT: str(folder)},
            model_config=config, signature=signature, input_example=example,
            code_paths=[str(Path(akd_ray.__file__).parent)],  # loads where akd-ray is not installed
            pip_requirements=_requirements(task_name), registered_model_name=name)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, ALIAS, version)
    metrics = client.get_run(run_id).data.metrics
    one_run = metrics.get("test_metric")  # already in points (store.shown_metric)
    for k, v in {"study": study.name, "teacher": teacher, "student": student, "run_id": run_id,
                 "run.test_metric": "" if one_run is None else f"{one_run:.2f}"}.items():
        client.set_model_version_tag(name, version, k, str(v))
    describe_version(client, name, version, pick)
    return client.get_model_version(name, version)


def describe_version(client, name: str, version: str, pick) -> None:
    """The pair's pick on the model version and on the registered model itself, in points.

    Version tags: `pick.method`, `pick.<knob>`, `verdict`, `run.test_metric` (this one run's test
    score, set by `register_best`) beside `confirmed.mean` / `confirmed.std` / `confirmed.ci_low` /
    `confirmed.ci_high` / `confirmed.seeds` (the pick's config over the confirmation seeds). The
    registered model gets the same pick as tags, `best.version`, and a description that opens with it.
    """
    if pick is None or pick.best is None:
        return
    from akd_ray.verdict import describe

    best = pick.methods[pick.best]
    confirmed = {"confirmed.mean": f"{100 * best.mean:.2f}", "confirmed.seeds": str(best.n)}
    if best.n > 1:
        confirmed.update({"confirmed.std": f"{100 * best.std:.2f}", "confirmed.ci_low": f"{100 * best.low:.2f}",
                          "confirmed.ci_high": f"{100 * best.high:.2f}"})
    text = (f"{100 * best.mean:.2f} ± {100 * best.std:.2f} points (95% CI {100 * best.low:.2f}…{100 * best.high:.2f}, "
            f"{best.n} seeds)" if best.n > 1 else f"{100 * best.mean:.2f} points (1 run)")
    pick_tags = {"pick.method": pick.best, **{f"pick.{k}": shown_param(v) for k, v in best.config.items()},
                 "verdict": pick.text, **confirmed}
    for k, v in pick_tags.items():
        client.set_model_version_tag(name, version, k, str(v))
    config = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.config.items())
    head = f"{describe(pick.best, best.config)} for {pick.teacher} → {pick.student} ({config})"
    client.update_model_version(name, version, description=(
        f"{head}. Test metric over the confirmation seeds: {text}. Verdict: {pick.text}."))
    for k in client.get_registered_model(name).tags:  # an earlier pick's knobs would read as this one's
        if k.startswith(("pick.", "confirmed.")) and k not in pick_tags:
            client.delete_registered_model_tag(name, k)
    for k, v in {**pick_tags, "best.version": str(version)}.items():
        client.set_registered_model_tag(name, k, v)
    client.update_registered_model(name, description=(
        f"Current pick: {head}, version {version} (alias `{ALIAS}`): {text}. Verdict: {pick.text}. "
        f"Load it with mlflow.pyfunc.load_model('models:/{name}@{ALIAS}')."))


def _input_example(task_name: str, task: TaskData | TaskSpec | None, folder: Path) -> Any:
    if task_name.startswith("glue/"):
        columns = text_columns(task_name)
        rows = [("A gripping, beautifully made film.", "The film is good."),
                ("It never finds its footing.", "The film is bad.")]
        return pd.DataFrame({c: [r[i] for r in rows] for i, c in enumerate(columns)})
    if isinstance(task, TaskData):
        return task.test.features["x"][:2].numpy()
    if task_name in ("cifar10", "cifar100"):
        return np.zeros((2, 3, 32, 32), dtype=np.uint8)
    (width,) = input_shape(folder)  # digits: flat pixels
    return np.linspace(0, 1, 2 * width, dtype=np.float32).reshape(2, width)


def _requirements(task_name: str) -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    names = ["mlflow", "torch", "safetensors", "pydantic", "pyyaml", "numpy", "pandas"]  # no Ray: see student.py
    if task_name.startswith("glue/"):
        names.append("transformers")
    pins = []
    for n in names:
        try:
            pins.append(f"{n}=={version(n).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(n)
    return pins
