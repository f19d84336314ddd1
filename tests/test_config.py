"""The study schema: every shipped study loads, and every bad study names its file and field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import pydantic
import pytest
import yaml
from typer.testing import CliRunner

from akd_ray.cli import app
from akd_ray.config import ConfigError, RunConfig, Study, TrainSpec, load_study, parse_override
from akd_ray.study import validate

REPO = Path(__file__).resolve().parents[1]
STUDIES = sorted((REPO / "studies").glob("*.yaml"))

SPACE = """\
params:
  tau_max: {type: int, low: 2, high: 4, methods: [annealing, prokd]}
  schedule: {type: categorical, choices: [step, linear, cosine, exp], methods: [annealing, prokd]}
  decay: {type: float, low: 0.5, high: 6.0, log: true, when: {schedule: [exp]}}
  alpha: {type: float, low: 0.1, high: 0.9, methods: [kd, takd]}
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
"""


def tiny_study() -> dict[str, Any]:
    return {
        "name": "tiny",
        "task": {"name": "digits"},
        "teachers": {"big": {"model": {"kind": "mlp", "hidden": [32]}}},
        "students": {"small": {"kind": "mlp", "hidden": [4]}},
        "train": {"epochs": 12},
        "search": {"space": "space.yaml", "trials": {"scratch": 1, "kd": 1, "annealing": 2}},
    }


def write_study(folder: Path, data: dict[str, Any] | str, space: str = SPACE) -> Path:
    """A study file (dict as YAML, or raw text) beside the search space it names."""
    (folder / "space.yaml").write_text(space)
    path = folder / "study.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def on_glue(d: dict[str, Any]) -> None:
    d["task"] = {"name": "glue/sst2"}
    d["teachers"] = {"bert": {"model": {"kind": "hf", "path": "google-bert/bert-base-uncased"}}}
    d["students"] = {"small": {"kind": "hf_truncate", "layers": 2}}


# ---------------------------------------------------------------------------------------- shipped studies
@pytest.mark.parametrize("path", STUDIES, ids=[p.name for p in STUDIES])
def test_every_shipped_study_loads_and_validates(path):
    try:
        study = load_study(path)
    except ConfigError as e:
        if "task.data_dir: no such folder" not in str(e):
            raise
        study = load_study(path, ["task.data_dir=null"])  # a local data copy this machine lacks
    space = validate(study)
    assert study.source == path.resolve()
    assert study.search.space.is_file() and space.params


def test_shipped_studies_include_the_offline_quickstart():
    assert REPO / "studies" / "quickstart.yaml" in STUDIES


def test_quickstart_resolved():
    study = load_study(REPO / "studies" / "quickstart.yaml")
    assert study.name == "quickstart" and study.task.name == "digits"
    assert study.pairs == [("mlp-256x2", "mlp-16"), ("mlp-256x2", "mlp-4")]
    assert study.search.methods == ("scratch", "kd", "annealing")
    assert study.search.space == REPO / "search_spaces" / "quickstart.yaml"  # relative to the study file
    assert study.teachers["mlp-256x2"].train.lr == 3.0e-3
    assert study.train.epochs == 30 and study.train.batch_size == 64 and study.search.confirm_seeds == 3
    assert study.train.tau_max == 7.0 and study.train.schedule == "step"  # defaults from the schema


def test_a_study_is_frozen(tmp_path):
    study = load_study(write_study(tmp_path, tiny_study()))
    with pytest.raises(pydantic.ValidationError):
        study.name = "other"
    with pytest.raises(pydantic.ValidationError):
        study.train.epochs = 3


def test_relative_paths_resolve_against_the_study_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "teacher").mkdir()
    d = tiny_study()
    d["task"]["data_dir"] = "data"
    d["teachers"]["big"].update(prepare="load", path="./teacher")
    study = load_study(write_study(tmp_path, d))
    assert study.task.data_dir == tmp_path / "data"
    assert study.teachers["big"].path == tmp_path / "teacher"
    assert study.search.space == tmp_path / "space.yaml"


def test_a_hub_id_is_not_taken_for_a_local_folder(tmp_path):
    d = tiny_study()
    on_glue(d)
    study = load_study(write_study(tmp_path, d))
    assert study.teachers["bert"].model.path == "google-bert/bert-base-uncased"


# ---------------------------------------------------------------------------------------- bad studies
def set_in(*keys: str, value: Any) -> Callable[[dict], None]:
    def mutate(d: dict) -> None:
        node = d
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return mutate


def teacher_load(path: str | None) -> Callable[[dict], None]:
    def mutate(d: dict) -> None:
        d["teachers"]["big"].update(prepare="load", **({"path": path} if path else {}))
    return mutate


def resnet_student_on_glue(d: dict) -> None:
    on_glue(d)
    d["students"]["small"] = {"kind": "resnet", "depth": 8}


def local_hf_teacher_missing(d: dict) -> None:
    on_glue(d)
    d["teachers"]["bert"]["model"]["path"] = "./models/bert"


def prokd_with_loaded_teacher(d: dict) -> None:
    on_glue(d)
    d["teachers"]["bert"]["prepare"] = "load"
    d["search"]["trials"] = {"prokd": 1}


BAD_STUDIES = [
    # id, change to the tiny study, field named, key phrase
    ("unknown top-level key", set_in("epochs", value=5), "epochs", "unknown key"),
    ("unknown nested key", set_in("train", "temperature", value=4), "train.temperature", "unknown key"),
    ("unknown model key", set_in("students", "small", "width", value=8), "students.small.width", "unknown key"),
    ("wrong type", set_in("train", "epochs", value="ten"), "train.epochs", "valid integer"),
    ("wrong type in a list", set_in("students", "small", "hidden", value=["wide"]), "students.small.hidden[0]",
     "valid integer"),
    ("empty students", set_in("students", value={}), "students", "at least 1 item"),
    ("no teachers", set_in("teachers", value={}), "teachers", "at least 1 item"),
    ("missing search", lambda d: d.pop("search"), "search", "required, but missing"),
    ("unknown task", set_in("task", "name", value="mnist"), "task.name", "got 'mnist'; valid: 'digits'"),
    ("unknown method", set_in("search", "trials", "distill", value=1), "search.trials.distill",
     "got 'distill'; valid: 'scratch', 'kd', 'takd', 'annealing', 'prokd', 'layers', 'minimax', 'kd+layers'"),
    ("trials 0", set_in("search", "trials", "kd", value=0), "search.trials.kd", "greater than or equal to 1"),
    ("no method", set_in("search", "trials", value={}), "search.trials", "names no method"),
    ("negative teacher margin", set_in("teachers", "big", "min_margin", value=-0.1), "teachers.big.min_margin",
     "greater than or equal to 0"),
    ("reduction factor 1", set_in("search", "reduction_factor", value=1), "search.reduction_factor",
     "greater than or equal to 2"),
    ("val_fraction 1.5", set_in("task", "val_fraction", value=1.5), "task.val_fraction", "less than 1"),
    ("tau_max below 1", set_in("train", "tau_max", value=0.5), "train.tau_max", "greater than or equal to 1"),
    ("one epoch", set_in("train", "epochs", value=1), "train.epochs", "greater than or equal to 2"),
    ("unknown schedule", set_in("train", "schedule", value="zigzag"), "train.schedule",
     "got 'zigzag'; valid: 'step', 'linear', 'cosine' or 'exp'"),
    ("unknown model kind", set_in("students", "small", value={"kind": "mlpx"}), "students.small",
     "unknown kind 'mlpx'; valid: mlp, cnn, resnet, hf, hf_truncate, hf_config"),
    ("resnet depth", set_in("students", "small", value={"kind": "resnet", "depth": 9}), "students.small.depth",
     "got 9"),
    ("resnet on glue", resnet_student_on_glue, "students.small", "kind 'resnet' does not fit task 'glue/sst2'"),
    ("hf on digits", set_in("students", "small", value={"kind": "hf", "path": "org/model"}), "students.small",
     "kind 'hf' does not fit task 'digits' (valid: mlp, cnn, resnet)"),
    ("takd without assistant", set_in("search", "trials", "takd", value=1), "search.trials",
     "'takd' but no `assistant`"),
    ("prokd with a loaded teacher", prokd_with_loaded_teacher, "search.trials", "'prokd', which needs teachers "
     "with prepare: train"),
    ("load without a path", teacher_load(None), "teachers.big", "prepare: load needs `path`"),
    ("teacher path missing", teacher_load("./trained/big"), "teachers.big.path", "no such file or folder"),
    ("local hf teacher missing", local_hf_teacher_missing, "teachers.bert.model.path", "no such folder"),
    ("missing space file", set_in("search", "space", value="spaces/none.yaml"), "search.space", "no such file"),
    ("missing data_dir", set_in("task", "data_dir", value="data/digits"), "task.data_dir", "no such folder"),
    ("gpus_per_worker 1.5", set_in("resources", "gpus_per_worker", value=1.5), "resources.gpus_per_worker",
     "must be a whole number"),
    ("workers 0", set_in("resources", "workers", value=0), "resources.workers", "greater than or equal to 1"),
    ("bad study name", set_in("name", value="my study"), "name", "'my study' is not valid: use letters, digits"),
    ("scheduler", set_in("search", "scheduler", value="hyperband"), "search.scheduler", "got 'hyperband'"),
]


@pytest.mark.parametrize("change, field, phrase", [c[1:] for c in BAD_STUDIES], ids=[c[0] for c in BAD_STUDIES])
def test_bad_study_names_file_field_and_reason(tmp_path, change, field, phrase):
    d = tiny_study()
    change(d)
    path = write_study(tmp_path, d)
    with pytest.raises(ConfigError) as err:
        load_study(path)
    message = str(err.value)
    assert message.startswith(f"{path}:")  # and the line, where the file has the field
    assert field in message and phrase in message
    assert ".mlp." not in message and "[key]" not in message and "(top level)" not in message


@pytest.mark.parametrize("change, phrase", [
    (set_in("students", "small", "hiden", value=[8]), "students.small.hiden: unknown key; did you mean 'hidden'?"),
    (set_in("search", "confirm_seed", value=1), "search.confirm_seed: unknown key; did you mean 'confirm_seeds'?"),
    (set_in("resources", "gpus", value=1), "resources.gpus: unknown key; valid: workers, cpus_per_worker, "
                                           "gpus_per_worker, max_concurrent, max_failures"),
])
def test_an_unknown_key_suggests_the_known_ones(tmp_path, change, phrase):
    d = tiny_study()
    change(d)
    with pytest.raises(ConfigError, match=re.escape(phrase)):
        load_study(write_study(tmp_path, d))


def test_every_invalid_field_is_listed(tmp_path):
    d = tiny_study()
    d["train"].update(epochs=1, lr=-1)
    d["task"]["val_fraction"] = 0
    with pytest.raises(ConfigError) as err:
        load_study(write_study(tmp_path, d))
    lines = str(err.value).splitlines()  # one per field: `file:line: field: reason`
    assert sorted(line.split(": ")[1] for line in lines) == ["task.val_fraction", "train.epochs", "train.lr"]


@pytest.mark.parametrize("text, phrase", [
    ("name: tiny\ntask: {name: digits\n", "not valid YAML"),
    ("name: tiny\n  task: digits\n", "not valid YAML"),
    ("- name: tiny\n- task: digits\n", "expected a mapping of keys at the top level"),
    ("just a string\n", "expected a mapping of keys at the top level"),
    ("", "expected a mapping of keys at the top level"),
])
def test_unreadable_study_file(tmp_path, text, phrase):
    path = write_study(tmp_path, text)
    with pytest.raises(ConfigError, match=phrase) as err:
        load_study(path)
    assert str(err.value).startswith(f"{path}:")


def test_missing_study_file(tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path / 'none.yaml'}: no such file"):
        load_study(tmp_path / "none.yaml")


def test_yaml_tags_are_not_run(tmp_path):
    path = write_study(tmp_path, "name: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_study(path)


# ---------------------------------------------------------------------------------------- --set
def test_overrides_change_values_with_yaml_types(tmp_path):
    path = write_study(tmp_path, tiny_study())
    study = load_study(path, [
        "train.epochs=5",                    # int
        "train.lr=0.02",                     # float
        "train.weight_decay=1e-4",           # YAML 1.1 reads this as a string; the schema parses it
        "students.small.hidden=[8, 8]",      # list
        "search.trials={kd: 3}",             # mapping replaces the whole mapping
        "task.max_train_samples=null",       # null
        "task.augment=false",                # bool
        "mlflow.experiment=akd-test",        # a section the file does not have
        "name=tiny2",
    ])
    assert study.train.epochs == 5 and isinstance(study.train.epochs, int)
    assert study.train.lr == 0.02 and study.train.weight_decay == 1e-4
    assert study.students["small"].hidden == (8, 8)
    assert study.search.trials == {"kd": 3}
    assert study.task.max_train_samples is None and study.task.augment is False
    assert study.mlflow.experiment == "akd-test" and study.name == "tiny2"
    assert load_study(path).train.epochs == 12  # the file itself is untouched


def test_override_value_may_contain_equals():
    assert parse_override("mlflow.tracking_uri=http://host:5000/?a=b") == (
        ["mlflow", "tracking_uri"], "http://host:5000/?a=b")
    assert parse_override("train.epochs=") == (["train", "epochs"], None)


def test_an_overridden_value_is_validated(tmp_path):
    path = write_study(tmp_path, tiny_study())
    with pytest.raises(ConfigError, match=r"train\.epochs: Input should be greater than or equal to 2"):
        load_study(path, ["train.epochs=1"])
    with pytest.raises(ConfigError, match=r"train\.epoch: unknown key"):
        load_study(path, ["train.epoch=5"])


@pytest.mark.parametrize("item, phrase", [
    ("train.epochs", "--set train.epochs: expected KEY=VALUE, e.g. --set train.epochs=5"),
    ("train.epochs 5", "--set 'train.epochs 5': expected KEY=VALUE"),
    ("name.first=x", "--set name.first=x: name is not a section (it holds 'tiny')"),
    ("train.epochs.max=3", "--set train.epochs.max=3: train.epochs is not a section (it holds 12)"),
    ("train.epochs=[3", "--set 'train.epochs=[3': the value is not valid YAML"),
    ("=3", "--set =3: '' is not a field path"),
])
def test_bad_override(tmp_path, item, phrase):
    """A --set is the command line's, not the file's: the message names it as typed."""
    path = write_study(tmp_path, tiny_study())
    with pytest.raises(ConfigError) as err:
        load_study(path, [item])
    assert str(err.value).startswith(phrase)


def test_an_invalid_overridden_value_names_the_set_not_the_file(tmp_path):
    path = write_study(tmp_path, tiny_study())
    with pytest.raises(ConfigError) as err:
        load_study(path, ["train.epochs=1", "students.small={kind: resnet, depth: 9}"])
    lines = sorted(str(err.value).splitlines())
    assert lines == ["--set 'students.small={kind: resnet, depth: 9}': students.small.depth: got 9; "
                     "valid: 8, 14, 20, 32, 44, 56 or 110",
                     "--set train.epochs=1: train.epochs: Input should be greater than or equal to 2"]


def test_a_field_error_names_the_line_it_is_on(tmp_path):
    path = write_study(tmp_path, "name: tiny\ntask: {name: digits}\nteachers:\n  big:\n    model: {kind: mlp}\n"
                                 "students:\n  small:\n    kind: mlp\n    hidden: [4, wide]\n"
                                 "search: {space: space.yaml, trials: {kd: 1}}\n")
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert str(err.value) == (f"{path}:9: students.small.hidden[1]: Input should be a valid integer, "
                              "unable to parse string as an integer")


@pytest.mark.parametrize("text, line, phrase", [
    ("name: a\ntrain: {epochs: 3}\nname: b\n", 3, "duplicate key 'name': at line 1 and line 3"),
    ("train:\n  epochs: 3\n  lr: 0.1\n  epochs: 4\n", 4, "duplicate key 'epochs': at line 2 and line 4"),
])
def test_duplicate_keys_are_an_error_naming_both_lines(tmp_path, text, line, phrase):
    path = write_study(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert str(err.value).startswith(f"{path}:{line}: ") and phrase in str(err.value)


def test_storage_is_relative_to_the_study_file(tmp_path, monkeypatch):
    d = tiny_study()
    d["storage"] = "results"
    path = write_study(tmp_path, d)
    monkeypatch.chdir("/")
    assert load_study(path).storage == tmp_path / "results"
    assert load_study(path, ["storage=/srv/akd"]).storage == Path("/srv/akd")


# ---------------------------------------------------------------------------------------- one trial
def run_config(method: str, **train: Any) -> RunConfig:
    return RunConfig(task={"name": "digits"}, student_model={"kind": "mlp"}, method=method,
                     teacher_dir=None if method == "scratch" else Path("teacher"), train=TrainSpec(**train))


def test_run_config_for_annealing():
    run = run_config("annealing", epochs=8, tau_max=4, stage1_fraction=0.5)
    assert run.with_train(tau_max=2).train.tau_max == 2 and run.train.tau_max == 4


@pytest.mark.parametrize("method, train, phrase", [
    ("kd", {}, "method 'kd' needs teacher_dir"),
    ("annealing", {"epochs": 8, "tau_max": 5}, "stage I has 4 epochs, fewer than tau_max = 5"),
    ("annealing", {"epochs": 8, "tau_max": 2.5}, "the step schedule needs an integer tau_max, got 2.5"),
    ("takd", {}, "method 'takd' needs assistant_model"),
])
def test_run_config_errors(method, train, phrase):
    with pytest.raises(pydantic.ValidationError, match=phrase):
        RunConfig(task={"name": "digits"}, student_model={"kind": "mlp"}, method=method,
                  teacher_dir=None if method == "kd" else Path("teacher"), train=TrainSpec(**train))


def test_a_smooth_schedule_takes_any_tau_max():
    assert run_config("annealing", epochs=8, tau_max=6.5, schedule="cosine").train.tau_max == 6.5


# ---------------------------------------------------------------------------------------- `akd-ray validate`
runner = CliRunner()


def test_cli_validate_quickstart():
    result = runner.invoke(app, ["validate", str(REPO / "studies" / "quickstart.yaml")])
    assert result.exit_code == 0, result.output
    assert "quickstart.yaml: valid" in result.stdout
    assert "2 pair(s) x (scratch 2 + kd 2 + annealing 2) = 12 trials, 30 epochs" in result.stdout
    assert result.stderr == ""


def test_cli_validate_bad_file(tmp_path):
    d = tiny_study()
    d["train"]["tau_max"] = 0
    path = write_study(tmp_path, d)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {path}:")
    assert "train.tau_max: Input should be greater than or equal to 1" in result.stderr
    assert "valid" not in result.stdout


def test_cli_validate_space_against_study(tmp_path):
    path = write_study(tmp_path, tiny_study())
    assert runner.invoke(app, ["validate", str(path)]).exit_code == 0
    result = runner.invoke(app, ["validate", str(path), "--set", "train.epochs=6"])  # 3 stage-I epochs < 4
    assert result.exit_code == 2
    assert "leave 3 stage-I epoch(s), fewer than tau_max up to 4" in result.stderr


def test_cli_validate_bad_override(tmp_path):
    path = write_study(tmp_path, tiny_study())
    result = runner.invoke(app, ["validate", str(path), "--set", "train.epochs"])
    assert result.exit_code == 2
    assert "error: --set train.epochs: expected KEY=VALUE" in result.stderr
