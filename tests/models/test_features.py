"""What the levers read of each model kind: hidden representations (one (batch, width) per layer) and
a continuous input that gives the same logits as the original one."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never reach the hub

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from akd_ray.models.features import continuous_inputs, hidden_states, hidden_modules  # noqa: E402
from akd_ray.models.resnet import CifarResNet  # noqa: E402
from akd_ray.models.small import CNN, MLP  # noqa: E402


def test_mlp_exposes_each_hidden_layer_after_its_relu():
    torch.manual_seed(0)
    model = MLP(5, (7, 3), 4)
    x = torch.randn(6, 5)
    logits, hidden = hidden_states(model, {"x": x})
    first = torch.relu(model.net[0](x))
    second = torch.relu(model.net[2](first))
    assert [h.shape for h in hidden] == [(6, 7), (6, 3)]
    torch.testing.assert_close(hidden[0], first)
    torch.testing.assert_close(hidden[1], second)
    torch.testing.assert_close(logits, model(x))
    assert not model.net[0]._forward_hooks  # the capture leaves no hook behind


def test_cnn_and_resnet_expose_pooled_blocks_and_stages():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    cnn = CNN(3, (4, 8), 10).eval()
    _, hidden = hidden_states(cnn, {"x": x})
    assert [h.shape for h in hidden] == [(2, 4), (2, 8)]
    torch.testing.assert_close(hidden[1], cnn.features(x).mean((2, 3)))
    resnet = CifarResNet(8, 10, width=4).eval()
    logits, hidden = hidden_states(resnet, {"x": x})
    assert [h.shape for h in hidden] == [(2, 4), (2, 8), (2, 16)]  # width, 2 x width, 4 x width
    torch.testing.assert_close(logits, resnet.head(hidden[-1]))  # the last stage pooled is what the head reads


def test_vision_inputs_are_their_own_continuous_form_and_other_models_are_refused():
    x = torch.randn(2, 4)
    inputs, key = continuous_inputs(MLP(4, (3,), 2), {"x": x})
    assert key == "x" and inputs["x"] is x
    with pytest.raises(ValueError, match="cannot read the hidden layers of a Linear"):
        hidden_modules(nn.Linear(2, 2))


def test_a_transformer_exposes_each_layers_cls_and_its_word_embeddings():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                     intermediate_size=32, num_labels=2)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    inputs = {"input_ids": torch.tensor([[2, 5, 7, 0], [2, 9, 0, 0]]),
              "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])}
    logits, hidden = hidden_states(model, inputs)
    reference = model(**inputs, output_hidden_states=True)
    assert len(hidden) == 3 and all(h.shape == (2, 16) for h in hidden)
    torch.testing.assert_close(hidden[2], reference.hidden_states[3][:, 0])  # layer 3's [CLS]
    embedded, key = continuous_inputs(model, inputs)
    assert key == "inputs_embeds" and "input_ids" not in embedded
    torch.testing.assert_close(model(**embedded).logits, logits)  # the same model, fed its own embeddings
