"""Are the verdict's intervals and decisions what they claim? Simulated studies with a known truth.

    python bench/calibration.py [STUDY_DIR] [--studies 1000] [--out akd-results/bench/calibration.json]

STUDY_DIR is a finished study's folder (default akd-results/quickstart: run `make quickstart` first).
From its runs' saved per-example test predictions (`tune/**/predictions.npz`) of one student, the
benchmark takes what real runs look like: how hard each test example is (p_i, the share of runs that
got it right), how far one method's per-example behaviour departs from another's (omega) and the
seed standard deviation of the confirmation runs. It then simulates two methods A and B:

    P(seed s of A gets example i right) = sigmoid(logit p_i + u_As)
    P(seed s of B gets example i right) = sigmoid(logit p_i + delta + eta_i + u_Bs)

u ~ N(0, sigma_u^2) per seed (A's and B's of one seed correlated 0.5: paired seeds), eta_i ~ N(0,
omega^2) per example, sigma_u set so the seed SD of accuracy on a fixed test set matches the real one,
and delta solved so that the population difference B - A (over the real examples and the seed
distribution) is exactly `effect` points. Each simulated study draws its own validation and test sets
(N examples each, with replacement from the real ones) and its seeds, then runs the verdict's own code:
the decision on validation (akd_ray.verdict.decide_on_validation, once at S seeds or racing over
stats.racing_looks) and the intervals it prints (stats.crossed_interval for the difference and each
method's mean; the old percentile bootstrap and seeds-only t-interval beside them for comparison).

Rows of the JSON: seeds ("3→10" for racing), effect_points, interval (which interval), coverage of the
true value, decided_rate (the share of studies the verdict called decided), seeds_spent (mean seeds per
method), power (the share decided *for the truly better method*).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy import optimize, special

from akd_ray import stats
from akd_ray.verdict import MethodResult, decide_on_validation

EFFECTS = (0.0, 0.5, 1.0, 2.0)  # points: the population difference B - A
SEEDS = (3, 5, 10)
RACE = (3, 10)  # first look, cap
RHO = 0.5  # correlation of A's and B's seed effects (same init and batch order)


# ---------------------------------------------------------------------------------------- what real runs look like
def load_runs(study_dir: Path, student: str | None) -> tuple[np.ndarray, list[str], float, str]:
    """(runs x examples) correctness of every finished run of one student, each run's method, the seed
    SD of the confirmation runs (points; 1.0 when there are none) and the student's name."""
    runs: dict[str, list[tuple[str, str, np.ndarray]]] = {}
    for path in sorted(study_dir.glob("tune/*/*/checkpoint_*/predictions.npz")):
        params = json.loads((path.parent.parent / "params.json").read_text())
        with np.load(path) as f:
            correct = f["pred"] == f["label"]
        runs.setdefault(params["student"], []).append((params["method"], params["phase"], correct))
    if not runs:
        sys.exit(f"calibration: no predictions.npz under {study_dir}/tune: run the study first "
                 f"(make quickstart, or akd-ray tune studies/quickstart.yaml) or name a finished study's folder")
    if student is None:  # the student whose runs score highest: the regime a real verdict is about
        student = max(runs, key=lambda s: np.mean([c.mean() for _, _, c in runs[s]]))
    mine = runs[student]
    by_method: dict[str, list[float]] = {}
    for method, phase, c in mine:
        if phase == "confirm":
            by_method.setdefault(method, []).append(100 * c.mean())
    sds = [np.std(v, ddof=1) for v in by_method.values() if len(v) > 1]
    # a method's label only on its confirmation runs (one config over seeds): search runs differ by config
    return np.stack([c for _, _, c in mine]).astype(float), [m if ph == "confirm" else "" for m, ph, _ in mine], \
        float(np.median(sds)) if sds else 1.0, student


def method_spread(correct: np.ndarray, methods: list[str], p: np.ndarray) -> float:
    """omega: the SD (logits) of one method's per-example advantage over another, beyond binomial noise:
    Var_i(p_iA - p_iB) minus its expected noise, mapped to logits by the slope p(1-p)."""
    groups = {m: correct[[i for i, x in enumerate(methods) if x == m]] for m in set(methods) if m}
    groups = {m: g for m, g in groups.items() if len(g) >= 2}
    if len(groups) < 2:
        return 0.3
    (a, ga), (b, gb) = sorted(groups.items())[:2]
    pa, pb = ga.mean(0), gb.mean(0)
    noise = np.mean(pa * (1 - pa) / (len(ga) - 1) + pb * (1 - pb) / (len(gb) - 1))
    true = max(np.var(pa - pb) - noise, 0.0)
    return float(min(math.sqrt(true) / max(np.mean(p * (1 - p)), 1e-3), 1.5))


class World:
    """The simulated task: the real examples' difficulty, the seed noise and method B's offset."""

    def __init__(self, correct: np.ndarray, methods: list[str], seed_sd: float, rng: np.random.Generator):
        runs, self.n = correct.shape
        p = (correct.sum(0) + 0.5) / (runs + 1)
        self.logit = np.clip(special.logit(p), -6, 6)
        self.omega = method_spread(correct, methods, p)
        self.eta = rng.normal(0, self.omega, self.n)
        slope = np.mean(p * (1 - p))
        self.sigma_u = math.sqrt(max((seed_sd / 100) ** 2 - slope / self.n, 1e-8)) / slope
        self.seed_sd = seed_sd
        # the seed distribution, for the population truth: Gauss-Hermite nodes of N(0, sigma_u^2)
        nodes, weights = np.polynomial.hermite_e.hermegauss(40)
        self._u, self._w = self.sigma_u * nodes, weights / weights.sum()

    def accuracy(self, offset: float, eta: bool) -> float:
        """Population accuracy: mean over the real examples and the seed distribution."""
        z = self.logit + offset + (self.eta if eta else 0)
        return float(self._w @ special.expit(z[None, :] + self._u[:, None]).mean(1))

    def delta(self, effect: float) -> float:
        base = self.accuracy(0.0, eta=False)
        return optimize.brentq(lambda d: self.accuracy(d, eta=True) - base - effect / 100, -5, 5, xtol=1e-7)

    def draw(self, rng, studies: int, seeds: int, delta: float) -> dict[str, np.ndarray]:
        """Correctness of A and B, (studies, seeds, N), on each study's own validation and test sets."""
        shared = rng.normal(0, 1, (studies, seeds))
        u = {who: self.sigma_u * (math.sqrt(RHO) * shared + math.sqrt(1 - RHO) * rng.normal(0, 1, (studies, seeds)))
             for who in "ab"}
        out = {}
        for split in ("val", "test"):
            idx = rng.integers(0, self.n, (studies, self.n))
            base = self.logit[idx][:, None, :]
            out[f"a_{split}"] = rng.random((studies, seeds, self.n)) < special.expit(base + u["a"][:, :, None])
            zb = base + delta + self.eta[idx][:, None, :] + u["b"][:, :, None]
            out[f"b_{split}"] = rng.random((studies, seeds, self.n)) < special.expit(zb)
        return out


# ---------------------------------------------------------------------------------------- one simulated study
def results_of(val_a: np.ndarray, val_b: np.ndarray) -> dict[str, MethodResult]:
    """The two methods as the verdict sees them: per seed, its validation score and per-example validation
    predictions ((seeds, N) correctness, as predictions of an all-ones label)."""
    out, labels = {}, np.ones(val_a.shape[1], dtype=int)
    for name, val in (("a", val_a), ("b", val_b)):
        seeds = {s: {"val_best": float(v.mean()), "test_metric": math.nan, "val_pred": v, "val_label": labels}
                 for s, v in enumerate(val.astype(int))}
        out[name] = MethodResult(name, {}, [0.0] * len(val), True, 1, 0, 0, float(val.mean()), seeds=seeds)
    return out


def one_study(sim: dict[str, np.ndarray], k: int, looks: list[int], old: bool) -> dict:
    """The verdict on study k: decided or not (and for which method), the seeds it spent and whether
    each printed interval covers the truth (filled in by the caller)."""
    alpha = (1 - stats.LEVEL) / len(looks)
    for n in looks:
        top, tied, _ = decide_on_validation(results_of(sim["a_val"][k, :n], sim["b_val"][k, :n]), alpha, "accuracy")
        if len(tied) == 1:
            break
    labels = np.ones(sim["a_test"].shape[2], dtype=int)  # correctness as predictions of an all-ones label
    a, b = sim["a_test"][k, :n].astype(int), sim["b_test"][k, :n].astype(int)
    out = {"decided": len(tied) == 1, "top": top, "seeds": n,
           "diff": stats.crossed_interval(b, labels, "accuracy", a),
           "mean_a": stats.crossed_interval(a, labels, "accuracy")}
    if old:
        out["old_diff"] = stats.paired_bootstrap(b, a, labels, "accuracy", resamples=400, rng=k)
        out["old_mean_a"] = stats.mean_interval(a.mean(1))
    return out


def cell(world: World, rng, studies: int, seeds: str | int, effect: float, old: bool) -> list[dict]:
    looks = stats.racing_looks(*RACE) if seeds == "race" else [seeds]
    delta = world.delta(effect)
    true_diff, true_a = effect / 100, world.accuracy(0.0, eta=False)
    got = []
    for start in range(0, studies, 200):
        sim = world.draw(rng, min(200, studies - start), looks[-1], delta)
        got += [one_study(sim, k, looks, old) for k in range(sim["a_test"].shape[0])]
    label = f"{RACE[0]}→{RACE[1]}" if seeds == "race" else seeds
    decided = np.array([g["decided"] for g in got])
    right = np.array([g["decided"] and g["top"] == "b" for g in got])
    spent = float(np.mean([g["seeds"] for g in got]))

    def row(interval, key, truth):
        cover = np.mean([g[key][1] <= truth <= g[key][2] for g in got])
        return {"seeds": label, "effect_points": effect, "interval": interval, "coverage": round(float(cover), 4),
                "decided_rate": round(float(decided.mean()), 4), "power": round(float(right.mean()), 4),
                "seeds_spent": round(spent, 2), "studies": len(got)}

    rows = [row("difference on test: " + stats.CROSSED, "diff", true_diff),
            row("method mean on test: " + stats.CROSSED, "mean_a", true_a)]
    if old:
        rows += [row("difference on test: percentile paired bootstrap (before #22)", "old_diff", true_diff),
                 row("method mean on test: t over seeds only (before #22)", "old_mean_a", true_a)]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study_dir", nargs="?", default="akd-results/quickstart", type=Path)
    ap.add_argument("--student", default=None, help="whose runs to learn from (default: the best-scoring student)")
    ap.add_argument("--studies", type=int, default=1000, help="simulated studies per cell")
    ap.add_argument("--seed-sd", type=float, nargs="*", default=None,
                    help="seed SDs (points) to simulate; default: the study's own and 2.0 (seed noise dominating)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("akd-results/bench/calibration.json"))
    args = ap.parse_args()
    if not args.study_dir.is_dir():
        sys.exit(f"calibration: {args.study_dir} is not a study folder: run `make quickstart` first, or name a "
                 f"finished study's folder (<storage>/<name>)")
    t0 = time.perf_counter()
    correct, methods, seed_sd, student = load_runs(args.study_dir, args.student)
    rng = np.random.default_rng(args.seed)
    rows = []
    for sd in args.seed_sd or [round(seed_sd, 2), 2.0]:
        world = World(correct, methods, sd, rng)
        print(f"learnt from {len(correct)} runs of {student} on {world.n} test examples (their seed SD "
              f"{seed_sd:.2f} points); simulating seed SD {sd:.2f} points: omega {world.omega:.2f} logits, "
              f"sigma_u {world.sigma_u:.3f} logits", flush=True)
        for seeds in (*SEEDS, "race"):
            for effect in EFFECTS:
                got = cell(world, rng, args.studies, seeds, effect, old=effect == 0 and seeds != "race")
                rows += [{**r, "seed_sd_points": sd} for r in got]
                for r in got:
                    print(f"S={r['seeds']:>5} effect {effect:3.1f}: cover {r['coverage']:.3f} decided "
                          f"{r['decided_rate']:.3f} power {r['power']:.3f} seeds {r['seeds_spent']:.1f}  "
                          f"{r['interval']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    source = {"study": str(args.study_dir), "student": student, "runs": len(correct), "test_examples": world.n,
              "runs_seed_sd_points": round(seed_sd, 3), "omega_logits": round(world.omega, 3)}
    args.out.write_text(json.dumps([{**r, "source": source} for r in rows], indent=1))
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
