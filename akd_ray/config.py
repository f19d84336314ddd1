"""The one schema: a study file is parsed once into a frozen, typed `Study`; every default lives here.

Data flows one way: study YAML -> `Study` -> one `RunConfig` per trial -> worker. Unknown keys,
wrong types and out-of-range values are errors that name the file and the field, raised before Ray
or MLflow start. YAML is plain data: no tags, no code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from akd_ray.method.schedules import SHAPES, stage_split, step_period

METHODS = ("scratch", "kd", "takd", "annealing", "prokd")
GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")
TASKS = ("digits", "cifar10", "cifar100") + tuple(f"glue/{t}" for t in GLUE_TASKS)


class ConfigError(ValueError):
    """A study, search-space or override that is not valid; the message names file, field and fix."""


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


# ---------------------------------------------------------------------------------------- models
class MLP(Frozen):
    """A fully connected net on flat features (the quickstart's digits)."""
    kind: Literal["mlp"]
    hidden: tuple[Annotated[int, Field(ge=1)], ...] = (64,)


class CNN(Frozen):
    """A small conv net for images: `channels` per conv block, each block halves the resolution."""
    kind: Literal["cnn"]
    channels: tuple[Annotated[int, Field(ge=1)], ...] = (16, 32)


class ResNet(Frozen):
    """The CIFAR ResNets of He et al. (depth 6n+2) used by the Annealing-KD and TAKD papers."""
    kind: Literal["resnet"]
    depth: Literal[8, 14, 20, 32, 44, 56, 110]
    width: int = Field(16, ge=1, description="channels of the first stage (16 in the papers)")


class HFModel(Frozen):
    """Any AutoModelForSequenceClassification: a hub id or a local folder."""
    kind: Literal["hf"]
    path: str


class HFTruncated(Frozen):
    """The teacher cut to its first `layers` layers (DistilBERT-style init from the teacher)."""
    kind: Literal["hf_truncate"]
    layers: int = Field(ge=1)


class HFSmall(Frozen):
    """The teacher's architecture at a smaller size, randomly initialised."""
    kind: Literal["hf_config"]
    layers: int = Field(ge=1)
    hidden_size: int | None = Field(None, ge=8, description="None keeps the teacher's")
    heads: int | None = Field(None, ge=1, description="None keeps the teacher's")
    intermediate_size: int | None = Field(None, ge=8, description="None: 4 x hidden_size")


ModelSpec = Annotated[Union[MLP, CNN, ResNet, HFModel, HFTruncated, HFSmall], Field(discriminator="kind")]
HF_KINDS = ("hf", "hf_truncate", "hf_config")
_model_adapter: TypeAdapter = TypeAdapter(ModelSpec)


# ---------------------------------------------------------------------------------------- task
class TaskSpec(Frozen):
    name: Literal[TASKS]  # type: ignore[valid-type]
    data_dir: Path | None = Field(None, description="local copy (GLUE TSV layout or ImageFolder); None: hub/download")
    download_dir: Path = Field(Path("~/.cache/akd-ray/data"), description="where torchvision downloads go")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="held out of train for model selection")
    max_train_samples: int | None = Field(None, ge=1)
    max_eval_samples: int | None = Field(None, ge=1, description="caps val and test (quick runs)")
    max_seq_length: int = Field(128, ge=8)
    augment: bool = Field(True, description="pad-4 crop + flip on image tasks; ignored elsewhere")

    @property
    def is_glue(self) -> bool:
        return self.name.startswith("glue/")


# ---------------------------------------------------------------------------------------- training
class TrainSpec(Frozen):
    """Hyperparameters of one run. The search space overrides any of them per trial."""
    epochs: int = Field(20, ge=2, description="whole run; Annealing-KD splits it into stage I and II")
    stage1_fraction: float = Field(0.5, gt=0, lt=1, description="share of epochs in stage I")
    tau_max: float = Field(7.0, ge=1, description="Annealing-KD's maximum temperature")
    schedule: Literal[SHAPES] = "step"  # type: ignore[valid-type]
    decay: float = Field(3.0, gt=0, description="rate k of the `exp` schedule")
    alpha: float = Field(0.5, ge=0, le=1, description="KD: weight of the soft loss")
    kd_temperature: float = Field(4.0, gt=0, description="KD: softmax temperature")
    batch_size: int = Field(64, ge=1, description="the global batch: with resources.workers > 1 the workers "
                            "split it (it must divide evenly), so a recipe means the same on 1, 2 or 8 GPUs")
    eval_batch_size: int = Field(512, ge=1, description="per worker; also the teacher-logit batch")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    lr_schedule: Literal["constant", "cosine", "linear"] = "cosine"
    warmup_fraction: float = Field(0.0, ge=0, lt=1)
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on GPU")
    device: Literal["auto", "cpu", "cuda"] = "auto"


class TeacherSpec(Frozen):
    model: ModelSpec
    prepare: Literal["train", "load"] = Field(
        "train", description="train: fit on the task (fine-tune if pretrained); load: use a trained model")
    path: Path | None = Field(None, description="load: a folder saved by akd-ray, a fine-tuned hf folder "
                                                "(save_pretrained), or a state-dict file (.safetensors/.pt) "
                                                "of `model`; None with kind hf: model.path is the teacher")
    train: TrainSpec = TrainSpec()
    checkpoints: int = Field(4, ge=1, description="training snapshots kept for Pro-KD")
    min_margin: float | None = Field(
        0.05, ge=0, description="before any search the teacher's validation metric must beat the "
                                "majority-class baseline by this much (0.05 = 5 points); null: distil "
                                "from it whatever it scores")


# ---------------------------------------------------------------------------------------- study
class SearchSpec(Frozen):
    space: Path = Field(description="search_spaces/*.yaml, relative to the study file")
    trials: dict[Literal[METHODS], Annotated[int, Field(ge=1)]] = Field(  # type: ignore[valid-type]
        description="Optuna trials per teacher-student pair and method; a method with no "
                                  "searched parameter runs once")
    scheduler: Literal["none", "asha"] = Field(
        "none", description="asha: successive halving within each (teacher, student, method) group; "
                            "two-stage methods are compared on stage-II epochs only")
    grace_period: int = Field(2, ge=1, description="ASHA: epochs (stage-II epochs for two-stage methods) "
                                                   "before a trial can be stopped")
    reduction_factor: int = Field(3, ge=2, description="ASHA: keep the best 1/reduction_factor at each rung")
    warm_start: tuple[dict[str, Any], ...] = Field((), description="points every pair tries first")
    warm_start_from_pairs: bool = Field(True, description="a pair also tries the best point other "
                                                          "pairs found for the same method")
    confirm_seeds: int = Field(3, ge=0, description="re-runs of each pair's best config of every method, "
                                                    "each seed with its own init, batch order and "
                                                    "augmentation; the verdict needs at least 3")

    @field_validator("trials")
    @classmethod
    def _some_method(cls, v: dict) -> dict:
        if not v:
            raise ValueError(f"names no method: give each method its trials per pair, e.g. "
                             f"{{annealing: 8, kd: 4, scratch: 1}} (methods: {', '.join(METHODS)})")
        return v

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(m for m in METHODS if m in self.trials)


class Resources(Frozen):
    workers: int = Field(1, ge=1, description="DDP workers per trial (>1 wraps the trial in Ray Train)")
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: float = Field(0, ge=0, description="fractions pack small trials on one GPU")
    max_concurrent: int | None = Field(None, ge=1, description="None: as many as the cluster has room for "
                                                                  "at the start; more for an autoscaling cluster")
    max_failures: int = Field(1, ge=0, description="retries of a trial after a worker failure")

    @field_validator("gpus_per_worker")
    @classmethod
    def _whole_or_fraction(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError("more than one GPU per worker must be a whole number")
        return v

    @model_validator(mode="after")
    def _one_gpu_per_rank(self) -> "Resources":
        if self.workers > 1 and 0 < self.gpus_per_worker < 1:
            raise ValueError(f"gpus_per_worker = {self.gpus_per_worker:g} with workers = {self.workers}: Ray may "
                             "place two ranks of one trial on the same GPU, which NCCL refuses; give each "
                             "worker a whole GPU, or use workers: 1 to pack small trials with fractions")
        return self


class MlflowSpec(Frozen):
    tracking_uri: str | None = Field(None, description="None: $MLFLOW_TRACKING_URI, else a sqlite store "
                                                       "under the study's storage")
    experiment: str | None = Field(None, description="None: the study name")
    register_best: bool = True


# the student fields a search space may name per model kind (`student.<field>` in search_spaces/*.yaml)
FAMILY_FIELDS = {"mlp": ("hidden",), "cnn": ("channels",), "resnet": ("depth", "width"),
                 "hf_truncate": ("layers",), "hf_config": ("layers", "hidden_size", "heads", "intermediate_size")}


class FamilySpec(Frozen):
    """A student family: `model` with the `student.<field>` values a trial draws from the search space.
    A study with a family searches student size jointly with the method's knobs, on two objectives:
    the validation metric (max) and the student's cost (min)."""
    name: str = Field("family", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="the group name: MLflow's teacher->name run, the report's rows")
    model: ModelSpec = Field(description="the base student; searched fields replace its values (mlp `hidden`: "
                                         "an int sets every layer's width; cnn `channels`: every block's)")
    cost: Literal["parameters", "latency"] = Field(
        "parameters", description="the second objective: parameter count, or inference latency (ms per "
                                  "batch) measured by the trial's worker on its own hardware")
    latency_batch_size: int = Field(64, ge=1, description="latency: examples per timed forward pass")
    latency_device: Literal["auto", "cpu", "cuda"] = Field("auto", description="latency: where to time it "
                                                                               "(auto: the trial's device)")
    within: tuple[Annotated[float, Field(gt=0, lt=100)], ...] = Field(
        (1.0, 2.0, 5.0), description="report the smallest student within X points of the teacher's metric")

    def student(self, values: dict[str, Any]) -> ModelSpec:
        """The student of one trial: `model` with `values` ({field: value}, the searched student fields)."""
        base = self.model.model_dump()
        for field, value in values.items():
            if field in ("hidden", "channels") and not isinstance(value, (list, tuple)):
                value = (value,) * len(base[field])  # one width for every layer / block
            base[field] = value
        return _model_adapter.validate_python(base)


class Study(Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task: TaskSpec
    teachers: dict[str, TeacherSpec] = Field(min_length=1)
    students: dict[str, ModelSpec] = Field(default_factory=dict, description="named students: one search per "
                                                                            "teacher-student pair")
    family: FamilySpec | None = Field(None, description="instead of named students: student size searched "
                                                        "(multi-objective: metric vs cost)")
    assistant: ModelSpec | None = Field(None, description="TAKD's teacher assistant")
    assistant_train: TrainSpec | None = Field(None, description="how the assistant is KD-trained from each "
                                                                "teacher, once per study; None: `train`")
    train: TrainSpec = TrainSpec()
    search: SearchSpec
    resources: Resources = Resources()
    storage: Path = Field(Path("akd-results"), description="Tune results, teachers, caches; relative to cwd")
    mlflow: MlflowSpec = MlflowSpec()
    seed: int = 0
    source: Path | None = Field(None, description="set by load_study: the file this came from")

    @field_validator("students")
    @classmethod
    def _named(cls, v: dict) -> dict:  # runs only when given: an empty mapping is a mistake, not a family
        if not v:
            raise ValueError("should have at least 1 item (or leave `students` out and give a `family`)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Study":
        hf_task = self.task.is_glue
        for where, spec in [*((f"teachers.{k}.model", t.model) for k, t in self.teachers.items()),
                            *((f"students.{k}", s) for k, s in self.students.items()),
                            *([("family.model", self.family.model)] if self.family else []),
                            *([("assistant", self.assistant)] if self.assistant else [])]:
            if (spec.kind in HF_KINDS) != hf_task:
                raise ValueError(f"{where}: kind {spec.kind!r} does not fit task {self.task.name!r} "
                                 f"(valid: {', '.join(HF_KINDS) if hf_task else 'mlp, cnn, resnet'})")
        if bool(self.students) == (self.family is not None):
            raise ValueError("give either `students` (named students, one search per pair) or a `family` "
                             "(student size searched), not both or neither")
        if self.family is not None and self.search.scheduler != "none":
            raise ValueError("search.scheduler: a family search is multi-objective (metric vs cost), which "
                             "Optuna cannot prune per epoch; use scheduler: none")
        if "takd" in self.search.trials and self.assistant is None:
            raise ValueError("search.trials has 'takd' but no `assistant` model is given")
        if "prokd" in self.search.trials and any(t.prepare != "train" for t in self.teachers.values()):
            raise ValueError("search.trials has 'prokd', which needs teachers with prepare: train (their checkpoints)")
        for name, t in self.teachers.items():
            if t.prepare == "load" and t.path is None and t.model.kind != "hf":
                raise ValueError(f"teachers.{name}: prepare: load needs `path` to a trained model")
        return self

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """(teacher, student) groups; with a family, (teacher, family name): one size group per teacher."""
        students = [self.family.name] if self.family else list(self.students)
        return [(t, s) for t in self.teachers for s in students]


# ---------------------------------------------------------------------------------------- one trial
class RunConfig(Frozen):
    """Everything one worker needs for one student, one method, one seed. Built by the study."""
    study: str = "run"
    task: TaskSpec
    teacher: str = "teacher"
    teacher_dir: Path | None = Field(None, description="a prepared teacher (see akd_ray.teacher)")
    student: str = "student"
    student_model: ModelSpec
    assistant_model: ModelSpec | None = None
    method: Literal[METHODS]  # type: ignore[valid-type]
    train: TrainSpec = TrainSpec()
    seed: int = Field(0, description="student init and batch order")
    augment_seed: int = Field(0, description="which augmented views: shared by a study's trials so "
                                             "cached teacher logits apply to all of them")
    tokenizer: str | None = Field(None, description="GLUE: the student's tokenizer; None: its own (an hf "
                                                     "model's path; a model derived from the teacher: the teacher's)")
    assistant_dir: Path | None = Field(None, description="takd: the study's prepared assistant (akd_ray.teacher)")
    cache_dir: Path | None = Field(None, description="shared teacher-logit cache; None: in memory only")
    latency_batch_size: int | None = Field(None, ge=1, description="time the best student's forward pass on a "
                                                                   "batch this size (a family's latency cost)")
    latency_device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _method_needs(self) -> "RunConfig":
        if self.method != "scratch" and self.teacher_dir is None:
            raise ValueError(f"method {self.method!r} needs teacher_dir")
        if self.method == "takd" and self.assistant_model is None:
            raise ValueError("method 'takd' needs assistant_model")
        if self.method in ("annealing", "prokd"):
            first, _ = stage_split(self.train.epochs, self.train.stage1_fraction)
            if self.train.schedule == "step" and step_period(first, int(self.train.tau_max)) < 1:
                raise ValueError(f"stage I has {first} epochs, fewer than tau_max = {self.train.tau_max}: "
                                 "the step schedule needs one epoch per temperature")
            if self.train.schedule == "step" and self.train.tau_max != int(self.train.tau_max):
                raise ValueError(f"the step schedule needs an integer tau_max, got {self.train.tau_max}")
        return self

    def with_train(self, **changes: Any) -> "RunConfig":
        return self.model_copy(update={"train": self.train.model_copy(update=changes)})


# ---------------------------------------------------------------------------------------- loading
def format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: {err.error_count()} invalid field(s)"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "literal_error" and "expected" in e.get("ctx", {}):
            msg = f"got {e['input']!r}; valid: {e['ctx']['expected']}"
        lines.append(f"  {field}: {msg}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a', 'b', 'c'], value), the value read as YAML (numbers, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=5")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            if not isinstance(node.get(part, {}), dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return data


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return data


def load_study(path: str | os.PathLike, overrides: list[str] = ()) -> Study:
    """Parse and validate a study file (and its search space) into a frozen `Study`; start nothing."""
    path = Path(path)
    data = read_yaml(path)
    try:
        data = apply_overrides(data, list(overrides))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    data["source"] = str(path.resolve())
    try:
        study = Study.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(str(path), e)) from None
    return _resolve_paths(study, path)


def _resolve_paths(study: Study, path: Path) -> Study:
    """Paths in a study are relative to the study file; check that the ones that must exist do."""
    base = path.resolve().parent

    def resolve(p: Path) -> Path:
        p = p.expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    space = resolve(study.search.space)
    if not space.is_file():
        raise ConfigError(f"{path}: search.space: no such file {space}")
    task = study.task
    if task.data_dir is not None:
        data_dir = resolve(task.data_dir)
        if not data_dir.is_dir():
            raise ConfigError(f"{path}: task.data_dir: no such folder {data_dir}")
        task = task.model_copy(update={"data_dir": data_dir})
    teachers = {}
    for name, t in study.teachers.items():
        if t.model.kind == "hf" and _looks_local(t.model.path):
            local = resolve(Path(t.model.path))
            if not local.exists():
                raise ConfigError(f"{path}: teachers.{name}.model.path: no such folder {local}")
            t = t.model_copy(update={"model": t.model.model_copy(update={"path": str(local)})})
        if t.path is not None:
            local = resolve(t.path)
            if not local.exists():
                raise ConfigError(f"{path}: teachers.{name}.path: no such folder {local}")
            t = t.model_copy(update={"path": local})
        teachers[name] = t
    students = {}
    for name, s in study.students.items():
        if s.kind == "hf" and _looks_local(s.path):
            local = resolve(Path(s.path))
            if not local.exists():
                raise ConfigError(f"{path}: students.{name}.path: no such folder {local}")
            s = s.model_copy(update={"path": str(local)})
        students[name] = s
    return study.model_copy(update={
        "task": task, "teachers": teachers, "students": students,
        "search": study.search.model_copy(update={"space": space}),
    })


def _looks_local(p: str) -> bool:
    """Hub ids look like `org/name`; folders start with ., /, ~ or exist."""
    return p.startswith((".", "/", "~")) or Path(p).exists()
