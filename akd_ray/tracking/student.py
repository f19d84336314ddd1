"""A student as an MLflow pyfunc on raw inputs. Imports mlflow, torch and akd-ray's models and tasks
only -- never Ray -- so a registered model loads wherever mlflow and torch (and transformers, for
GLUE) are installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch

from akd_ray.models import SPEC_FILE, WEIGHTS_FILE, load_model, logits_of, spec_of
from akd_ray.tasks.base import Split, TaskData

STUDENT_ARTIFACT = "student"


def input_shape(folder: Path) -> tuple[int, ...]:
    """The input size of a saved vision model, from its first layer: (features,) of an MLP,
    (channels,) of a CNN or ResNet; () for transformers (they take token ids)."""
    from safetensors import safe_open

    first = {"mlp": "net.0.weight", "cnn": "features.0.weight", "resnet": "stem.0.weight"}.get(spec_of(folder).kind)
    if first is None:
        return ()
    with safe_open(str(Path(folder) / WEIGHTS_FILE), framework="pt") as f:
        return (f.get_slice(first).get_shape()[1],)


def load_student(folder: Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """A model saved by `akd_ray.models.save_model`, rebuilt without the task's data.

    `load_model` wants a TaskData only for the number of labels and the input size; the first is in
    `model.json`, the second in the first layer's weights.
    """
    folder = Path(folder)
    meta = json.loads((folder / SPEC_FILE).read_text())
    if "num_labels" not in meta:
        raise ValueError(f"{folder / SPEC_FILE} has no num_labels: save the model with its task "
                         "(akd_ray.models.save_model(..., task=...))")
    empty = Split({"x": torch.zeros((1, *input_shape(folder)))}, torch.zeros(1, dtype=torch.int64))
    stub = TaskData(name="saved", num_labels=meta["num_labels"], metric="", train=empty, val=empty, test=empty,
                    to_inputs=lambda feats, augment: feats)
    return load_model(folder, stub, device)


class StudentModel(mlflow.pyfunc.PythonModel):
    """A student as an MLflow pyfunc on raw inputs.

    digits:      float32 (N, 64), pixels in [0, 1] (scikit-learn's counts / 16), as the task feeds them
    cifar10/100: uint8 (N, 3, 32, 32) RGB, NCHW, unnormalised
    glue/*:      a DataFrame with the task's text column(s) (`sentence`, or e.g. `sentence1`, `sentence2`)

    Returns a DataFrame: `label` (class id) and `prob_<k>` per class; `score` for regression (STS-B).
    """
    # The logged signature validates inputs; MLflow's type-hint validation (which cannot say "an array
    # or a DataFrame") stays off, and so does its warning about a `predict` without type hints.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.task = context.model_config["task"]
        self.max_length = int(context.model_config.get("max_seq_length", 128))
        folder = context.artifacts[STUDENT_ARTIFACT]
        self.model = load_student(folder)
        self.tokenizer = None
        if self.task.startswith("glue/"):
            from transformers import AutoTokenizer
            self.tokenizer = AutoTokenizer.from_pretrained(folder)  # save_model keeps it beside the weights
            self.tokenizer.padding_side = "right"

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        with torch.inference_mode():
            if self.tokenizer is not None:
                logits = self._text_logits(model_input)
            else:
                logits = self._image_logits(model_input)
        if logits.shape[1] == 1:  # a regression head
            return pd.DataFrame({"score": logits[:, 0].numpy().astype(np.float64)})
        probs = logits.softmax(1).numpy().astype(np.float64)
        out = pd.DataFrame({"label": probs.argmax(1).astype(np.int64)})
        for k in range(probs.shape[1]):
            out[f"prob_{k}"] = probs[:, k]
        return out

    def _image_logits(self, x: Any) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(x.to_numpy() if isinstance(x, pd.DataFrame) else x))
        out = []
        for part in x.split(512):
            if self.task in ("cifar10", "cifar100"):  # the task's own normalisation
                from akd_ray.tasks.cifar import CifarInputs
                inputs = CifarInputs(self.task)({"x": part}, None)
            else:
                inputs = {"x": part.float().flatten(1)}
            out.append(logits_of(self.model, inputs).float())
        return torch.cat(out)

    def _text_logits(self, x: Any) -> torch.Tensor:
        """Sentences (or pairs) tokenized as the task does: truncated to max_seq_length, padded right."""
        columns = text_columns(self.task)
        if isinstance(x, pd.DataFrame):
            texts = [x[c].astype(str).tolist() for c in columns]
        elif len(columns) == 1:  # a list of sentences
            texts = [[str(s) for s in x]]
        else:  # a list of pairs
            texts = [[str(row[i]) for row in x] for i in range(len(columns))]
        out = []
        for i in range(0, len(texts[0]), 64):
            enc = self.tokenizer(*(t[i:i + 64] for t in texts), truncation=True, max_length=self.max_length,
                                 padding="longest", return_tensors="pt")
            inputs = {k: v for k, v in enc.items() if k in ("input_ids", "token_type_ids", "attention_mask")}
            out.append(logits_of(self.model, inputs).float())
        return torch.cat(out)


def text_columns(task_name: str) -> tuple[str, ...]:
    """A GLUE model's input columns: the names the hub dataset `nyu-mll/glue` gives its text."""
    from akd_ray.tasks.glue import GLUE_FORMATS

    return GLUE_FORMATS[task_name.removeprefix("glue/")].hub_text
