"""GLUE (Wang et al., ICLR 2019): all nine tasks, from a local copy in the official TSV layout or the hub.

Splits: GLUE's test labels are hidden, so the GLUE dev set is the reported `test` split (MNLI: matched
dev; mismatched dev goes to `extra_tests["mismatched"]`). `val` is held out of the GLUE train set,
so model selection never sees the reported set.

Text is tokenized with the tokenizer of the model that reads it, padded to the longest row of each
split and kept as int32 (half the memory of int64; MNLI train is 393k rows). `to_inputs` trims every
batch to its own longest row (dynamic padding) and widens to int64 for the embedding lookups. Each
split knows its rows' lengths, so the worker draws training batches from length buckets and
evaluates shortest first. With a cache folder (the study's), the tokenized splits are computed once
per study and tokenizer -- keyed by (tokenizer files, max length, data bytes, which rows) -- and
every later trial and rank reads them.

Label ids follow the hub's `nyu-mll/glue` ClassLabels for both sources, so a model trained on one
source reads the other: e.g. MNLI 0/1/2 = entailment/neutral/contradiction, and label 1 is the
positive class whose F1 GLUE reports for MRPC (equivalent) and QQP (duplicate).
"""

from __future__ import annotations

import csv
import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from akd_ray.cache import tensors_once
from akd_ray.config import TaskSpec
from akd_ray.tasks.base import Augment, Inputs, Split, TaskData, split_off, take
from akd_ray.tasks.metrics import primary_metric

HUB_DATASET = "nyu-mll/glue"
# Fixed on purpose: the val/train split and the subsets never move between trials, seeds or teachers,
# so every method is selected on the same rows and cached teacher logits stay valid.
SPLIT_SEED = 0
# Rows tokenized per call: bounds the int64 arrays the tokenizer returns before they shrink to int32.
TOKENIZE_CHUNK = 16_384
# Files that define a tokenizer: their bytes key the tokenized-split cache.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model")
CACHE_VERSION = "1"  # bump when the cached layout or the tokenizing changes


@dataclass(frozen=True)
class GlueFormat:
    """Where one GLUE task's columns live, in the official TSV files and in `nyu-mll/glue`."""
    folder: str  # folder of the official GLUE download (download_glue_data.py)
    text: tuple[str, ...]  # TSV column(s) of the sentence or pair, in model input order
    label: str  # TSV column of the label
    classes: tuple[str, ...] | None  # TSV label values in class-id order; None: a float score (STS-B)
    hub_text: tuple[str, ...]  # the same text columns in the hub dataset (its label column is `label`)
    # reported split -> (TSV file, hub split); "test" is the one `TaskData.test` holds
    evals: dict[str, tuple[str, str]] = field(default_factory=lambda: {"test": ("dev.tsv", "validation")})
    columns: tuple[str, ...] | None = None  # names of a headerless file's columns (CoLA has no header)


GLUE_FORMATS: dict[str, GlueFormat] = {
    "cola": GlueFormat("CoLA", ("sentence",), "label", ("0", "1"), ("sentence",),
                       columns=("source", "label", "orig_mark", "sentence")),
    "sst2": GlueFormat("SST-2", ("sentence",), "label", ("0", "1"), ("sentence",)),
    "mrpc": GlueFormat("MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), ("sentence1", "sentence2")),
    "stsb": GlueFormat("STS-B", ("sentence1", "sentence2"), "score", None, ("sentence1", "sentence2")),
    "qqp": GlueFormat("QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), ("question1", "question2")),
    "mnli": GlueFormat("MNLI", ("sentence1", "sentence2"), "gold_label",
                       ("entailment", "neutral", "contradiction"), ("premise", "hypothesis"),
                       evals={"test": ("dev_matched.tsv", "validation_matched"),
                              "mismatched": ("dev_mismatched.tsv", "validation_mismatched")}),
    "qnli": GlueFormat("QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"),
                       ("question", "sentence")),
    "rte": GlueFormat("RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"),
                      ("sentence1", "sentence2")),
    # WNLI's TSV label 1 means entailment, as the hub's ClassLabel (not_entailment, entailment) does
    "wnli": GlueFormat("WNLI", ("sentence1", "sentence2"), "label", ("0", "1"), ("sentence1", "sentence2")),
}


@dataclass(frozen=True)
class RawSplit:
    """One split as read, before tokenizing: the text column(s) and the labels."""
    texts: tuple[list[str], ...]  # one list per text column, each (N,)
    labels: torch.Tensor  # (N,) int64 class ids, or float32 scores for STS-B

    def __len__(self) -> int:
        return len(self.labels)


# ---------------------------------------------------------------------------------------- reading
def tsv_rows(path: Path, fmt: GlueFormat, unlabelled: bool = False) -> tuple[list[tuple[int, list[str]]], list[int], int]:
    """One GLUE TSV file, as the loader (and the preflight check) reads it: `(line, [text..., label])`
    per data row, the lines with too few fields (skipped), and how many fields a row needs.
    `unlabelled`: a file of extra unlabelled examples (`task.unlabelled`): a header naming the task's
    text columns (CoLA's too), any label column ignored; rows are `(line, [text...])`.

    QUOTE_NONE because GLUE text is not quoted: MRPC and MNLI rows hold bare `"` characters that
    a quoting reader would take as field delimiters, silently merging rows. `utf-8-sig` drops the
    byte-order mark some MRPC copies start with, which would otherwise glue onto the first column name.
    """
    wanted = fmt.text if unlabelled else (*fmt.text, fmt.label)
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = list(fmt.columns) if fmt.columns and not unlabelled else next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file; expected a header row with {list(wanted)}")
        missing = [c for c in wanted if c not in header]
        if missing:
            raise ValueError(f"{path}:1: no column(s) {missing} in the header {header}")
        index = [header.index(c) for c in wanted]
        needed = max(index) + 1
        rows, short_lines = [], []
        for row in reader:
            if not row:  # a blank line, e.g. after the last row
                continue
            if len(row) < needed:
                short_lines.append(reader.line_num)
                continue
            rows.append((reader.line_num, [row[i] for i in index]))
    return rows, short_lines, needed


def _read_tsv(path: Path, fmt: GlueFormat) -> RawSplit:
    """One GLUE TSV file -> its text columns and labels."""
    if not path.is_file():
        raise FileNotFoundError(f"GLUE file not found: {path}")
    rows, short_lines, needed = tsv_rows(path, fmt)
    if short_lines:
        warnings.warn(f"{path}: skipped {len(short_lines)} row(s) with fewer than {needed} fields "
                      f"(first at line {short_lines[0]})", stacklevel=2)
    if not rows:
        raise ValueError(f"{path}: no data rows")
    columns = list(zip(*(fields for _, fields in rows)))
    texts = tuple(list(col) for col in columns[:-1])
    return RawSplit(texts, _labels(columns[-1], fmt, str(path)))


def read_unlabelled_tsv(path: Path, fmt: GlueFormat) -> RawSplit:
    """`task.unlabelled`: extra examples with the task's text columns; their labels are unknown
    (-1, or NaN for a regression task), and no student loss reads them."""
    rows, short_lines, needed = tsv_rows(path, fmt, unlabelled=True)
    if short_lines:
        warnings.warn(f"{path}: skipped {len(short_lines)} row(s) with fewer than {needed} fields "
                      f"(first at line {short_lines[0]})", stacklevel=2)
    if not rows:
        raise ValueError(f"{path}: no data rows")
    texts = tuple(list(col) for col in zip(*(fields for _, fields in rows)))
    fill = torch.full((len(rows),), float("nan")) if fmt.classes is None else torch.full((len(rows),), -1)
    return RawSplit(texts, fill)


def _labels(values: tuple[str, ...], fmt: GlueFormat, where: str) -> torch.Tensor:
    if fmt.classes is None:
        try:
            return torch.tensor([float(v) for v in values], dtype=torch.float32)
        except ValueError as e:
            raise ValueError(f"{where}: a {fmt.label!r} value is not a number: {e}") from None
    ids = {name: i for i, name in enumerate(fmt.classes)}
    unknown = sorted({v for v in values if v not in ids})
    if unknown:
        raise ValueError(f"{where}: unknown {fmt.label!r} value(s) {unknown[:5]}; expected {list(fmt.classes)}")
    return torch.tensor([ids[v] for v in values], dtype=torch.int64)


def read_glue_dir(data_dir: Path, task: str) -> dict[str, RawSplit]:
    """All labelled splits of `task` ("sst2", ...) from a folder in the official GLUE layout.

    Returns "train" and the keys of `GLUE_FORMATS[task].evals` ("test", and "mismatched" for MNLI).
    A `val.tsv` beside `train.tsv` is a re-split of the official train set (some CoLA copies cut it
    into train.tsv + val.tsv); the two are concatenated back into the full GLUE train set.
    """
    fmt = GLUE_FORMATS[task]
    folder = Path(data_dir) / fmt.folder
    if not folder.is_dir():
        raise FileNotFoundError(f"GLUE folder not found: {folder} (task.data_dir must hold the official "
                                f"GLUE layout, e.g. {Path(data_dir) / fmt.folder / 'train.tsv'})")
    train_files = [folder / "train.tsv"] + ([folder / "val.tsv"] if (folder / "val.tsv").is_file() else [])
    parts = [_read_tsv(f, fmt) for f in train_files]
    texts = tuple([text for p in parts for text in p.texts[c]] for c in range(len(fmt.text)))
    splits = {"train": RawSplit(texts, torch.cat([p.labels for p in parts]))}
    for name, (file, _) in fmt.evals.items():
        splits[name] = _read_tsv(folder / file, fmt)
    return splits


def read_glue_hub(task: str) -> dict[str, RawSplit]:
    """The same splits as `read_glue_dir`, from the Hugging Face hub dataset `nyu-mll/glue`."""
    try:
        import datasets
    except ImportError:
        raise ImportError("GLUE from the hub needs the `datasets` package: pip install 'akd-ray[hub]', "
                          "or set task.data_dir to a local copy in the GLUE TSV layout") from None
    fmt = GLUE_FORMATS[task]
    ds = datasets.load_dataset(HUB_DATASET, task)
    hub_splits = {"train": "train"} | {name: hub_split for name, (_, hub_split) in fmt.evals.items()}
    dtype = torch.float32 if fmt.classes is None else torch.int64
    splits = {}
    for name, hub_split in hub_splits.items():
        part = ds[hub_split]
        texts = tuple(list(part[column]) for column in fmt.hub_text)
        splits[name] = RawSplit(texts, torch.tensor(list(part["label"]), dtype=dtype))
    return splits


# ---------------------------------------------------------------------------------------- tokenizing
def _tokenize(tokenizer, raw: RawSplit, rows: torch.Tensor, max_length: int) -> dict[str, torch.Tensor]:
    """Features of the chosen rows: (N, longest row) int32 tensors, padded on the right."""
    idx = rows.tolist()
    texts = [[col[i] for i in idx] for col in raw.texts]
    pad_values = {"input_ids": tokenizer.pad_token_id, "token_type_ids": tokenizer.pad_token_type_id,
                  "attention_mask": 0}
    chunks = []
    for start in range(0, len(idx), TOKENIZE_CHUNK):
        part = [t[start:start + TOKENIZE_CHUNK] for t in texts]
        enc = tokenizer(part[0], part[1] if len(part) > 1 else None, truncation=True, max_length=max_length,
                        padding="longest", return_tensors="np")
        chunks.append({k: v.astype(np.int32) for k, v in enc.items() if k in pad_values})
    width = max(c["input_ids"].shape[1] for c in chunks)  # each chunk is padded to its own longest row
    feats = {}
    for key in chunks[0]:
        padded = [np.pad(c[key], ((0, 0), (0, width - c[key].shape[1])), constant_values=pad_values[key])
                  for c in chunks]
        feats[key] = torch.from_numpy(np.concatenate(padded))
    return feats


def to_inputs(feats: dict[str, torch.Tensor], augment: Augment | None) -> Inputs:
    """Model kwargs of a batch, trimmed to its longest real row (text tasks do not augment).

    Attention cost grows with sequence length and most batches are far shorter than their split's
    longest row. Reading the length back is one device sync per batch, cheap next to the forward.
    """
    width = int(feats["attention_mask"].sum(1).max())
    return {k: v[:, :width].long() for k, v in feats.items()}


# ---------------------------------------------------------------------------------------- the task
def _hash(*parts: object) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _data_files(data_dir: Path, task: str) -> list[Path]:
    folder = Path(data_dir) / GLUE_FORMATS[task].folder
    files = [folder / "train.tsv", folder / "val.tsv"] + [folder / f for f, _ in GLUE_FORMATS[task].evals.values()]
    return [f for f in files if f.is_file()]


def _tokenizer_key(tokenizer_path: str) -> str:
    """The tokenizer's files (a local folder) or its hub id: what decides the token ids."""
    folder = Path(tokenizer_path)
    if not folder.is_dir():
        return _hash("hub", tokenizer_path)
    return _hash(*[(name, (folder / name).read_bytes()) for name in TOKENIZER_FILES if (folder / name).is_file()])


def examples_key(spec: TaskSpec) -> str:
    """Which examples a task holds, however they are encoded: the data's bytes and the row choices."""
    task = spec.name.removeprefix("glue/")
    data = (_hash(*[(f.name, f.read_bytes()) for f in _data_files(spec.data_dir, task)])
            if spec.data_dir is not None else _hash("hub", HUB_DATASET, task))
    extra = _hash(Path(spec.unlabelled).read_bytes()) if spec.unlabelled is not None else None
    return _hash(spec.name, data, spec.val_fraction, spec.max_train_samples, spec.max_eval_samples,
                 spec.max_seq_length, SPLIT_SEED, *([extra] if extra else []))


def load_glue_task(spec: TaskSpec, tokenizer_path: str, cache_dir: Path | None = None) -> TaskData:
    """GLUE task `spec.name` ("glue/sst2", ...) tokenized with the tokenizer at `tokenizer_path`.

    Source: `spec.data_dir` (official GLUE TSV layout) or, when it is None, the hub.
    `val` is `spec.val_fraction` of the full GLUE train set (stratified); `max_train_samples` then
    subsets what remains for training, so `val` is the same rows whatever the training budget.
    `max_eval_samples` subsets each reported split (test, and MNLI's mismatched).
    """
    task = spec.name.removeprefix("glue/")
    if task not in GLUE_FORMATS:
        raise ValueError(f"{spec.name!r} is not a GLUE task (valid: {', '.join(GLUE_FORMATS)})")
    fmt = GLUE_FORMATS[task]
    examples = examples_key(spec)
    key = _hash(CACHE_VERSION, examples, _tokenizer_key(tokenizer_path))

    def build() -> dict:
        return {"key": key, "splits": _tokenized_splits(spec, tokenizer_path)}

    if cache_dir is not None:
        saved = tensors_once(Path(cache_dir) / "glue" / f"{task}-{key}.pt", build, valid=lambda s: s.get("key") == key)
    else:
        saved = build()
    splits = {name: Split(s["features"], s["labels"], s["features"]["attention_mask"].sum(1), s.get("labelled"))
              for name, s in saved["splits"].items()}
    return TaskData(
        name=spec.name,
        num_labels=1 if fmt.classes is None else len(fmt.classes),
        metric=primary_metric(spec.name),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        to_inputs=to_inputs,
        extra_tests={name: split for name, split in splits.items() if name not in ("train", "val", "test")},
        info={"tokenizer": tokenizer_path},
        examples=examples,
    )


def train_rows(raw: RawSplit, spec: TaskSpec) -> tuple[Split, Split]:
    """Which rows of GLUE's train set are the student's train and val: (train, val) as row numbers."""
    train, val = split_off(Split({"row": torch.arange(len(raw))}, raw.labels), spec.val_fraction, seed=SPLIT_SEED)
    return take(train, spec.max_train_samples, seed=SPLIT_SEED), val


def _tokenized_splits(spec: TaskSpec, tokenizer_path: str) -> dict[str, dict]:
    """Read the data, choose the rows, tokenize them: {split: {"features": ..., "labels": ...}}."""
    from transformers import AutoTokenizer

    task = spec.name.removeprefix("glue/")
    fmt = GLUE_FORMATS[task]
    raw = read_glue_dir(spec.data_dir, task) if spec.data_dir is not None else read_glue_hub(task)

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer {tokenizer_path!r} has no pad token; GLUE batches need one")
    tokenizer.padding_side = "right"  # to_inputs trims padding off the right end

    def rows_of(split: RawSplit) -> Split:  # row numbers, so the helpers below pick rows before tokenizing
        return Split({"row": torch.arange(len(split))}, split.labels)

    def tokenized(name: str, chosen: Split) -> dict:
        return {"features": _tokenize(tokenizer, raw[name], chosen.features["row"], spec.max_seq_length),
                "labels": chosen.labels}

    train, val = train_rows(raw["train"], spec)
    evals = {name: take(rows_of(raw[name]), spec.max_eval_samples, seed=SPLIT_SEED) for name in fmt.evals}
    union = tokenized("train", train)
    if spec.unlabelled is not None:  # tokenized with train, so both share one width; its rows follow train's
        extra = read_unlabelled_tsv(Path(spec.unlabelled), fmt)
        raw["train+"] = RawSplit(tuple(a + b for a, b in zip(raw["train"].texts, extra.texts)),
                                 torch.cat([raw["train"].labels, extra.labels]))
        rows = torch.cat([train.features["row"], len(raw["train"]) + torch.arange(len(extra))])
        union = tokenized("train+", Split({"row": rows}, torch.cat([train.labels, extra.labels])))
        union["labelled"] = torch.arange(len(rows)) < len(train)
    return {"train": union,
            "val": tokenized("train", take(val, spec.max_eval_samples, seed=SPLIT_SEED)),
            **{name: tokenized(name, rows) for name, rows in evals.items()}}
