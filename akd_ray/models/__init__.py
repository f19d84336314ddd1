"""Models by spec: one explicit name -> builder table, and safe save/load for every kind.

Vision and quickstart models are saved as safetensors beside their spec (`model.json`);
transformers models with `save_pretrained` (safetensors) plus their tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import TypeAdapter
from safetensors.torch import load_file, save_file
from torch import nn

from akd_ray.config import HF_KINDS, ModelSpec
from akd_ray.tasks.base import Inputs, TaskData

SPEC_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
_spec_adapter: TypeAdapter = TypeAdapter(ModelSpec)


def build_model(spec: ModelSpec, task: TaskData, teacher: nn.Module | None = None) -> nn.Module:
    """A fresh model of `spec` for `task`; `hf_truncate`/`hf_config` students derive from `teacher`."""
    if spec.kind == "mlp":
        from akd_ray.models.small import MLP
        return MLP(task.train.features["x"][0].numel(), spec.hidden, task.num_labels)
    if spec.kind == "cnn":
        from akd_ray.models.small import CNN
        return CNN(task.train.features["x"].shape[1], spec.channels, task.num_labels)
    if spec.kind == "resnet":
        from akd_ray.models.resnet import CifarResNet
        return CifarResNet(spec.depth, task.num_labels, width=spec.width)
    if spec.kind in HF_KINDS:
        from akd_ray.models.hf import build_hf
        return build_hf(spec, task.num_labels, teacher=teacher)
    raise ValueError(f"unknown model kind {spec.kind!r}")


def logits_of(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    out = model(**inputs)
    return out if isinstance(out, torch.Tensor) else out.logits


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model(model: nn.Module, spec: ModelSpec, folder: Path, task: TaskData | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    meta = {"spec": _spec_adapter.dump_python(spec, mode="json")}
    if task is not None:
        meta["num_labels"] = task.num_labels
    if spec.kind in HF_KINDS:
        model.save_pretrained(folder)
        if task is not None and "tokenizer" in task.info:
            from transformers import AutoTokenizer
            AutoTokenizer.from_pretrained(task.info["tokenizer"]).save_pretrained(folder)
        meta["spec"] = {"kind": "hf", "path": str(folder)}  # reloads as a plain hf model
    else:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
                  str(folder / WEIGHTS_FILE))
    (folder / SPEC_FILE).write_text(json.dumps(meta, indent=2))
    return folder


def load_model(folder: Path, task: TaskData, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild a model saved by `save_model` (weights through safetensors only)."""
    folder = Path(folder)
    meta = json.loads((folder / SPEC_FILE).read_text())
    spec = _spec_adapter.validate_python(meta["spec"])
    if spec.kind in HF_KINDS:
        from akd_ray.models.hf import load_hf
        model = load_hf(folder, task.num_labels)
    else:
        model = build_model(spec, task)
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return model.to(device).eval()


def spec_of(folder: Path) -> ModelSpec:
    return _spec_adapter.validate_python(json.loads((Path(folder) / SPEC_FILE).read_text())["spec"])
