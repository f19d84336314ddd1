"""The one schema: a study file is parsed once into a frozen, typed `Study`; every default lives here.

Data flows one way: study YAML -> `Study` -> one `RunConfig` per trial -> worker. Unknown keys,
wrong types and out-of-range values are errors that name the file and the field, raised before Ray
or MLflow start. YAML is plain data: no tags, no code.
"""

from __future__ import annotations

import codecs
import difflib
import os
import re
import shlex
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from akd_ray.method.schedules import SHAPES, stage_split, step_period

METHODS = ("scratch", "kd", "takd", "annealing", "prokd",
           "layers", "minimax", "kd+layers", "kd+minimax", "annealing+layers", "annealing+minimax")
LEVERS = ("layers", "minimax")  # the talk's model and data levers (akd_ray.method.levers)
TWO_STAGE = ("annealing", "prokd")  # stage I distils, stage II trains on the labels
LAYER_MAPS = ("uniform", "last", "random")


def levers(method: str) -> tuple[str, ...]:
    """The levers a method adds to its base loss: 'annealing+layers' -> ('layers',), 'kd' -> ()."""
    return tuple(part for part in method.split("+") if part in LEVERS)


def base_method(method: str) -> str:
    """The method whose loss a lever adds to: 'kd+minimax' -> 'kd'. A lone lever ('layers',
    'minimax') adds to hard labels, so its base is 'scratch'."""
    base = [part for part in method.split("+") if part not in LEVERS]
    return base[0] if base else "scratch"


def two_stage(method: str) -> bool:
    """Stage I distils, stage II trains on the labels (Annealing-KD, Pro-KD, and their lever combinations):
    the one test early stopping (rung time), the engine's plan and the checks use."""
    return base_method(method) in TWO_STAGE
# The one table of which knob each method reads (besides the training recipe every method reads:
# RECIPE_KNOBS). The verdict describes a pick by it; preflight refuses a searched knob assigned to a
# method that ignores it. Order: the order a reader wants them.
KNOBS = {"scratch": (), "kd": ("alpha", "kd_temperature"), "takd": ("alpha", "kd_temperature"),
         "annealing": ("tau_max", "schedule", "decay", "stage1_fraction"),
         "prokd": ("tau_max", "schedule", "decay", "stage1_fraction"),
         "layers": ("beta", "layer_map"),
         "minimax": ("minimax_eps", "minimax_steps", "minimax_weight", "kd_temperature"),
         "kd+layers": ("alpha", "kd_temperature", "beta", "layer_map"),
         "kd+minimax": ("alpha", "kd_temperature", "minimax_eps", "minimax_steps", "minimax_weight"),
         "annealing+layers": ("tau_max", "schedule", "decay", "stage1_fraction", "beta", "layer_map"),
         "annealing+minimax": ("tau_max", "schedule", "decay", "stage1_fraction", "minimax_eps", "minimax_steps",
                               "minimax_weight")}
# the student's training recipe: every method reads these (the TrainSpec fields no method owns)
RECIPE_KNOBS = ("lr", "weight_decay", "optimizer", "momentum", "lr_schedule", "warmup_fraction", "batch_size")


def method_knobs(method: str) -> tuple[str, ...]:
    """Every searchable knob `method` reads: its own (KNOBS), then the shared recipe (RECIPE_KNOBS)."""
    return KNOBS[method] + RECIPE_KNOBS


GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")
EQUAL_BUDGET_METHODS = ("scratch", "kd", "annealing")  # what `search.trials: <n>` searches, n trials each
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
    labelled_samples: int | None = Field(
        None, ge=1, description="few labels: this many training rows keep their label for the student (stratified, "
                                "seeded, drawn after the validation split and max_train_samples); the rest of train "
                                "is unlabelled for it. None: every training row is labelled")
    unlabelled: Path | None = Field(
        None, description="extra unlabelled examples for the student: a TSV with the GLUE task's text columns (a "
                          "label column is ignored), or a folder of 32x32 images for CIFAR; relative to the study file")

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
    beta: float = Field(1.0, ge=0, description="layers: weight of the layer term (2 - 2cos per pair, PKD)")
    layer_map: Literal[LAYER_MAPS] = Field(  # type: ignore[valid-type]
        "uniform", description="layers: which teacher layer each student layer matches (uniform, last, random)")
    minimax_eps: float = Field(0.1, gt=0, description="minimax: radius of the perturbation (L-inf on pixels and "
                                                      "features, L2 per token on input embeddings)")
    minimax_steps: int = Field(2, ge=1, description="minimax: gradient-ascent steps per batch")
    minimax_weight: float = Field(0.5, ge=0, description="minimax: weight of the loss on the perturbed samples")
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
    train_on: Literal["all", "labelled"] = Field(
        "all", description="with task.labelled_samples: all -- the teacher trains on every training label (a teacher "
                           "that has seen more); labelled -- on the student's labelled rows only. Ignored by "
                           "prepare: load")
    checkpoints_as_teachers: bool = Field(
        False, description="each kept training snapshot but the last becomes a candidate teacher of its own, "
                           "named `<teacher>-epoch<e>` (`<teacher>-snapshot<k>` for a loaded teacher)")
    min_margin: float | None = Field(
        0.05, ge=0, description="before any search the teacher's validation metric must beat the "
                                "majority-class baseline by this much (0.05 = 5 points); null: distil "
                                "from it whatever it scores")


# ---------------------------------------------------------------------------------------- study
class SearchSpec(Frozen):
    space: Path = Field(description="search_spaces/*.yaml, relative to the study file")
    trials: dict[Literal[METHODS], Annotated[int, Field(ge=1)]] = Field(  # type: ignore[valid-type]
        description="Optuna trials per teacher-student pair and method: one number gives scratch, KD and "
                    "Annealing-KD that budget each (equal tuning effort, what a fair comparison needs); a "
                    "mapping names each method's own; a method with no searched parameter runs once")
    scheduler: Literal["none", "asha"] = Field(
        "none", description="asha: successive halving within each (teacher, student, method) group; "
                            "two-stage methods are judged on stage II alone, at fractions of their own "
                            "stage II, by the best validation metric within it")
    grace_period: int = Field(2, ge=1, description="ASHA: the first rung at grace_period / train.epochs of each "
                                                   "trial's judged stage (stage II for two-stage methods)")
    reduction_factor: int = Field(3, ge=2, description="ASHA: keep the best 1/reduction_factor at each rung")
    warm_start: tuple[dict[str, Any], ...] = Field((), description="points every pair tries first")
    warm_start_from_pairs: bool = Field(True, description="a pair also tries the best point other "
                                                          "pairs found for the same method")
    optuna_storage: str | None = Field(None, description="where the per-pair Optuna studies live (an Optuna RDB "
                                       "URL, e.g. sqlite:///path or postgresql://...); None: "
                                       "sqlite:///<storage>/<name>/optuna.db. optuna-dashboard opens it")
    confirm_seeds: int = Field(3, ge=0, description="re-runs of each pair's best config of every method, "
                                                    "each seed with its own init, batch order and "
                                                    "augmentation; the verdict needs at least 3")
    shared: tuple[str, ...] | None = Field(None, description="the student's training recipe tuned once per pair "
                                           "on scratch's budget (scratch searches it), then fixed for every other "
                                           "method, which searches only its own knobs; None: the recipe knobs "
                                           "(RECIPE_KNOBS) the space searches; []: every method tunes its own")
    confirm_seeds_max: int = Field(10, ge=0, description="racing: while the pick is not decided on validation, "
                                   "the leader and every method tied with it get more seeds (doubling from "
                                   "confirm_seeds) up to this many; each look is judged at 0.05 / the number "
                                   "of planned looks. Equal to confirm_seeds: no racing")

    @field_validator("trials", mode="before")
    @classmethod
    def _one_budget(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return {m: v for m in EQUAL_BUDGET_METHODS}
        return v

    @field_validator("trials")
    @classmethod
    def _some_method(cls, v: dict) -> dict:
        if not v:
            raise ValueError(f"names no method: give each method its trials per pair, e.g. "
                             f"{{annealing: 8, kd: 4, scratch: 1}} (methods: {', '.join(METHODS)})")
        return v

    @field_validator("shared")
    @classmethod
    def _recipe_knobs(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        bad = [k for k in v or () if k not in RECIPE_KNOBS]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a training-recipe knob; valid: {', '.join(RECIPE_KNOBS)}")
        return v

    @model_validator(mode="after")
    def _racing_cap(self) -> "SearchSpec":
        if self.confirm_seeds_max < self.confirm_seeds:
            raise ValueError(f"confirm_seeds_max = {self.confirm_seeds_max} is below confirm_seeds = "
                             f"{self.confirm_seeds}: valid is confirm_seeds_max >= confirm_seeds")
        return self

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(m for m in METHODS if m in self.trials)

    def unequal_budgets(self, searched: Iterable[str] | None = None) -> str | None:
        """A warning when the methods (those in `searched`: the ones with a searched parameter; default
        all) get different numbers of trials, else None: a lead could then be tuning effort."""
        budgets = {m: n for m, n in self.trials.items() if searched is None or m in set(searched)}
        if len(set(budgets.values())) <= 1:
            return None
        return ("unequal budgets: " + ", ".join(f"{m} {n}" for m, n in budgets.items()) + " search trials per pair "
                "(a method's lead may partly be tuning effort; give search.trials one number)")


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

    @field_validator("tracking_uri")
    @classmethod
    def _known_scheme(cls, v: str | None) -> str | None:
        return v if v is None else check_tracking_uri(v)


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


# ---------------------------------------------------------------------------------------- teachers as a dimension
TEACHER_SIZE_FIELDS = {"mlp": "hidden", "cnn": "channels", "resnet": "depth"}  # the one field a teacher size sets
# `<teacher>-epoch<e>`: a teacher's early checkpoint as a candidate teacher of its own -- in characters that
# MLflow keys, registry names, Ray Tune's trial folders and Optuna's study names all take
AT = "-"


class TeacherFamilySpec(Frozen):
    """A teacher family, the mirror of the student `family`: one base model trained at each of `sizes`
    (once per recipe and cached, as any teacher). Its members are the teachers `<name>-<size>`
    (`mlp-128`, `resnet-56`), beside any named `teachers`; with `checkpoints_as_teachers`, each member's
    early training snapshots are candidate teachers too (`mlp-128-epoch10`)."""
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="the members are named <name>-<size>")
    model: ModelSpec = Field(description="the base teacher; each size replaces its size field (mlp `hidden`: an int "
                                         "sets every layer's width; cnn `channels`: every block's; resnet `depth`)")
    sizes: tuple[Annotated[int, Field(ge=1)], ...] = Field(min_length=1, description="the sizes to train")
    train: TrainSpec = TrainSpec()
    checkpoints: int = Field(4, ge=1, description="training snapshots kept per member (Pro-KD, and candidates)")
    checkpoints_as_teachers: bool = Field(False, description="each member's snapshots but the last are candidate "
                                                             "teachers too, named <member>-epoch<e>")
    min_margin: float | None = Field(0.05, ge=0, description="as teachers.<name>.min_margin, for every member")
    assistant: int | None = Field(None, ge=1, description="TAKD's assistant: the family's model at this size "
                                                          "(KD-trained from each teacher) instead of `assistant`")

    @model_validator(mode="after")
    def _sizes_fit(self) -> "TeacherFamilySpec":
        field = TEACHER_SIZE_FIELDS.get(self.model.kind)
        if field is None:
            raise ValueError(f"model: kind {self.model.kind!r} has no size a family can vary; valid kinds: "
                             f"{', '.join(TEACHER_SIZE_FIELDS)}")
        for i, size in enumerate(self.sizes):
            try:
                self.member_model(size)
            except ValidationError:
                valid = (", ".join(map(str, get_args(ResNet.model_fields["depth"].annotation)))
                         if self.model.kind == "resnet" else "a whole number >= 1")
                raise ValueError(f"sizes[{i}]: a {self.model.kind} teacher cannot take {field} {size}; valid: "
                                 f"{valid}") from None
        if len(set(self.sizes)) != len(self.sizes):
            raise ValueError(f"sizes: {list(self.sizes)} names a size twice")
        return self

    def member_model(self, size: int) -> ModelSpec:
        """The base model at `size` (its size field set; mlp/cnn: every layer's width)."""
        base = self.model.model_dump()
        field = TEACHER_SIZE_FIELDS[self.model.kind]
        base[field] = (size,) * len(base[field]) if field in ("hidden", "channels") else size
        return _model_adapter.validate_python(base)

    def member(self, size: int) -> str:
        return f"{self.name}-{size}"

    def members(self) -> dict[str, TeacherSpec]:
        """The family's teachers by name, each trained as a named teacher with this recipe would be."""
        return {self.member(size): TeacherSpec(model=self.member_model(size), train=self.train,
                                               checkpoints=self.checkpoints,
                                               checkpoints_as_teachers=self.checkpoints_as_teachers,
                                               min_margin=self.min_margin) for size in self.sizes}


@dataclass(frozen=True)
class Candidate:
    """A candidate teacher: a prepared teacher (`snapshot` None: its converged, best-validation weights) or
    one of its training snapshots. `epoch`: the snapshot's epoch (1-based), None where unknown (loaded)."""
    name: str
    teacher: str
    snapshot: int | None = None
    epoch: int | None = None


def snapshot_candidates(name: str, spec: TeacherSpec) -> list[Candidate]:
    """The candidates a teacher's snapshots make: every kept snapshot but the last (taken at the last epoch,
    it is the converged teacher's near twin). A trained teacher's snapshot k is saved after epoch
    round((k+1) E / n) (akd_ray.engine), which names it; a loaded teacher's by its position."""
    if not spec.checkpoints_as_teachers:
        return []
    n = spec.checkpoints
    if spec.prepare == "train":
        return [Candidate(f"{name}{AT}epoch{round((k + 1) * spec.train.epochs / n)}", name, k,
                          round((k + 1) * spec.train.epochs / n)) for k in range(n - 1)]
    return [Candidate(f"{name}{AT}snapshot{k + 1}", name, k) for k in range(n - 1)]


class Study(Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task: TaskSpec
    teachers: dict[str, TeacherSpec] = Field(default_factory=dict, description="named teachers; a "
                                             "`teacher_family`'s members join them once the study is read")
    teacher_family: TeacherFamilySpec | None = Field(None, description="teacher sizes trained and compared as "
                                                                      "candidate teachers of every student")
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
    storage: Path = Field(Path("akd-results"), description="Tune results, teachers, caches, the default MLflow "
                                                           "store; relative to the study file")
    mlflow: MlflowSpec = MlflowSpec()
    seed: int = 0
    source: Path | None = Field(None, description="set by load_study: the file this came from")

    @field_validator("teachers")
    @classmethod
    def _some_teacher(cls, v: dict) -> dict:  # runs only when given: an empty mapping is a mistake
        if not v:
            raise ValueError("should have at least 1 item (or leave `teachers` out and give a `teacher_family`)")
        return v

    @field_validator("students")
    @classmethod
    def _named(cls, v: dict) -> dict:  # runs only when given: an empty mapping is a mistake, not a family
        if not v:
            raise ValueError("should have at least 1 item (or leave `students` out and give a `family`)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Study":
        self._join_teacher_family()
        hf_task = self.task.is_glue
        for where, spec in [*([("teacher_family.model", self.teacher_family.model)] if self.teacher_family else []),
                            *((f"teachers.{k}.model", t.model) for k, t in self.teachers.items()),
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
            raise ValueError("search.trials has 'takd' but no `assistant` model is given (nor "
                             "teacher_family.assistant)")
        if "prokd" in self.search.trials and any(t.prepare != "train" for t in self.teachers.values()):
            raise ValueError("search.trials has 'prokd', which needs teachers with prepare: train (their checkpoints)")
        for name, t in self.teachers.items():
            if t.prepare == "load" and t.path is None and t.model.kind != "hf":
                raise ValueError(f"teachers.{name}: prepare: load needs `path` to a trained model")
        return self

    def unequal_budgets(self, searched: Iterable[str] | None = None) -> str | None:
        """"unequal budgets: ..." when the methods get different search budgets (see SearchSpec), else None."""
        return self.search.unequal_budgets(searched)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """(teacher, student) groups, over every candidate teacher (a teacher's early checkpoints too);
        with a family, (teacher, family name): one size group per teacher."""
        students = [self.family.name] if self.family else list(self.students)
        return [(t, s) for t in self.candidates for s in students]

    # -- teachers as a dimension (teacher_family, checkpoints_as_teachers) --------------------------------
    def _join_teacher_family(self) -> None:
        """The family's members join `teachers` (a frozen model: set once, here, while it is validated);
        a member or a checkpoint candidate named like a named teacher is refused."""
        if not self.teachers and self.teacher_family is None:
            raise ValueError("give `teachers` (named teachers) or a `teacher_family` (teacher sizes)")
        if self.teacher_family is None:
            members = {}
        else:
            members = self.teacher_family.members()
            clash = [n for n in members if n in self.teachers and self.teachers[n] != members[n]]
            if clash:
                raise ValueError(f"teacher_family: its member {clash[0]!r} clashes with the named teacher "
                                 f"teachers.{clash[0]}; rename one (teacher_family.name or the teacher)")
        teachers = {**self.teachers, **members}
        for name, spec in teachers.items():
            clash = next((c.name for c in snapshot_candidates(name, spec) if c.name in teachers), None)
            if clash:
                raise ValueError(f"teachers.{clash}: the name of a checkpoint candidate of teacher {name!r} "
                                 f"(<teacher>{AT}epoch<e>); rename the teacher")
        object.__setattr__(self, "teachers", teachers)
        if self.teacher_family is not None and self.teacher_family.assistant is not None:
            if self.assistant is not None:
                raise ValueError("teacher_family.assistant and `assistant` both name TAKD's assistant; keep one")
            object.__setattr__(self, "assistant", self.teacher_family.member_model(self.teacher_family.assistant))

    @property
    def candidates(self) -> dict[str, Candidate]:
        """Every candidate teacher by name: each teacher (its converged weights), then its early
        checkpoints where `checkpoints_as_teachers` is on."""
        out: dict[str, Candidate] = {}
        for name, spec in self.teachers.items():
            out[name] = Candidate(name, name)
            out.update({c.name: c for c in snapshot_candidates(name, spec)})
        return out

    def teacher_of(self, candidate: str) -> TeacherSpec:
        """The spec of the teacher a candidate comes from (itself, or the teacher of its checkpoint)."""
        return self.teachers[self.candidates[candidate].teacher]

    @property
    def shared_scratch(self) -> str | None:
        """Where teachers are a dimension (a teacher family, or checkpoints as teachers), scratch -- which
        never sees a teacher -- is searched and confirmed once per student, under the first candidate;
        this names it (None: scratch runs in every pair, as in any other study)."""
        many = self.teacher_family is not None or any(t.checkpoints_as_teachers for t in self.teachers.values())
        return next(iter(self.candidates)) if many and "scratch" in self.search.trials else None

    def searches(self, teacher: str, method: str) -> bool:
        """Whether `method` is searched (and confirmed) in `teacher`'s pairs: always, but for a shared scratch."""
        return method != "scratch" or self.shared_scratch in (None, teacher)


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
        if two_stage(self.method):
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
MAX_FILE_BYTES = 1_000_000  # a study or a search space is a page of YAML: a bigger file is the wrong file
# MLflow's tracking URI schemes (a scheme may carry a driver: postgresql+psycopg2); no scheme: a local path
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks",
                    "databricks-uc", "uc")
MODEL_KINDS = ("mlp", "cnn", "resnet", *HF_KINDS)
STUDY_NAME_RULE = "letters, digits, '_', '.' and '-', starting with a letter or a digit"
Loc = tuple  # a field's path as the user wrote it: keys and list positions


def check_tracking_uri(uri: str) -> str:
    """Refuse an MLflow URI whose scheme MLflow does not know (`htp://host`) before anything starts."""
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", uri)
    if m and m.group(1).split("+")[0].lower() not in TRACKING_SCHEMES:
        raise ValueError(f"unknown scheme {m.group(1)!r} in {uri!r}; valid: {', '.join(TRACKING_SCHEMES)}")
    return uri


def tracking_uri(study: Study) -> str:
    """The study's MLflow: `mlflow.tracking_uri`, else $MLFLOW_TRACKING_URI (what a cluster sets on
    every node), else a SQLite store under `<storage>/<name>/`."""
    if study.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return study.mlflow.tracking_uri or os.environ["MLFLOW_TRACKING_URI"]
    # MLflow 3 deprecates the file store; SQLite keeps runs, metrics and the model registry offline
    return f"sqlite:///{Path(study.storage).expanduser().resolve() / study.name / 'mlflow.db'}"


@dataclass(frozen=True)
class Override:
    """One `--set KEY.PATH=VALUE`, as typed and as parsed (the value read as YAML)."""
    item: str
    path: tuple[str, ...]
    value: Any

    def __str__(self) -> str:
        return f"--set {shlex.quote(self.item)}"


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a', 'b', 'c'], value), the value read as YAML (numbers, lists, null)."""
    o = _override(item)
    return list(o.path), o.value


def _override(item: str) -> Override:
    where = f"--set {shlex.quote(item)}"
    if "=" not in item:
        raise ConfigError(f"{where}: expected KEY=VALUE, e.g. --set train.epochs=5")
    key, raw = item.split("=", 1)
    path = tuple(p.strip() for p in key.strip().split("."))
    if not all(path):
        raise ConfigError(f"{where}: {key.strip()!r} is not a field path; use dotted names, e.g. --set train.epochs=5")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: the value is not valid YAML ({getattr(e, 'problem', None) or e}); "
                          f"quote it, e.g. --set '{key}=\"...\"'") from None
    return Override(item, path, value)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for o in map(_override, overrides):
        _apply(data, o)
    return data


def _apply(data: dict[str, Any], o: Override) -> None:
    node = data
    for i, part in enumerate(o.path[:-1]):
        if not isinstance(node.get(part, {}), dict):
            raise ConfigError(f"{o}: {'.'.join(o.path[:i + 1])} is not a section (it holds {node[part]!r})")
        node = node.setdefault(part, {})
    node[o.path[-1]] = o.value


# -- reading YAML: plain data, every key once, with the line of each key for messages ------------------
class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (YAML would silently keep the last)."""


def _unique_keys(loader: _Loader, node: yaml.MappingNode) -> dict:
    first: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, Hashable) and key in first:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}: at line {first[key]} and line {key_node.start_mark.line + 1}",
                key_node.start_mark)
        if isinstance(key, Hashable):
            first[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_keys)


def _key_lines(node: yaml.Node, prefix: Loc = ()) -> dict[Loc, int]:
    """The line of every key (and list item) under `node`, by its path."""
    if isinstance(node, yaml.MappingNode):
        children = [(k.value, k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)]
    elif isinstance(node, yaml.SequenceNode):
        children = [(i, v, v) for i, v in enumerate(node.value)]
    else:
        return {}
    lines: dict[Loc, int] = {}
    for key, at, child in children:
        lines[prefix + (key,)] = at.start_mark.line + 1
        lines.update(_key_lines(child, prefix + (key,)))
    return lines


def _read_text(path: Path, what: str) -> str:
    """The file's text, or one line saying why it is not a text file we can read."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, expected a {what} (a .yaml file)")
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    if not path.is_file():
        raise ConfigError(f"{path}: not a regular file, expected a {what}")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: {size / 1e6:.1f} MB is too large for a {what} (the limit is "
                              f"{MAX_FILE_BYTES / 1e6:g} MB); is it the right file?")
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror})") from None
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ConfigError(f"{path}: UTF-16 text; save the {what} as UTF-8")
    if b"\0" in raw:
        line = raw.count(b"\n", 0, raw.index(b"\0")) + 1
        raise ConfigError(f"{path}:{line}: binary data (a NUL byte), not a YAML {what}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the {what} "
                          "as UTF-8") from None


def load_yaml(path: Path, what: str = "YAML file") -> tuple[dict[str, Any], dict[Loc, int]]:
    """A YAML mapping and the line of each key: every problem is one line naming `path` (and the line)."""
    path = Path(path)
    loader = _Loader(_read_text(path, what))
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        context = f" ({e.context}, line {e.context_mark.line + 1})" if e.context and e.context_mark else ""
        raise ConfigError(f"{path}:{mark.line + 1 if mark else '?'}: not valid YAML: {e.problem}{context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    finally:
        loader.dispose()
    if data is None:
        raise ConfigError(f"{path}: empty; expected a mapping of keys at the top level (key: value)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level (key: value), "
                          f"got a {type(data).__name__}")
    return data, _key_lines(node)


def read_yaml(path: Path) -> dict[str, Any]:
    return load_yaml(path)[0]


# -- messages: fields as the user wrote them, each from where it was written --------------------------
@dataclass(frozen=True)
class Origins:
    """Where each field of a study came from: a line of its file, or a `--set` on the command line."""
    source: str
    lines: dict[Loc, int] = field(default_factory=dict)
    overrides: tuple[Override, ...] = ()

    def of(self, loc: Loc) -> str:
        for o in reversed(self.overrides):  # the last --set of a field wins, as when applied
            n = min(len(o.path), len(loc))
            if n and tuple(o.path[:n]) == tuple(loc[:n]):
                return str(o)
        for n in range(len(loc), 0, -1):  # the deepest key the file has
            if loc[:n] in self.lines:
                return f"{self.source}:{self.lines[loc[:n]]}"
        return self.source


def field_name(loc: Loc) -> str:
    """('students', 'small', 'hidden', 0) -> 'students.small.hidden[0]'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _user_loc(loc: tuple, data: Any) -> Loc:
    """Pydantic's error location without its own parts: a union's tag (the user wrote `kind: mlp`,
    not a key `mlp`) and `[key]` (an invalid dict key is the key's own field)."""
    out, node = [], data
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(node, dict) and isinstance(part, str) and part not in node and node.get("kind") == part:
            continue
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(out)


def _keys_at(model: type[BaseModel] | None, loc: Loc, data: Any) -> list[str]:
    """The keys the mapping at `loc` may hold, by walking `model`'s fields (a union by its `kind`)."""
    tp: Any = model
    node = data
    for part in (*loc, None):
        while True:  # Annotated[X, ...] -> X; a union -> the member whose `kind` the data names
            if get_origin(tp) is Annotated:
                tp = get_args(tp)[0]
            elif get_origin(tp) in (Union, UnionType):
                members = [a for a in get_args(tp) if a is not type(None)]
                kind = node.get("kind") if isinstance(node, dict) else None
                tp = next((m for m in members if isinstance(m, type) and issubclass(m, BaseModel)
                           and kind in get_args(m.model_fields.get("kind", Field()).annotation or ())), members[0])
            else:
                break
        if part is None:
            return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            tp = tp.model_fields[part].annotation if part in tp.model_fields else None
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        elif get_origin(tp) in (tuple, list):
            tp = get_args(tp)[0]
        else:
            return []
        node = node.get(part) if isinstance(node, dict) else None
    return []


def _message(e: dict, field: str, keys: list[str] = ()) -> str:
    kind, ctx, value = e["type"], e.get("ctx", {}), e.get("input")
    if kind == "extra_forbidden":
        near = difflib.get_close_matches(field.rsplit(".", 1)[-1], keys, n=1, cutoff=0.6)
        return f"unknown key; did you mean {near[0]!r}?" if near else \
            f"unknown key; valid: {', '.join(keys)}" if keys else "unknown key"
    if kind == "missing":
        return "required, but missing"
    if kind == "literal_error" and "expected" in ctx:
        return f"got {value!r}; valid: {ctx['expected']}"
    if kind == "union_tag_invalid":
        return f"unknown kind {ctx.get('tag')!r}; valid: {', '.join(MODEL_KINDS)}"
    if kind == "union_tag_not_found":
        return f"needs `kind:`, one of {', '.join(MODEL_KINDS)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping (key: value), got {type(value).__name__} {value!r}"
    if kind == "string_pattern_mismatch":
        rule = STUDY_NAME_RULE if field == "name" else f"the pattern {ctx.get('pattern')}"
        return f"{value!r} is not valid: use {rule}"
    return e["msg"].removeprefix("Value error, ")


def format_errors(source: str | Origins, err: ValidationError, data: Any = None,
                  model: type[BaseModel] | None = None) -> str:
    """One line per invalid field: `where: field: what is wrong`, where is `file:line` or `--set k=v`."""
    origins = source if isinstance(source, Origins) else Origins(str(source))
    lines = []
    for e in err.errors():
        loc = _user_loc(e["loc"], data)
        name = field_name(loc)
        keys = [k for k in _keys_at(model, loc[:-1], data) if k != "source"] \
            if e["type"] == "extra_forbidden" and model else []  # `source` is load_study's, not the user's
        lines.append(f"{origins.of(loc)}: {name + ': ' if name else ''}{_message(e, name, keys)}")
    return "\n".join(dict.fromkeys(lines))


def load_study(path: str | os.PathLike, overrides: list[str] = ()) -> Study:
    """Parse and validate a study file (and its search space) into a frozen `Study`; start nothing."""
    path = Path(path)
    data, lines = load_yaml(path, "study file")
    parsed = tuple(map(_override, overrides))
    for o in parsed:
        _apply(data, o)
    origins = Origins(str(path), lines, parsed)
    data["source"] = str(path.resolve())
    try:
        study = Study.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(origins, e, data, Study)) from None
    return _resolve_paths(study, path, origins)


def _resolve_paths(study: Study, path: Path, origins: Origins | None = None) -> Study:
    """Every relative path in a study is relative to the study file (storage too); check that the ones
    that must exist do, and are what they must be (a file or a folder)."""
    base = path.resolve().parent
    origins = origins or Origins(str(path))

    def resolve(p: Path | str) -> Path:
        p = Path(p).expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    def need(loc: Loc, p: Path, folder: bool) -> Path:
        what = "folder" if folder else "file"
        if not p.exists():
            raise ConfigError(f"{origins.of(loc)}: {field_name(loc)}: no such {what} {p}")
        if p.is_dir() != folder:
            raise ConfigError(f"{origins.of(loc)}: {field_name(loc)}: {p} is a {'file' if folder else 'folder'}, "
                              f"expected a {what}")
        return p

    space = need(("search", "space"), resolve(study.search.space), folder=False)
    task = study.task
    if task.data_dir is not None:
        task = task.model_copy(update={"data_dir": need(("task", "data_dir"), resolve(task.data_dir), folder=True)})
    if task.unlabelled is not None:  # a TSV for GLUE, a folder of images otherwise; preflight reads what it holds
        task = task.model_copy(update={"unlabelled": need(("task", "unlabelled"), resolve(task.unlabelled),
                                                          folder=not task.is_glue)})
    if not Path(task.download_dir).expanduser().is_absolute():
        task = task.model_copy(update={"download_dir": resolve(task.download_dir)})
    teachers = {}
    for name, t in study.teachers.items():
        if t.model.kind == "hf" and _looks_local(t.model.path, base):
            local = need(("teachers", name, "model", "path"), resolve(t.model.path), folder=True)
            t = t.model_copy(update={"model": t.model.model_copy(update={"path": str(local)})})
        if t.path is not None:  # a folder, or a state-dict file: preflight checks what it holds
            local = resolve(t.path)
            if not local.exists():
                raise ConfigError(f"{origins.of(('teachers', name, 'path'))}: teachers.{name}.path: no such file "
                                  f"or folder {local}")
            t = t.model_copy(update={"path": local})
            if t.checkpoints_as_teachers:
                _need_snapshots(name, t, origins)
        teachers[name] = t
    students = {}
    for name, s in study.students.items():
        if s.kind == "hf" and _looks_local(s.path, base):
            s = s.model_copy(update={"path": str(need(("students", name, "path"), resolve(s.path), folder=True))})
        students[name] = s
    storage = resolve(study.storage)
    if storage.exists() and not storage.is_dir():
        raise ConfigError(f"{origins.of(('storage',))}: storage: {storage} is a file, expected a folder")
    return study.model_copy(update={
        "task": task, "teachers": teachers, "students": students, "storage": storage,
        "search": study.search.model_copy(update={"space": space}),
    })


def _need_snapshots(name: str, t: TeacherSpec, origins: Origins) -> None:
    """checkpoints_as_teachers on a loaded teacher: its folder must be a teacher akd-ray prepared with at
    least `checkpoints` training snapshots (`checkpoints/<k>/`); anything else is imported without them."""
    loc = ("teachers", name, "checkpoints_as_teachers")
    snapshots = Path(t.path) / "checkpoints"
    held = sum(1 for d in snapshots.iterdir() if d.is_dir()) if snapshots.is_dir() else 0
    if not (Path(t.path) / "teacher.json").exists() or held == 0:
        raise ConfigError(f"{origins.of(loc)}: {field_name(loc)}: the loaded teacher {t.path} has no training "
                          "snapshots (a folder akd-ray prepared, with checkpoints/<k>/); drop "
                          "checkpoints_as_teachers or load a teacher akd-ray trained")
    if held < t.checkpoints:
        raise ConfigError(f"{origins.of(loc)}: {field_name(loc)}: the loaded teacher {t.path} holds {held} "
                          f"snapshot(s), fewer than teachers.{name}.checkpoints = {t.checkpoints}; set checkpoints: "
                          f"{held}")


def _looks_local(p: str, base: Path | None = None) -> bool:
    """Hub ids look like `org/name`; folders start with ., /, ~ or exist (beside the study file)."""
    return p.startswith((".", "/", "~")) or Path(p).exists() or (base is not None and (base / p).exists())
