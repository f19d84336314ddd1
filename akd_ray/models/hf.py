"""Transformers sequence classifiers: pretrained (`hf`), a teacher cut short (`hf_truncate`), or the
teacher's architecture at a smaller size (`hf_config`).

Weights are always float32: transformers 5 loads a checkpoint in its stored dtype by default, and a
bf16/fp16 hub checkpoint would otherwise be fine-tuned in half precision (the worker's autocast
handles mixed precision).
"""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from akd_ray.config import HFModel, HFSmall, HFTruncated

# Where BERT-family models keep their list of transformer layers, under `model.base_model`:
# BERT, RoBERTa, XLM-R, ELECTRA, DeBERTa, MPNet use encoder.layer; DistilBERT transformer.layer.
LAYER_PATHS = (("encoder", "layer"), ("transformer", "layer"))
# Config fields some families name differently and do not alias themselves (DistilBERT: hidden_dim).
CONFIG_ALIASES = {"intermediate_size": ("hidden_dim",)}


def build_hf(spec: HFModel | HFTruncated | HFSmall, num_labels: int, teacher: nn.Module | None = None) -> nn.Module:
    """A sequence classifier with `num_labels` outputs (1: regression) built as `spec` says."""
    from transformers import AutoModelForSequenceClassification

    if spec.kind == "hf":
        # A checkpoint without a classification head (e.g. a bare BertModel) gets a fresh one;
        # transformers reports the newly initialised keys itself.
        return AutoModelForSequenceClassification.from_pretrained(spec.path, num_labels=num_labels).float()
    if teacher is None:
        raise ValueError(f"model kind {spec.kind!r} derives from the teacher, but no teacher was given")
    teacher = getattr(teacher, "module", teacher)  # unwrap DDP
    if spec.kind == "hf_truncate":
        return truncate(teacher, spec.layers, num_labels)
    if spec.kind == "hf_config":
        return smaller(teacher, spec, num_labels)
    raise ValueError(f"unknown transformers model kind {spec.kind!r}")


def load_hf(folder: str | Path, num_labels: int) -> nn.Module:
    """A classifier saved with `save_pretrained` (safetensors only; never touches the network)."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        str(folder), num_labels=num_labels, use_safetensors=True, local_files_only=True)
    return model.float()


def layer_list(model: nn.Module) -> nn.ModuleList:
    """The transformer layers of a BERT-family model, in order; a clear error for other families."""
    base = getattr(model, "base_model", model)
    for path in LAYER_PATHS:
        node = base
        for name in path:
            node = getattr(node, name, None)
        if isinstance(node, nn.ModuleList):
            return node
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    raise ValueError(f"cannot find the layer list of a {model_type!r} model (looked for base_model."
                     f"{' and base_model.'.join('.'.join(p) for p in LAYER_PATHS)}); hf_truncate supports "
                     "BERT-family encoders (bert, roberta, xlm-roberta, electra, deberta, mpnet, distilbert)")


def truncate(teacher: nn.Module, layers: int, num_labels: int) -> nn.Module:
    """The teacher with only its first `layers` layers (DistilBERT-style init, Sanh et al. 2019).

    Embeddings, the kept layers, the pooler and the classifier are copied from the teacher. The
    student is built from the teacher's config with `num_hidden_layers = layers`, so it saves and
    reloads as an ordinary model of that depth.
    """
    kept = layer_list(teacher)
    if layers > len(kept):
        raise ValueError(f"hf_truncate: layers = {layers} but the teacher has only {len(kept)}")
    if teacher.config.num_labels != num_labels:
        raise ValueError(f"hf_truncate: the teacher has {teacher.config.num_labels} outputs, the task "
                         f"needs {num_labels}; its classifier cannot be copied")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = layers
    student = type(teacher)(config)
    if len(layer_list(student)) != layers:
        raise ValueError(f"hf_truncate: setting num_hidden_layers did not change the depth of a "
                         f"{config.model_type!r} model")
    # Layer i of the student has the parameter names of the teacher's layer i, so the student's
    # state is the teacher's restricted to the student's names; strict loading proves nothing is left
    # at its random init.
    wanted = student.state_dict().keys()
    student.load_state_dict({k: v for k, v in teacher.state_dict().items() if k in wanted}, strict=True)
    return student.float()


def smaller(teacher: nn.Module, spec: HFSmall, num_labels: int) -> nn.Module:
    """The teacher's architecture with fewer/narrower layers, randomly initialised."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(teacher.config)
    hidden = spec.hidden_size if spec.hidden_size is not None else config.hidden_size
    heads = spec.heads if spec.heads is not None else config.num_attention_heads
    if hidden % heads:
        raise ValueError(f"hf_config: hidden_size {hidden} is not a multiple of heads {heads}")
    sizes = {"num_hidden_layers": spec.layers, "hidden_size": hidden, "num_attention_heads": heads,
             "intermediate_size": spec.intermediate_size if spec.intermediate_size is not None else 4 * hidden}
    for name, value in sizes.items():
        # Setting a name the config does not know would be silently ignored by the model.
        known = [n for n in (name, *CONFIG_ALIASES.get(name, ())) if hasattr(config, n)]
        if not known:
            raise ValueError(f"hf_config: a {config.model_type!r} config has no {name!r}")
        setattr(config, known[0], value)
    config.num_labels = num_labels
    return AutoModelForSequenceClassification.from_config(config).float()
