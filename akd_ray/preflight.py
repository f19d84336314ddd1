"""Everything `validate` and `tune` check before Ray or MLflow start or any folder is made, and the plan.

    check(study) -> Plan       raises PreflightError (a ConfigError: the CLI exits 2) on the first problem

What is checked, without training or writing anything:
- the search space against the study (the step schedule's epochs, warm-start points);
- the data: GLUE TSV folders (every file's header, every label, with file:line of the first bad row),
  CIFAR ImageFolder trees (class folders, one readable 32x32 image in each), or what will be downloaded;
- every model: a local folder holds a model; a hub id is in the local cache, or the hub answers for
  it now (one request, a few seconds, no retries; none at all under HF_HUB_OFFLINE);
- the storage can be written, the MLflow URI has a known scheme (and a server answers);
- one trial fits this machine (a local Ray) -- a cluster is checked once Ray connects to it.

Imports stay light (no Ray, MLflow or optuna; torch only for GLUE/CIFAR data), so `validate` is quick.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path

from akd_ray.config import ConfigError, ModelSpec, Study, TrainSpec, check_tracking_uri, levers, tracking_uri, two_stage
from akd_ray.method.schedules import stage_split, step_period
from akd_ray.space import STUDENT, Space, check_student_fields, load_space

HUB_TIMEOUT_S = 5.0  # one request to the hub per model that is not cached; no retries
STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")  # what akd_ray.teacher imports (a test keeps them equal)
GLUE_HUB_DATASET = "nyu-mll/glue"


class PreflightError(ConfigError):
    """Something a study points to (data, models, storage, MLflow, resources) is not usable."""


@dataclass(frozen=True)
class Plan:
    """What a study will run, where, and what it will download: `validate` prints it, `tune` follows it."""
    study: Study
    space: Space
    budgets: dict[str, int]  # trials per pair for each method (see `budgets`)
    search_trials: int  # pairs x methods x budgets
    confirm_runs: int  # at most: every pair's best config of every method, once per confirmation seed
    tracking_uri: str
    downloads: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # what works but deserves a look (skipped data rows, ...)
    capacity: tuple[float, float] | None = None  # (CPUs, GPUs) of this machine or the cluster
    capacity_of: str = "this machine"
    warnings: tuple[str, ...] = ()  # valid, but this machine cannot run it (`check(machine="warn")`)

    @property
    def concurrency(self) -> int | None:
        return None if self.capacity is None else concurrency(self.study, *self.capacity)

    def lines(self) -> list[str]:
        s, r = self.study, self.study.resources
        budgets = " + ".join(f"{m} {self.budgets[m]}" for m in s.search.methods)
        epochs = (f"{self.space.params['epochs'].low:g}..{self.space.params['epochs'].high:g} epochs (searched)"
                  if "epochs" in self.space.params else f"{s.train.epochs} epochs")
        teachers = ", ".join(f"{n}: {'train ' + str(t.train.epochs) + ' epochs' if t.prepare == 'train' else 'load'}"
                             for n, t in s.teachers.items())
        per_trial = (f"{r.workers} x ({r.cpus_per_worker:g} CPU" + (f", {r.gpus_per_worker:g} GPU" if r.gpus_per_worker
                                                                    else "") + ") per trial")
        if self.capacity is not None:
            cpus, gpus = self.capacity
            per_trial += (f"; {self.capacity_of}: {cpus:g} CPU" + (f", {gpus:g} GPU" if gpus else "")
                          + f" -> {self.concurrency} trial(s) at a time")
        out = [
            f"task       {s.task.name}" + (f" from {s.task.data_dir}" if s.task.data_dir else ""),
            f"teachers   {teachers}",
            f"search     {len(s.pairs)} pair(s) x ({budgets}) = {self.search_trials} trials, {epochs}, "
            f"{len(self.space.params)} searched parameter(s) from {s.search.space}",
            f"confirm    up to {self.confirm_runs} runs: {s.search.confirm_seeds} seed(s) x "
            f"{len(s.search.methods)} method(s) x {len(s.pairs)} pair(s)",
            f"resources  {per_trial}",
            f"storage    {Path(s.storage) / s.name}",
            f"MLflow     {self.tracking_uri}",
            f"downloads  {'; '.join(self.downloads) or 'none'}",
        ]
        once = [m for m in s.search.methods if self.budgets[m] != s.search.trials[m]]
        notes = [f"{m}: the search space has no parameter for it, so it runs once per pair "
                 f"(trials: {s.search.trials[m]} -> 1)" for m in once]
        unequal = s.unequal_budgets([m for m in s.search.methods if self.space.for_method(m)])
        notes += [unequal] if unequal else []
        return out + [f"note       {n}" for n in (*notes, *self.notes)]


def check(study: Study, address: str | None = None, machine: str = "refuse") -> Plan:
    """Every check that needs no training, in the order a user would fix them; the plan if all pass.

    `machine`: what to do when no cluster is given and one trial does not fit this machine: "refuse"
    (`tune`: it would run here) or "warn" (`validate`: the study is valid, this machine just cannot run
    it; the plan's `warnings` say what is missing and how to run it on a cluster).
    """
    space = check_space(study)
    check_levers(study)
    downloads: list[str] = []
    notes: list[str] = []
    warnings: list[str] = []
    check_batch_split(study)
    check_storage(study)
    uri = check_tracking(study)
    check_models(study, downloads)
    check_data(study, downloads, notes)
    capacity = None
    if not (address or os.environ.get("RAY_ADDRESS")):  # a local Ray: this machine is the cluster
        capacity = local_capacity()
        try:
            check_fits(study, *capacity, "this machine")
        except PreflightError as e:
            if machine != "warn":
                raise
            warnings.append(f"{e}. The study is valid; run it where it fits: on a Ray cluster, "
                            f"`akd-ray tune {study.source} --address ray://<head>:10001` (or start one with "
                            "`ray up cluster.yaml` and submit `akd-ray tune` to it with `ray job submit`)")
    budget = budgets(study, space)
    pairs = len(study.pairs)
    confirm = pairs * study.search.confirm_seeds * len(study.search.methods)
    return Plan(study, space, budget, pairs * sum(budget.values()), confirm, uri, tuple(downloads), tuple(notes),
                capacity, warnings=tuple(warnings))


def _where(study: Study, field_: str) -> str:
    return f"{study.source}: {field_}"


# ---------------------------------------------------------------------------------------- the search space
def check_space(study: Study) -> Space:
    """The search space, and the space against the study: what the schema alone cannot see."""
    space = load_space(study.search.space)
    where = f"{study.source}"
    check_student_fields(space, study)
    for method in study.search.methods:
        params = space.for_method(method)
        if two_stage(method):
            train = study.train
            taus = params["tau_max"].values() if "tau_max" in params else [train.tau_max]
            fractions = params["stage1_fraction"].values() if "stage1_fraction" in params else [train.stage1_fraction]
            epochs = params["epochs"].values() if "epochs" in params else [train.epochs]
            shapes = params["schedule"].values() if "schedule" in params else [train.schedule]
            if "step" in shapes and "tau_max" in params and params["tau_max"].type != "int":
                raise ConfigError(f"{space.source}: params.tau_max: the step schedule needs an integer tau_max; "
                                  "use type: int, or drop step from the schedule choices")
            if "step" in shapes:
                first = min(stage_split(int(e), f)[0] for e in epochs for f in fractions)
                if step_period(first, int(max(taus))) < 1:
                    raise ConfigError(
                        f"{where}: train.epochs/stage1_fraction leave {first} stage-I epoch(s), fewer than "
                        f"tau_max up to {max(taus)} (search space {space.source}): the step schedule needs "
                        f"one epoch per temperature; raise train.epochs or lower tau_max's high")
    for i, point in enumerate(study.search.warm_start):
        unknown = {k for k in point if k not in TrainSpec.model_fields
                   and not (study.family is not None and k.startswith(STUDENT))}
        if unknown:
            raise ConfigError(f"{where}: search.warm_start[{i}]: unknown field(s) {sorted(unknown)}")
    return space


def lever_refusal(method: str, model: ModelSpec, role: str) -> str | None:
    """Why `model` (as `role`: teacher or student) cannot give what `method`'s levers need; None if it can."""
    for lever in levers(method):
        layered = model.hidden if model.kind == "mlp" else model.channels if model.kind == "cnn" else True
        if lever == "layers" and not layered:
            return f"method {method!r} matches hidden layers, but this {model.kind} {role} has none; give it one"
        if role == "student" and model.kind == "hf":
            return (f"method {method!r} runs the teacher on the student's inputs, but an hf student reads its own "
                    f"tokenizer ({model.path}), not the teacher's; use kind hf_truncate or hf_config")
    return None


def check_levers(study: Study) -> None:
    """Refuse a lever method for a teacher or student that cannot give what the lever needs."""
    models = [*((f"teachers.{k}.model", "teacher", t.model) for k, t in study.teachers.items()),
              *((f"students.{k}", "student", s) for k, s in study.students.items()),
              *([("family.model", "student", study.family.model)] if study.family else [])]
    for method in study.search.methods:
        for where, role, model in models:
            why = lever_refusal(method, model, role)
            if why:
                raise PreflightError(f"{study.source}: {where}: {why}")


def budgets(study: Study, space: Space) -> dict[str, int]:
    """Trials per pair for each method: the study's budget, or one for a method the space leaves
    nothing to search for (its trials would all be the same run)."""
    return {m: (n if space.for_method(m) else 1) for m, n in study.search.trials.items()}


def check_batch_split(study: Study) -> None:
    """`train.batch_size` is the global batch: with several workers each trial takes an equal share per
    rank (see akd_ray.engine), so it must divide by `resources.workers`. (Teachers train in one process.)"""
    workers = study.resources.workers
    if workers <= 1:
        return
    for field_, size in [("train.batch_size", study.train.batch_size)]:
        if size % workers:
            low, high = size - size % workers, size - size % workers + workers
            raise PreflightError(f"{_where(study, field_)}: {size} is the global batch and does not split over "
                                 f"resources.workers = {workers}; use a multiple of {workers} "
                                 f"(e.g. {low or high} or {high})")


# ---------------------------------------------------------------------------------------- storage, MLflow
def _nearest_existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_writable(folder: Path, where: str) -> None:
    """`folder` can be made and written: its nearest existing ancestor is a writable folder. Makes nothing."""
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise PreflightError(f"{where}: {base} is a file, so {folder} cannot be made")
    read_only = hasattr(os, "statvfs") and os.statvfs(base).f_flag & os.ST_RDONLY
    if read_only or not os.access(base, os.W_OK | os.X_OK):
        raise PreflightError(f"{where}: cannot write under {base} ({'read-only file system' if read_only else 'permission denied'})")


def check_storage(study: Study) -> None:
    _check_writable(Path(study.storage) / study.name, _where(study, "storage"))


def check_tracking(study: Study) -> str:
    """The MLflow URI the study will use: a known scheme, a writable SQLite folder, a server that answers."""
    uri = tracking_uri(study)
    field_ = ("mlflow.tracking_uri" if study.mlflow.tracking_uri else
              "$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "storage")
    try:
        check_tracking_uri(uri)
    except ValueError as e:
        raise PreflightError(f"{study.source if study.mlflow.tracking_uri else 'environment'}: {field_}: {e}") from None
    if uri.startswith("sqlite:///"):
        _check_writable(Path(uri.removeprefix("sqlite:///")).parent, _where(study, field_))
    elif uri.startswith(("http://", "https://")):
        _check_server(uri, f"{study.source}: {field_}")
    return uri


def _check_server(uri: str, where: str) -> None:
    import requests

    health = uri.rstrip("/") + "/health"
    try:
        answer = requests.get(health, timeout=5)
    except requests.RequestException as e:
        raise PreflightError(f"{where}: MLflow server {uri} does not answer ({type(e).__name__}); start it, "
                             "or remove mlflow.tracking_uri to track into a SQLite store under storage") from None
    if answer.status_code != 200:
        raise PreflightError(f"{where}: {health} answered HTTP {answer.status_code}; is {uri} an MLflow server?")


# ---------------------------------------------------------------------------------------- data
def check_data(study: Study, downloads: list[str], notes: list[str]) -> None:
    task = study.task
    if task.is_glue:
        name = task.name.removeprefix("glue/")
        if task.data_dir is not None:
            notes += check_glue_folder(Path(task.data_dir), name, _where(study, "task.data_dir"))
        else:
            where = _where(study, "task.data_dir")
            if importlib.util.find_spec("datasets") is None:
                raise PreflightError(f"{where}: not set, and GLUE from the hub needs the `datasets` package: "
                                     "pip install 'akd-ray[hub]', or set task.data_dir to a local GLUE folder")
            if not _hub_cached(GLUE_HUB_DATASET, "dataset"):
                _hub_reachable(GLUE_HUB_DATASET, where, "dataset")
                downloads.append(f"GLUE {name} from the hub ({GLUE_HUB_DATASET})")
    elif task.name in ("cifar10", "cifar100"):
        if task.data_dir is not None:
            check_image_folder(Path(task.data_dir), task.name, _where(study, "task.data_dir"))
        else:
            archive = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[task.name]
            if not (Path(task.download_dir).expanduser() / archive).is_dir():
                _check_writable(Path(task.download_dir).expanduser(), _where(study, "task.download_dir"))
                downloads.append(f"{task.name} (about 170 MB) from torchvision into {task.download_dir}")


def check_glue_folder(data_dir: Path, task: str, where: str) -> list[str]:
    """Every TSV the GLUE loader will read: header, fields, labels. Returns notes (skipped rows)."""
    from akd_ray.tasks.glue import GLUE_FORMATS  # torch: only for GLUE studies

    fmt = GLUE_FORMATS[task]
    folder = data_dir / fmt.folder
    if not folder.is_dir():
        raise PreflightError(f"{where}: {data_dir} has no {fmt.folder}/ folder (the official GLUE layout: "
                             f"{fmt.folder}/train.tsv and {fmt.folder}/{fmt.evals['test'][0]})")
    files = [folder / "train.tsv", *([folder / "val.tsv"] if (folder / "val.tsv").is_file() else []),
             *(folder / f for f, _ in fmt.evals.values())]
    return [n for f in files for n in _check_tsv(f, fmt, where)]


def _check_tsv(path: Path, fmt, where: str) -> list[str]:
    """One GLUE TSV as the loader reads it (tab-separated, no quoting, UTF-8 with or without a BOM)."""
    if not path.is_file():
        raise PreflightError(f"{path}: {'a folder, expected a TSV file' if path.is_dir() else 'no such file'} "
                             f"(the GLUE layout under {where})")
    raw = path.read_bytes()
    try:
        raw.decode("utf-8-sig")  # first, to name the line of a bad byte
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise PreflightError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x})") from None
    from akd_ray.tasks.glue import tsv_rows

    try:
        data, short, needed = tsv_rows(path, fmt)
    except ValueError as e:
        raise PreflightError(str(e)) from None
    for line, fields in data:
        value = fields[-1]
        if fmt.classes is not None and value not in fmt.classes:
            raise PreflightError(f"{path}:{line}: label {value!r} in column {fmt.label!r} is not one "
                                 f"of {list(fmt.classes)}")
        if fmt.classes is None:
            try:
                float(value)
            except ValueError:
                raise PreflightError(f"{path}:{line}: {fmt.label!r} {value!r} is not a number") from None
    rows = len(data)
    if not rows:
        raise PreflightError(f"{path}: no data rows" + (f" ({len(short)} row(s) with fewer than {needed} fields, "
                                                        f"first at line {short[0]})" if short else ""))
    return [f"{path}: {len(short)} row(s) with fewer than {needed} fields are skipped (first at line {short[0]})"] \
        if short else []


def check_image_folder(root: Path, name: str, where: str) -> None:
    """An ImageFolder tree `train/<class>/*`, `test/<class>/*`: the classes, one readable 32x32 image each."""
    from PIL import Image, UnidentifiedImageError

    expected = {"cifar10": 10, "cifar100": 100}[name]
    classes = {}
    for part in ("train", "test"):
        folder = root / part
        if not folder.is_dir():
            raise PreflightError(f"{where}: {root} has no {part}/ folder (an ImageFolder tree: train/<class>/*, "
                                 "test/<class>/*)")
        found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        if len(found) != expected:
            raise PreflightError(f"{folder}: {len(found)} class folder(s); {name} has {expected} ({where})")
        for cls in found:
            images = sorted(f for f in (folder / cls).iterdir() if f.is_file() and not f.name.startswith("."))
            if not images:
                raise PreflightError(f"{folder / cls}: no images ({where})")
            try:
                with Image.open(images[0]) as im:
                    size = im.size
                    im.convert("RGB").load()
            except (OSError, UnidentifiedImageError) as e:
                raise PreflightError(f"{images[0]}: not a readable image ({type(e).__name__}) ({where})") from None
            if size != (32, 32):
                raise PreflightError(f"{images[0]}: a {size[0]}x{size[1]} image; {name} images are 32x32 ({where})")
        classes[part] = found
    if classes["train"] != classes["test"]:
        diff = sorted(set(classes["train"]) ^ set(classes["test"]))
        raise PreflightError(f"{where}: train/ and test/ have different class folders: {diff}")


# ---------------------------------------------------------------------------------------- models
def check_models(study: Study, downloads: list[str]) -> None:
    """Every model a study names: local folders hold a model, hub ids are cached or the hub has them."""
    specs = [(f"teachers.{n}.model", t.model) for n, t in study.teachers.items()]
    specs += [(f"students.{n}", s) for n, s in study.students.items()]
    specs += [("assistant", study.assistant)] if study.assistant is not None else []
    for field_, spec in specs:
        if spec.kind != "hf":
            continue
        where = _where(study, f"{field_}.path")
        if Path(spec.path).is_absolute():
            if not (Path(spec.path) / "config.json").is_file():
                raise PreflightError(f"{where}: {spec.path} is not a transformers model folder (no config.json)")
        elif not _hub_cached(spec.path, "model"):
            _hub_reachable(spec.path, where, "model")
            downloads.append(f"{spec.path} from the hub")
    for name, t in study.teachers.items():
        p = None if t.path is None else Path(t.path)
        if p is None:
            continue
        if p.is_file() and p.suffix in STATE_DICT_SUFFIXES:
            check_weights(p, _where(study, f"teachers.{name}.path"))
            continue
        if p.is_file() or not ((p / "model.json").is_file() or (p / "config.json").is_file()
                               or any(f.suffix in STATE_DICT_SUFFIXES for f in p.iterdir() if f.is_file())):
            raise PreflightError(f"{_where(study, f'teachers.{name}.path')}: {p} holds no trained model (an akd-ray "
                                 f"or transformers folder, or a state dict: {', '.join(STATE_DICT_SUFFIXES)})")
        check_weights(p, _where(study, f"teachers.{name}.path"))


def check_weights(path: Path, where: str) -> None:
    """Every weights file a teacher import will read opens as what it claims: a safetensors header, or a
    `torch.load(weights_only=True)` dict of tensors (memory-mapped: nothing is read in full). A corrupt
    file, or one that holds something else, is refused here instead of deep inside `tune`."""
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix in STATE_DICT_SUFFIXES)
    else:
        files = [path]
    for f in files:
        reason = _weights_problem(f)
        if reason:
            raise PreflightError(f"{where}: {f} holds no loadable model ({reason})")


def _weights_problem(f: Path) -> str | None:
    if f.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(f), framework="pt") as weights:
                return None if list(weights.keys()) else "a safetensors file with no tensors"
        except Exception as e:  # SafetensorError, OSError: a truncated or foreign file
            return f"not a safetensors file: {str(e).splitlines()[0][:120] if str(e) else type(e).__name__}"
    import torch

    try:
        state = torch.load(f, weights_only=True, map_location="cpu", mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):  # the old (non-zip) format cannot be mapped: read it
            return _load_problem(e)
        try:
            state = torch.load(f, weights_only=True, map_location="cpu")
        except Exception as e2:
            return _load_problem(e2)
    except Exception as e:
        return _load_problem(e)
    if isinstance(state, dict):
        state = state.get("state_dict", state.get("model", state))
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return f"torch.load gives a {type(state).__name__}, not a state dict (names -> tensors)"
    return None


def _load_problem(e: Exception) -> str:
    text = str(e).strip().splitlines()
    first = next((line for line in text if line.strip()), type(e).__name__)
    if "Weights only load failed" in first or "weights_only" in first:
        return "torch.load(weights_only=True) refuses it: a pickle of something other than tensors"
    return f"torch.load fails: {first[:160]}"


def _hub_cached(repo_id: str, repo_type: str) -> bool:
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    return (folder / "snapshots").is_dir() and any((folder / "snapshots").iterdir())


def _hub_reachable(repo_id: str, where: str, repo_type: str) -> None:
    """The hub has `repo_id`, asked once with a short timeout; HF_HUB_OFFLINE means unreachable."""
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise PreflightError(f"{where}: {repo_id!r} is neither a folder (beside the study file) nor a hub id "
                             "(org/name)") from None
    if constants.HF_HUB_OFFLINE:
        raise PreflightError(f"{where}: not in the local cache and the hub is unreachable (HF_HUB_OFFLINE is "
                             f"set): {repo_id}")
    import requests

    url = f"{constants.ENDPOINT}/api/{repo_type}s/{repo_id}"
    try:
        answer = requests.get(url, timeout=HUB_TIMEOUT_S)
    except requests.RequestException:
        raise PreflightError(f"{where}: not in the local cache and the hub is unreachable: {repo_id}") from None
    if answer.status_code in (401, 403, 404):
        raise PreflightError(f"{where}: the hub has no {repo_type} {repo_id!r} (or it is private); check the id")
    if answer.status_code != 200:
        raise PreflightError(f"{where}: the hub answered HTTP {answer.status_code} for {repo_id}")


# ---------------------------------------------------------------------------------------- resources
def local_capacity() -> tuple[float, float]:
    """(CPUs, GPUs) a local Ray would see: this process's CPUs, the visible NVIDIA GPUs."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    else:
        nvidia = Path("/proc/driver/nvidia/gpus")
        gpus = len(list(nvidia.iterdir())) if nvidia.is_dir() else 0
    return float(cpus), float(gpus)


def check_fits(study: Study, cpus: float, gpus: float, of: str) -> None:
    r = study.resources
    need_cpu, need_gpu = r.workers * r.cpus_per_worker, r.workers * r.gpus_per_worker
    for need, have, what, each in ((need_gpu, gpus, "GPU", r.gpus_per_worker), (need_cpu, cpus, "CPU", r.cpus_per_worker)):
        if need > have:
            raise PreflightError(f"{study.source}: resources: a trial needs {need:g} {what}(s) ({r.workers} workers "
                                 f"x {each:g}) but {of} has {have:g}")


def concurrency(study: Study, cpus: float, gpus: float) -> int:
    """Trials at a time: as many as fit (by CPUs and GPUs), or resources.max_concurrent."""
    r = study.resources
    fits = math.floor(cpus / (r.workers * r.cpus_per_worker))
    if r.gpus_per_worker:
        fits = min(fits, math.floor(gpus / (r.workers * r.gpus_per_worker)))
    return r.max_concurrent or max(1, fits)


