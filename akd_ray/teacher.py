"""Teachers and TAKD assistants, prepared once per study: trained, fine-tuned or loaded.

Preparing runs the worker loop (a teacher is a `scratch` run, an assistant a `kd` run from the
teacher), so this module imports the engine; the engine only reads what it leaves behind, through
akd_ray.logits. Each prepared model is a folder (see akd_ray.logits for its layout), built by one
process under a lock in a temporary folder and renamed into place (akd_ray.cache.folder_once).

    <storage>/<study>/teachers/<name>-<recipe fingerprint>/     trained or fine-tuned here
    <storage>/<study>/teachers/<name>-load-<source hash>/       imported from `prepare: load`
    <storage>/<study>/assistants/<recipe fingerprint>/          TAKD's assistant, per teacher
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from pydantic import TypeAdapter

from akd_ray.cache import folder_once
from akd_ray.config import HF_KINDS, ModelSpec, RunConfig, TaskSpec, TeacherSpec, TrainSpec
from akd_ray.engine import EpochCallback, run_distillation
from akd_ray.logits import (TEACHER_FILE, checkpoint_dirs, fingerprint_record, teacher_info,  # noqa: F401
                            weights_fingerprint)
from akd_ray.models import SPEC_FILE, build_model, save_model
from akd_ray.tasks import load_task

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")
STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def recipe_fingerprint(*parts: object) -> str:
    """Hash of what determines a trained model: its spec, task, training recipe and seed."""
    blob = json.dumps([p.model_dump(mode="json") if hasattr(p, "model_dump") else p for p in parts],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _is_ready(folder: Path) -> bool:
    return (folder / TEACHER_FILE).exists()


def _finish(folder: Path, info: dict) -> None:
    """Record a freshly built model's fingerprints (its weights and each snapshot's) in teacher.json."""
    info = {**info, **fingerprint_record(folder), "snapshots": [fingerprint_record(d) for d in checkpoint_dirs(folder)]}
    (folder / TEACHER_FILE).write_text(json.dumps(info, indent=2))


# ---------------------------------------------------------------------------------------- teachers
def prepare_teacher(name: str, spec: TeacherSpec, task: TaskSpec, storage: Path, seed: int = 0,
                    on_epoch: EpochCallback | None = None) -> Path:
    """Return the folder of a ready teacher, training it only when no folder with its fingerprint exists.

    `storage` is the study's root (`<storage>/<study>`); `on_epoch` sees the training's progress.
    """
    if spec.prepare == "load":
        return import_teacher(name, spec, task, storage)
    task = teacher_task(spec, task)

    def train(tmp: Path) -> None:
        run = RunConfig(study="teacher", task=task, teacher=name, student=name, student_model=spec.model,
                        method="scratch", train=spec.train, seed=seed, augment_seed=seed,
                        cache_dir=Path(storage) / "cache")  # the data as decoded/tokenized once for the study
        metrics = run_distillation(run, on_epoch=on_epoch, save_dir=tmp, snapshots=spec.checkpoints)
        _finish(tmp, {"name": name, "prepared": "train", "metrics": metrics,
                      "model": TypeAdapter(ModelSpec).dump_python(spec.model, mode="json")})

    return folder_once(Path(storage) / "teachers" / f"{name}-{recipe_fingerprint(spec, task, seed)}", _is_ready, train)


def teacher_task(spec: TeacherSpec, task: TaskSpec) -> TaskSpec:
    """The data a teacher trains on. Few labels (`task.labelled_samples`): `train_on: all` -- every
    training label (a teacher that has seen more; the same rows as without the budget, so one teacher
    serves every budget); `labelled` -- the student's labelled rows only. Never the extra unlabelled
    source: it has no labels. Validation and test are the student's either way."""
    if spec.train_on == "all":
        return task.model_copy(update={"labelled_samples": None, "unlabelled": None})
    return task.model_copy(update={"unlabelled": None})


def _source_stamps(source: Path) -> dict[str, list[int]]:
    """Size and mtime of the source's weight files: an imported teacher is redone when they change."""
    files = [source] if source.is_file() else [f for f in sorted(source.glob("*")) if f.suffix in STATE_DICT_SUFFIXES]
    return {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in files}


def import_teacher(name: str, spec: TeacherSpec, task: TaskSpec, storage: Path) -> Path:
    """`prepare: load`: a trained model from outside, as a prepared teacher folder under the storage.

    Accepted: a folder saved by akd-ray (used in place when it is a prepared teacher), a folder
    saved by transformers' `save_pretrained` (a fine-tuned AutoModelForSequenceClassification, with
    its tokenizer), a hub id (`kind: hf` without `path`), or a state dict of `spec.model` (a
    `.safetensors`/`.pt` file, or a folder holding one), e.g. a ResNet's `model.state_dict()`.
    The source is never written to; its files' size and mtime are recorded, and a change re-imports it.
    """
    source_text = str(spec.path) if spec.path is not None else spec.model.path
    source = Path(source_text).expanduser()
    if source.is_dir() and _is_ready(source) and (source / SPEC_FILE).exists():
        return source  # prepared by akd-ray already; teacher_info rechecks its fingerprints
    local = source.exists()
    stamps = _source_stamps(source) if local else {}
    folder = Path(storage) / "teachers" / f"{name}-load-{hashlib.sha256(source_text.encode()).hexdigest()[:12]}"

    def ready(f: Path) -> bool:
        return _is_ready(f) and json.loads((f / TEACHER_FILE).read_text()).get("source_stamps") == stamps

    def build(tmp: Path) -> None:
        if local and (source / SPEC_FILE).exists():  # an akd-ray model folder, not yet a teacher
            shutil.copytree(source, tmp, dirs_exist_ok=True)
            shutil.rmtree(tmp / "checkpoints", ignore_errors=True)
        elif spec.model.kind in HF_KINDS:
            _import_hf(source_text, tmp, task)
        else:
            _import_state_dict(source, spec.model, task, tmp)
        _finish(tmp, {"name": name, "prepared": "load", "source": source_text, "source_stamps": stamps,
                      "model": json.loads((tmp / SPEC_FILE).read_text())["spec"]})

    return folder_once(folder, ready, build)


def _import_hf(source: str, tmp: Path, task: TaskSpec) -> None:
    """A transformers sequence classifier (a `save_pretrained` folder or a hub id) as an akd-ray `hf` model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(source).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"{folder}: neither an akd-ray model (model.json) nor a transformers "
                                    "save_pretrained folder (config.json)")
        if not any(folder.glob("*.safetensors")):
            raise ValueError(f"{folder}: no .safetensors weights; akd-ray loads transformers models through "
                             "safetensors only (save_pretrained writes them by default)")
        if task.is_glue and not any((folder / f).exists() for f in TOKENIZER_FILES):
            raise FileNotFoundError(f"{folder}: no tokenizer; a GLUE teacher reads its own tokens -- save it "
                                    "beside the model with tokenizer.save_pretrained(folder)")
        for f in folder.iterdir():  # weights, config and tokenizer, as they are: nothing is re-encoded
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
    else:  # a hub id
        AutoModelForSequenceClassification.from_pretrained(source).save_pretrained(tmp)
        AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
    (tmp / SPEC_FILE).write_text(json.dumps({"spec": {"kind": "hf", "path": str(tmp)}}, indent=2))


def _import_state_dict(source: Path, spec: ModelSpec, task_spec: TaskSpec, tmp: Path) -> None:
    """A state dict of `spec` (strictly matching its architecture) as an akd-ray model folder."""
    if source.is_dir():
        files = [f for f in sorted(source.iterdir()) if f.suffix in STATE_DICT_SUFFIXES]
        if len(files) != 1:
            raise FileNotFoundError(f"{source}: expected one state-dict file ({', '.join(STATE_DICT_SUFFIXES)}), "
                                    f"found {[f.name for f in files]}")
        source = files[0]
    if source.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(source))
    else:  # weights_only: a pickle that runs code is refused
        state = torch.load(source, weights_only=True, map_location="cpu")
        state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DDP
    task = load_task(task_spec)
    model = build_model(spec, task)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{source}: not a state dict of {spec.model_dump()}: {e}") from None
    save_model(model, spec, tmp, task)


# ---------------------------------------------------------------------------------------- assistants
def assistant_folder(storage: Path, assistant: ModelSpec, task: TaskSpec, recipe: TrainSpec, teacher_dir: Path,
                     seed: int) -> Path:
    """Where the study keeps the assistant of `teacher_dir`: its fingerprint is the assistant's model,
    the task, its own recipe, the teacher's weights and the seed -- never a trial's searched values."""
    fp = recipe_fingerprint(assistant, task, recipe, teacher_info(teacher_dir)["fingerprint"], seed)
    return Path(storage) / "assistants" / fp


def prepare_assistant(assistant: ModelSpec, task: TaskSpec, recipe: TrainSpec, teacher_dir: Path, storage: Path,
                      seed: int = 0, on_epoch: EpochCallback | None = None) -> Path:
    """TAKD's first link, once per study and teacher: the assistant KD-trained from the teacher."""
    def train(tmp: Path) -> None:
        run = RunConfig(study="assistant", task=task, teacher_dir=teacher_dir, student="assistant",
                        student_model=assistant, method="kd", train=recipe, seed=seed, augment_seed=seed,
                        cache_dir=Path(storage) / "cache")
        metrics = run_distillation(run, on_epoch=on_epoch, save_dir=tmp)
        _finish(tmp, {"name": "assistant", "prepared": "train", "teacher": str(teacher_dir), "metrics": metrics,
                      "model": TypeAdapter(ModelSpec).dump_python(assistant, mode="json")})

    return folder_once(assistant_folder(storage, assistant, task, recipe, teacher_dir, seed), _is_ready, train)


# ---------------------------------------------------------------------------------------- checkpoints as teachers
def prepare_snapshot_teacher(name: str, teacher_dir: Path, snapshot: int, storage: Path) -> Path:
    """A teacher's training snapshot `snapshot` as a prepared teacher of its own (`name`, e.g.
    `mlp-128-epoch10`): its weights (and, for GLUE, the teacher's tokenizer) in a folder with its own
    teacher.json. Keyed by the snapshot's weight fingerprint, so its logits are cached once (the same
    table Pro-KD reads for that snapshot) and a retrained teacher gives a new folder."""
    source = checkpoint_dirs(teacher_dir)[snapshot]
    fingerprint = teacher_info(teacher_dir)["snapshots"][snapshot]["fingerprint"]

    def build(tmp: Path) -> None:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        for f in TOKENIZER_FILES:  # a GLUE teacher reads its own tokens (akd_ray.engine.tokenizer_of)
            if (Path(teacher_dir) / f).exists() and not (tmp / f).exists():
                shutil.copy2(Path(teacher_dir) / f, tmp / f)
        _finish(tmp, {"name": name, "prepared": "snapshot", "teacher": str(teacher_dir), "snapshot": snapshot,
                      "model": json.loads((tmp / SPEC_FILE).read_text())["spec"]})

    return folder_once(Path(storage) / "teachers" / f"{name}-{fingerprint}", _is_ready, build)
