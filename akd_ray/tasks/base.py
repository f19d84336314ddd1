"""What every task hands the worker: three splits held as tensors, and how to batch them.

Validation and test are labelled. Training may be partly unlabelled for the student (few labels):
its `labelled` mask says which rows' labels a student loss may read; the other rows (the rest of
train past `task.labelled_samples`, and any extra unlabelled source, whose labels are -1 or NaN)
serve the teacher's terms only. Every epoch is drawn over the whole training split, the union.

Data stays in memory as tensors (uint8 images, token ids, floats) and batches are gathered by
index, so the worker needs no DataLoader and augmentation is a deterministic function of
(seed, epoch, sample index) -- which makes teacher logits cacheable per augmented view.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Callable

import torch

Inputs = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Split:
    features: dict[str, torch.Tensor]  # each (N, ...); on the CPU as loaded, see TaskData.to
    labels: torch.Tensor  # (N,) int64 class ids, or float32 targets for regression
    # (N,) tokens per row where rows vary in length (text): batches are then drawn from rows of
    # similar length, so little of a batch is padding; None where every row costs the same
    lengths: torch.Tensor | None = None
    # (N,) bool: the rows whose label a student loss may read; None: every row (a fully labelled split)
    labelled: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> "Split":
        return Split({k: v.to(device) for k, v in self.features.items()}, self.labels.to(device),
                     *(None if t is None else t.to(device) for t in (self.lengths, self.labelled)))

    def subset(self, idx: torch.Tensor) -> "Split":
        return Split({k: v[idx] for k, v in self.features.items()}, self.labels[idx],
                     *(None if t is None else t[idx] for t in (self.lengths, self.labelled)))

    def labelled_rows(self) -> torch.Tensor:
        """Positions of the rows whose labels a student may read, ascending."""
        if self.labelled is None:
            return torch.arange(len(self))
        return self.labelled.cpu().nonzero().squeeze(1)


@dataclass(frozen=True)
class TaskData:
    name: str
    num_labels: int  # 1 for a regression head (STS-B)
    metric: str  # the validation metric that picks checkpoints, higher is better
    train: Split
    val: Split  # held out of the training data: model selection only
    test: Split  # the reported set (GLUE dev, CIFAR test); never used to select
    # (features of a batch, on the device) -> model inputs; `augment` is None for eval batches
    to_inputs: Callable[[dict[str, torch.Tensor], "Augment | None"], Inputs]
    extra_tests: dict[str, Split] = field(default_factory=dict)  # e.g. MNLI mismatched
    augments: bool = False  # whether training batches differ per epoch (teacher logits per epoch)
    info: dict[str, str] = field(default_factory=dict)  # e.g. tokenizer path, label names
    # identity of the examples whatever their encoding (GLUE: the data and which rows, not the
    # tokenizer); None: the training split's bytes, see `fingerprint`
    examples: str | None = None

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    def to(self, device: torch.device | str) -> "TaskData":
        """A copy whose splits live on `device`: batches are then gathered there, no copy per step.

        uint8 images stay uint8 (CIFAR-10's 45,000 training images: 138 MB), so a whole task fits
        on a GPU next to the model; `to_inputs` converts each batch after gathering it.
        """
        return dataclasses.replace(self, train=self.train.to(device), val=self.val.to(device),
                                   test=self.test.to(device),
                                   extra_tests={k: v.to(device) for k, v in self.extra_tests.items()})

    def batch(self, split: Split, idx: torch.Tensor, device: torch.device,
              augment: "Augment | None" = None) -> tuple[Inputs, torch.Tensor]:
        # Indices go to where the data is; non_blocking because a blocking host->device copy
        # synchronises the stream -- once per step, the CPU would wait for the GPU to drain.
        idx = idx.to(split.labels.device, non_blocking=True)
        feats = {k: v[idx].to(device, non_blocking=True) for k, v in split.features.items()}
        return self.to_inputs(feats, augment), split.labels[idx].to(device, non_blocking=True)

    def fingerprint(self) -> str:
        """Hash of the training examples: keys the logit caches, so stale logits never match.

        Tokenized text hashes its source instead of its token ids (`examples`): a teacher's logits
        on an example do not depend on how the student encodes it.
        """
        if self.examples is not None:
            return self.examples
        h = hashlib.sha256(self.name.encode())
        for k in sorted(self.train.features):
            h.update(k.encode())
            h.update(self.train.features[k].contiguous().cpu().numpy().tobytes())
        h.update(self.train.labels.contiguous().cpu().numpy().tobytes())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class Augment:
    """Which views to draw: a pure function of (seed, epoch) and the sample indices of the batch."""
    seed: int
    epoch: int
    indices: torch.Tensor  # (B,) positions in the training split

    def uniform(self, n_draws: int, device: torch.device) -> torch.Tensor:
        """(B, n_draws) floats in [0, 1), the same for a sample whatever batch it lands in."""
        # A counter-based hash (splitmix64-style) of (seed, epoch, index, draw): no generator state,
        # so a view does not depend on the batch order, the rank or the device.
        i = self.indices.to(device=device, dtype=torch.int64, non_blocking=True)[:, None]  # no stream sync
        d = torch.arange(n_draws, device=device, dtype=torch.int64)[None, :]
        x = (i * 0x9E3779B1 + d * 0x85EBCA77 + (self.seed * 1_000_003 + self.epoch) * 0xC2B2AE3D) & 0x7FFFFFFF
        x = (x ^ (x >> 15)) * 0x2C1B3C6D & 0x7FFFFFFF
        x = (x ^ (x >> 12)) * 0x297A2D39 & 0x7FFFFFFF
        x = x ^ (x >> 15)
        return (x & 0xFFFFFF).to(torch.float32) / float(1 << 24)


def split_off(split: Split, fraction: float, seed: int = 0, stratify: bool = True) -> tuple[Split, Split]:
    """Hold `fraction` of `split` out (stratified by label for classification), deterministically."""
    g = torch.Generator().manual_seed(seed)
    labels = split.labels
    if stratify and not labels.is_floating_point():
        held = []
        for c in labels.unique():
            members = (labels == c).nonzero().squeeze(1)
            members = members[torch.randperm(len(members), generator=g)]
            held.append(members[: max(1, round(len(members) * fraction))])
        held_idx = torch.cat(held).sort().values
    else:
        perm = torch.randperm(len(labels), generator=g)
        held_idx = perm[: max(1, round(len(labels) * fraction))].sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[held_idx] = False
    return split.subset(keep.nonzero().squeeze(1)), split.subset(held_idx)


def label_budget(split: Split, n: int | None, seed: int = 0) -> Split:
    """`split` with only `n` of its labelled rows still labelled: a stratified draw (each class keeps
    its share, largest remainders rounded up, at least one row per class), reproducible from `seed`.

    Rows already unlabelled stay so. Regression targets are drawn at random, unstratified.
    """
    if n is None:
        return split
    pool = split.labelled_rows()
    if n > len(pool):
        raise ValueError(f"a labelled budget of {n} rows, but the training split has {len(pool)} labelled rows")
    g = torch.Generator().manual_seed(seed)
    labels = split.labels[pool].cpu()
    if labels.is_floating_point():
        chosen = pool[torch.randperm(len(pool), generator=g)[:n]]
    else:
        classes, counts = labels.unique(return_counts=True)
        if n < len(classes):
            raise ValueError(f"a labelled budget of {n} rows is fewer than the {len(classes)} classes")
        exact = counts.double() * n / len(pool)
        quota = exact.floor().long().clamp_min(1)
        order = (exact - exact.floor()).argsort(descending=True, stable=True)
        for i in order.tolist():  # largest remainders first, up to the budget (never down past one a class)
            if quota.sum() >= n:
                break
            quota[i] += 1
        for i in order.flip(0).tolist():  # the at-least-one rule can overshoot: take back from the largest
            if quota.sum() <= n:
                break
            if quota[i] > 1:
                quota[i] -= 1
        chosen = torch.cat([pool[(labels == c).nonzero().squeeze(1)][torch.randperm(int(k), generator=g)[:int(q)]]
                            for c, k, q in zip(classes, counts, quota)])
    mask = torch.zeros(len(split), dtype=torch.bool)
    mask[chosen] = True
    return dataclasses.replace(split, labelled=mask)


def with_unlabelled(split: Split, extra: dict[str, torch.Tensor], lengths: torch.Tensor | None = None) -> Split:
    """`split` followed by `extra` rows that have no label (-1, or NaN for regression) and are unlabelled."""
    n = len(next(iter(extra.values())))
    fill = torch.full((n,), float("nan")) if split.labels.is_floating_point() else torch.full((n,), -1)
    labelled = split.labelled if split.labelled is not None else torch.ones(len(split), dtype=torch.bool)
    return Split({k: torch.cat([v, extra[k]]) for k, v in split.features.items()},
                 torch.cat([split.labels, fill.to(split.labels.dtype)]),
                 None if split.lengths is None else torch.cat([split.lengths, lengths]),
                 torch.cat([labelled, torch.zeros(n, dtype=torch.bool)]))


def take(split: Split, n: int | None, seed: int = 0) -> Split:
    """A deterministic random subset of at most n samples (all when n is None)."""
    if n is None or n >= len(split):
        return split
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return split.subset(idx)
