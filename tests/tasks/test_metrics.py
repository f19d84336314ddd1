"""Every task metric against scikit-learn / scipy, on random data and on the edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from akd_ray.config import TASKS
from akd_ray.tasks.metrics import (TASK_METRICS, accuracy, compute_metrics, f1, mcc, pearson, primary_metric,
                                   spearman)

SEEDS = range(5)


def _binary(seed: int, n: int = 200, p: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, generator=g) < p).long(), (torch.rand(n, generator=g) < p).long()


@pytest.mark.parametrize("seed", SEEDS)
def test_accuracy_matches_sklearn_multiclass(seed):
    g = torch.Generator().manual_seed(seed)
    pred, labels = torch.randint(0, 3, (300,), generator=g), torch.randint(0, 3, (300,), generator=g)
    assert accuracy(pred, labels) == pytest.approx(accuracy_score(labels.numpy(), pred.numpy()), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("p", [0.5, 0.8])
def test_f1_and_mcc_match_sklearn(seed, p):
    pred, labels = _binary(seed, p=p)
    assert f1(pred, labels) == pytest.approx(f1_score(labels.numpy(), pred.numpy()), abs=1e-12)
    assert mcc(pred, labels) == pytest.approx(matthews_corrcoef(labels.numpy(), pred.numpy()), abs=1e-12)


@pytest.mark.filterwarnings("ignore:A single label was found")  # sklearn's, on the all-zero case
@pytest.mark.parametrize("pred, labels", [
    ([1, 1, 1, 1], [1, 0, 1, 0]),  # one predicted class: MCC undefined -> 0
    ([0, 1, 0, 1], [1, 1, 1, 1]),  # one true class
    ([0, 0, 0, 0], [0, 0, 0, 0]),  # both constant: F1 has no positives
    ([1, 0, 1, 0], [1, 0, 1, 0]),  # perfect
    ([0, 1, 0, 1], [1, 0, 1, 0]),  # perfectly wrong
])
def test_binary_edge_cases_match_sklearn(pred, labels):
    p, y = torch.tensor(pred), torch.tensor(labels)
    assert mcc(p, y) == pytest.approx(matthews_corrcoef(labels, pred), abs=1e-12)
    assert f1(p, y) == pytest.approx(f1_score(labels, pred, zero_division=0.0), abs=1e-12)
    assert accuracy(p, y) == pytest.approx(accuracy_score(labels, pred), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_pearson_and_spearman_match_scipy(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(150, generator=g)
    y = 0.6 * x + torch.randn(150, generator=g)
    assert pearson(x, y) == pytest.approx(pearsonr(x.numpy(), y.numpy())[0], abs=1e-6)
    assert spearman(x, y) == pytest.approx(spearmanr(x.numpy(), y.numpy())[0], abs=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_spearman_with_ties_matches_scipy(seed):
    # STS-B gold scores repeat a lot (0.0, 2.5, 5.0 ...): ties must share the average rank
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 6, (120,), generator=g).float() / 1.25
    y = torch.randint(0, 4, (120,), generator=g).float() + 0.5 * (x > 2)
    assert spearman(x, y) == pytest.approx(spearmanr(x.numpy(), y.numpy())[0], abs=1e-9)


def test_correlation_of_a_constant_is_zero():
    x, c = torch.randn(20), torch.full((20,), 3.0)
    assert pearson(x, c) == 0.0 and spearman(x, c) == 0.0


def test_float64_inputs_are_not_rounded():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0, abs=1e-15)


def test_every_task_has_metrics_and_primary_first():
    assert set(TASK_METRICS) == set(TASKS)
    for task, (primary, names) in TASK_METRICS.items():
        assert primary == primary_metric(task) == names[0]


def test_compute_metrics_classification_matches_sklearn():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(100, 2, generator=g), torch.randint(0, 2, (100,), generator=g)
    pred = logits.argmax(-1).numpy()
    got = compute_metrics("glue/cola", logits, labels)
    assert set(got) == {"mcc", "accuracy"}
    assert got["mcc"] == pytest.approx(matthews_corrcoef(labels.numpy(), pred), abs=1e-12)
    assert got["accuracy"] == pytest.approx(accuracy_score(labels.numpy(), pred), abs=1e-12)
    got = compute_metrics("glue/mrpc", logits, labels)
    assert got["f1"] == pytest.approx(f1_score(labels.numpy(), pred), abs=1e-12)


def test_compute_metrics_regression_matches_scipy():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(80, 1, generator=g)
    labels = (scores.squeeze(1) + torch.randn(80, generator=g)).clamp(-1, 1)  # clamping makes ties
    got = compute_metrics("glue/stsb", scores, labels)
    assert got["pearson"] == pytest.approx(pearsonr(scores.squeeze(1).numpy(), labels.numpy())[0], abs=1e-6)
    assert got["spearman"] == pytest.approx(spearmanr(scores.squeeze(1).numpy(), labels.numpy())[0], abs=1e-6)


def test_compute_metrics_accepts_bf16_logits_with_grad():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0]], dtype=torch.bfloat16, requires_grad=True)
    assert compute_metrics("glue/sst2", logits, torch.tensor([0, 1])) == {"accuracy": 1.0}
    assert np.isfinite(compute_metrics("glue/stsb", logits[:, :1], torch.tensor([0.5, 1.0]))["pearson"])
