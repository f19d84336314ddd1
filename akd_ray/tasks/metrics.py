"""Task metrics computed in torch on (logits, labels); tests check each against scikit-learn/scipy.

Each task is judged by the metrics GLUE and the papers report; `primary` is the one that selects
checkpoints and ranks trials (higher is better for all of them).
"""

from __future__ import annotations

import torch

# task -> (primary metric, all metrics reported)
TASK_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "digits": ("accuracy", ("accuracy",)),
    "cifar10": ("accuracy", ("accuracy",)),
    "cifar100": ("accuracy", ("accuracy",)),
    "glue/cola": ("mcc", ("mcc", "accuracy")),
    "glue/sst2": ("accuracy", ("accuracy",)),
    "glue/mrpc": ("f1", ("f1", "accuracy")),
    "glue/stsb": ("pearson", ("pearson", "spearman")),
    "glue/qqp": ("f1", ("f1", "accuracy")),
    "glue/mnli": ("accuracy", ("accuracy",)),
    "glue/qnli": ("accuracy", ("accuracy",)),
    "glue/rte": ("accuracy", ("accuracy",)),
    "glue/wnli": ("accuracy", ("accuracy",)),
}


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    return (pred == labels).double().mean().item()


def f1(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Binary F1 of the positive class (label 1), as GLUE reports for MRPC and QQP."""
    tp = ((pred == 1) & (labels == 1)).sum().item()
    fp = ((pred == 1) & (labels != 1)).sum().item()
    fn = ((pred != 1) & (labels == 1)).sum().item()
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def mcc(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Matthews correlation (binary), 0 when undefined, as scikit-learn does."""
    tp = ((pred == 1) & (labels == 1)).sum().double()
    tn = ((pred == 0) & (labels == 0)).sum().double()
    fp = ((pred == 1) & (labels == 0)).sum().double()
    fn = ((pred == 0) & (labels == 1)).sum().double()
    denom = torch.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denom == 0 else ((tp * tn - fp * fn) / denom).item()


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denom = x.norm() * y.norm()
    return 0.0 if denom == 0 else (x @ y / denom).item()


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean rank), as scipy.stats.rankdata does."""
    x = x.double()
    order = x.argsort()
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=torch.float64)
    uniq, inverse = x.unique(return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ranks))
    return (sums / counts)[inverse]


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    return pearson(_ranks(x), _ranks(y))


def compute_metrics(task: str, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """All metrics of `task` for a whole split's logits (N, C) -- or (N, 1) for regression."""
    _, names = TASK_METRICS[task]
    logits, labels = logits.detach().float().cpu(), labels.detach().cpu()
    if logits.shape[-1] == 1:
        scores = logits.squeeze(-1)
        return {n: {"pearson": pearson, "spearman": spearman}[n](scores, labels) for n in names}
    pred = logits.argmax(-1)
    return {n: {"accuracy": accuracy, "f1": f1, "mcc": mcc}[n](pred, labels) for n in names}


def primary_metric(task: str) -> str:
    return TASK_METRICS[task][0]


def majority_baseline(task, split) -> float:
    """The primary metric of always predicting the most common training label (a regression task:
    the training mean, which correlates with nothing: 0). What a teacher must clearly beat."""
    n = len(split)
    known = task.train.labels[task.train.labelled_rows().to(task.train.labels.device)]  # few labels: those only
    if task.is_regression:
        logits = torch.full((n, 1), float(known.float().mean()))
    else:
        common = int(known.cpu().bincount(minlength=task.num_labels).argmax())
        logits = torch.nn.functional.one_hot(torch.full((n,), common), task.num_labels).float()
    return compute_metrics(task.name, logits, split.labels)[task.metric]
