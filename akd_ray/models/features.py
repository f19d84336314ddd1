"""What the levers read of a model, for every kind: its hidden representations and a continuous input.

    hidden_states(model, inputs) -> (logits, [h_1, ..., h_L])   each h (batch, width)
    continuous_inputs(model, inputs) -> (inputs, key)            inputs[key] is what minimax perturbs

Hidden representations: `mlp` each hidden layer (after its ReLU); `cnn` each conv block's output,
global-average pooled; `resnet` each of the three stages' output, pooled; transformers (`hf`,
`hf_truncate`, `hf_config`) each layer's [CLS] state (the embeddings' output is not a layer).
Continuous inputs: the pixels or features `x` of vision and quickstart models; for transformers the
word embeddings of the input ids (`inputs_embeds`, which the model then adds positions to).

Capture uses forward hooks around an ordinary call, so a DDP-wrapped model still syncs gradients.
"""

from __future__ import annotations

import torch
from torch import nn

from akd_ray.tasks.base import Inputs


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP


def is_transformer(model: nn.Module) -> bool:
    return hasattr(unwrap(model), "get_input_embeddings") and hasattr(unwrap(model), "config")


def hidden_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are the hidden representations of a vision or quickstart model."""
    from akd_ray.models.resnet import CifarResNet
    from akd_ray.models.small import CNN, MLP

    inner = unwrap(model)
    if isinstance(inner, MLP):
        return [m for m in inner.net if isinstance(m, nn.ReLU)]
    if isinstance(inner, CNN):
        return [m for m in inner.features if isinstance(m, nn.MaxPool2d)]
    if isinstance(inner, CifarResNet):
        return list(inner.stages)
    raise ValueError(f"cannot read the hidden layers of a {type(inner).__name__}; the levers support the "
                     "model kinds mlp, cnn, resnet, hf, hf_truncate and hf_config")


def _pooled(h: torch.Tensor) -> torch.Tensor:
    return h.mean((2, 3)) if h.dim() == 4 else h.flatten(1)


def hidden_states(model: nn.Module, inputs: Inputs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The logits and the hidden representations, one (batch, width) tensor per layer, in order."""
    if is_transformer(model):
        out = model(**inputs, output_hidden_states=True)
        return out.logits, [h[:, 0] for h in out.hidden_states[1:]]  # [CLS] of each layer
    captured: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: captured.append(_pooled(out)))
             for m in hidden_modules(model)]
    try:
        logits = model(**inputs)
    finally:
        for h in hooks:
            h.remove()
    return logits, captured


def continuous_inputs(model: nn.Module, inputs: Inputs) -> tuple[dict[str, torch.Tensor], str]:
    """`inputs` with a continuous tensor minimax can perturb, and its key: `x` itself, or a
    transformer's word embeddings in place of the ids (gradients reach the embedding table)."""
    if not is_transformer(model):
        return dict(inputs), "x"
    rest = {k: v for k, v in inputs.items() if k != "input_ids"}
    return {**rest, "inputs_embeds": unwrap(model).get_input_embeddings()(inputs["input_ids"])}, "inputs_embeds"


def logits_from(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**inputs)
    return out if isinstance(out, torch.Tensor) else out.logits
