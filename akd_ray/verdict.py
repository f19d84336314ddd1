"""The verdict per teacher-student pair: which method and config to use, chosen on validation, with the
test split only reported.

Input: the study's trial rows (akd_ray.study.trial_rows) and the teachers' assessment. Per method the
config is its best search trial by validation; the confirmation runs re-run it over fresh seeds. The
recommended method has the best validation mean over those seeds, unless the other methods cannot be
told from it on validation (paired t-test by seed, Holm-corrected over the best-vs-each comparisons):
then the cheapest of the tied ones (scratch, then KD, then the others) is recommended and the verdict
says no method is clearly better. On test, the recommended method is compared with each other one by a
paired bootstrap over seeds and test examples (each run's per-example predictions), Holm-corrected;
runs without predictions fall back to the paired t-interval over seeds. Each method keeps its own
t-interval of the test mean. Failed seeds, methods with no finished run, a teacher no better than the
scratch student and (in a family study) the one student size compared are named in the text.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from akd_ray import stats
from akd_ray.config import KNOBS, RECIPE_KNOBS, Study, base_method, levers

MIN_SEEDS = 3  # below this a 95% interval is too wide to say anything (t = 4.3 at n = 3)
NAMES = {"scratch": "scratch", "kd": "KD", "takd": "TAKD", "annealing": "Annealing-KD", "prokd": "Pro-KD",
         "layers": "layer matching", "minimax": "MiniMax augmentation", "kd+layers": "KD + layers",
         "kd+minimax": "KD + MiniMax", "annealing+layers": "Annealing-KD + layers",
         "annealing+minimax": "Annealing-KD + MiniMax"}
# what a tie on validation recommends: the cheapest to run (a lever's live teacher and extra passes cost
# more than a cached table: bench/levers.py)
CHEAPEST_FIRST = ("scratch", "kd", "annealing", "takd", "prokd", "layers", "kd+layers", "annealing+layers",
                  "minimax", "kd+minimax", "annealing+minimax")
STUDENT = "student."
SELECTION = "t-test on validation by seed and validation example (stats.crossed_interval)"
TEST = "seeds × test-examples t-interval (stats.crossed_interval)"


@dataclass
class MethodResult:
    """One method of one pair: its best searched config and that config over the confirmation seeds."""
    method: str
    config: dict[str, Any]
    values: list[float]  # test metric per finished confirmation seed (the search's best trial if none ran)
    confirmed: bool  # some confirmation seed finished
    trials: int  # search trials
    stopped: int
    failed: int  # search and confirmation trials that raised
    val: float  # validation mean over the finished confirmation seeds, else the search's best
    budget: int = 0  # search.trials for this method
    seeds: dict[int, dict] = field(default_factory=dict)  # finished confirmation rows by seed
    run: int = 0  # confirmation seeds run, finished or not
    failed_seeds: list[int] = field(default_factory=list)  # confirmation seeds that ran and did not finish
    mean: float = field(init=False)
    std: float = field(init=False)
    low: float = field(init=False)
    high: float = field(init=False)

    def __post_init__(self) -> None:
        self.mean, self.std, self.low, self.high = stats.mean_interval(self.values)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def finished(self) -> int:
        return len(self.seeds)


@dataclass
class Verdict:
    teacher: str
    student: str
    methods: dict[str, MethodResult]
    best: str | None  # the recommended method (chosen on validation)
    decided: bool  # it is ahead of every other method on validation beyond noise, and nothing is missing
    text: str
    differences: dict[str, tuple[float, float, float]]  # on test: other -> (best - other, low, high)
    student_parameters: int | None
    comparisons: dict[str, stats.Difference] = field(default_factory=dict)  # on test, Holm-adjusted p
    levels: dict[str, float] = field(default_factory=dict)  # each test interval's confidence level (Holm)
    tied: list[str] = field(default_factory=list)  # methods that cannot be told from the best on validation
    size: dict[str, Any] = field(default_factory=dict)  # a family study: the student size every method ran at
    tau: dict[float, list[float]] = field(default_factory=dict)  # an Annealing-family pick: tau_max -> val by seed
    tau_same: list[float] = field(default_factory=list)  # the tau_max values that cannot be told from the pick's
    seeds_text: str = ""  # each method's seeds, why confirmation stopped, the seeds that would tell
    stop: str = ""  # why confirmation stopped: "decided" / "cap" (search.confirm_seeds_max reached) / ""
    seeds_needed: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    # other -> seeds for 80% power at (the observed validation difference, 1 point), from the paired spread


# ---------------------------------------------------------------------------------------- one method
def _size(row: dict) -> dict[str, Any]:
    return {k: v for k, v in row["params"].items() if k.startswith(STUDENT)}


def _key(params: dict) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def method_result(study: Study, rows: list[dict], method: str, size: dict | None = None) -> MethodResult:
    """`rows`: one pair's. `size`: a family study's student size (its `student.<field>` params): only the
    search trials and confirmation runs at that size are the method's pick."""
    mine = [r for r in rows if r["method"] == method]
    search = [r for r in mine if r["phase"] == "search"]
    done = [r for r in search if r.get("finished") and (size is None or _size(r) == size)]
    best = max(done, key=lambda r: r["val_best"]) if done else None
    confirm = [r for r in mine if r["phase"] == "confirm" and (size is None or _size(r) == size)]
    groups: dict[str, list[dict]] = {}
    for r in confirm:
        groups.setdefault(_key(r["params"]), []).append(r)
    if len(groups) > 1:  # e.g. a family's within-X pick at this size beside the method's own best config
        pick = _key(best["params"]) if best and _key(best["params"]) in groups else max(
            groups, key=lambda k: (sum(bool(r.get("finished")) for r in groups[k]),
                                   np.mean([r["val_best"] for r in groups[k] if r.get("finished")] or [-1])))
        confirm = groups[pick]
    finished = {r["seed"]: r for r in confirm if r.get("finished")}
    failed_seeds = sorted(r["seed"] for r in confirm if not r.get("finished"))
    params = next(iter(confirm), best or {"params": {}})["params"]
    if confirm:
        values, val = [r["test_metric"] for r in finished.values()], _mean([r["val_best"] for r in finished.values()])
    else:
        values, val = ([best["test_metric"]] if best else []), (best["val_best"] if best else math.nan)
    return MethodResult(method, recipe(study, method, params), values, bool(finished), trials=len(search),
                        stopped=sum(bool(r.get("stopped")) for r in search),
                        failed=sum(bool(r.get("error")) for r in mine), val=val,
                        budget=study.search.trials.get(method, 0), seeds=finished, run=len(confirm),
                        failed_seeds=failed_seeds)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def recipe(study: Study, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """The method's full config: its knobs (searched values, else the study's defaults), then anything
    else the search set."""
    train = study.train.model_dump()
    out = {k: params.get(k, train[k]) for k in (*KNOBS[method], "lr")}
    if out.get("schedule", "exp") != "exp":
        out.pop("decay", None)
    return {**out, **{k: v for k, v in params.items() if k not in out and k != "decay"}}


# ---------------------------------------------------------------------------------------- comparisons
def compare_on_validation(results: dict[str, MethodResult], best: str, metric: str | None = None
                          ) -> dict[str, stats.Difference]:
    """best - other of the validation metric on their common seeds, Holm-adjusted p-values: the seeds ×
    validation-examples t (stats.crossed_interval, so the finite validation set counts as noise too)
    where both saved their validation predictions and `metric` is given, else the paired t over seeds."""
    out = {}
    for m, r in results.items():
        if m == best:
            continue
        common = sorted(set(results[best].seeds) & set(r.seeds))
        preds = (_predictions(results[best], r, common, "val_") if metric in stats.BOOTSTRAP_METRICS else None)
        out[m] = (stats.crossed_interval(preds[0], preds[2], metric, preds[1], rng=0) if preds is not None
                  else stats.paired_interval(*_paired(results[best], r, "val_best")))
    return _holm(out)


def decide_on_validation(results: dict[str, MethodResult], alpha: float = 1 - stats.LEVEL, metric: str | None = None
                         ) -> tuple[str, list[str], dict[str, stats.Difference]]:
    """The leader on validation and the methods that cannot be told from it, on the seeds every method
    finished (so a method that fails on hard seeds is not lifted by dropping them; see `on_common_seeds`).

    The leader has the best validation mean; `tied` is it and every method whose paired t-test against
    it (Holm-adjusted) is not significant at `alpha` -- only a method significantly *worse* than the
    leader is out, never one that is better. Returns (leader, tied, the validation comparisons).
    """
    common = on_common_seeds(results)
    top = max(common, key=lambda m: common[m].val)
    on_val = compare_on_validation(common, top, metric)
    tied = [top] + [m for m, d in on_val.items() if d.pvalue > alpha]
    return top, tied, on_val


def on_common_seeds(results: dict[str, MethodResult]) -> dict[str, MethodResult]:
    """Each method restricted to the confirmation seeds every method finished (its validation mean
    recomputed on them), when at least 2 are common; else the results as they are."""
    common = set.intersection(*(set(r.seeds) for r in results.values())) if results else set()
    if len(common) < 2 or all(set(r.seeds) == common for r in results.values()):
        return results
    out = {}
    for m, r in results.items():
        seeds = {s: r.seeds[s] for s in sorted(common)}
        out[m] = MethodResult(r.method, r.config, [row["test_metric"] for row in seeds.values()], r.confirmed,
                              r.trials, r.stopped, r.failed, _mean([row["val_best"] for row in seeds.values()]),
                              r.budget, seeds, r.run)
    return out


def compare_on_test(study: Study, results: dict[str, MethodResult], best: str
                    ) -> tuple[dict[str, stats.Difference], dict[str, float]]:
    """best - other of the test metric on their common seeds: the seeds × test-examples t-interval
    (stats.crossed_interval: seed noise and the finite test set, t at Satterthwaite's df) where both
    methods saved every common seed's predictions, else the paired t-interval over seeds; Holm-adjusted
    p-values, each interval at its Holm level, clipped to the metric's range. Returns the differences
    and their confidence levels."""
    metric = _metric_name(study)
    raw, preds = {}, {}
    for m, r in results.items():
        if m == best:
            continue
        common = sorted(set(results[best].seeds) & set(r.seeds))
        preds[m] = _predictions(results[best], r, common) if metric in stats.BOOTSTRAP_METRICS else None
        raw[m] = _test_difference(results[best], r, preds[m], metric, stats.LEVEL, study.seed)
    adjusted = _holm(raw)
    levels = {m: 1 - a for m, a in zip(raw, stats.holm([d.pvalue for d in raw.values()]).alpha)}
    out = {m: _test_difference(results[best], results[m], preds[m], metric, levels[m], study.seed
                               )._replace(pvalue=d.pvalue) for m, d in adjusted.items()}
    return out, levels


def _test_difference(a: MethodResult, b: MethodResult, preds: tuple | None, metric: str, level: float,
                     seed: int) -> stats.Difference:
    if preds is None:
        d = stats.paired_interval(*_paired(a, b, "test_metric"), level)
        return d._replace(**dict(zip(("low", "high"), stats.bounded(d.low, d.high, metric, difference=True))))
    pred_a, pred_b, labels = preds
    return stats.crossed_interval(pred_a, labels, metric, pred_b, level, rng=seed)


def method_interval(study: Study, r: MethodResult) -> tuple[float, float]:
    """A method's 95% interval of its test metric: seeds × test examples (stats.crossed_interval) where
    every finished seed saved its predictions, else Student's t over seeds; within the metric's range."""
    metric = _metric_name(study)
    seeds = sorted(r.seeds)
    preds = _predictions(r, r, seeds) if metric in stats.BOOTSTRAP_METRICS else None
    if preds is not None:
        d = stats.crossed_interval(preds[0], preds[2], metric, rng=study.seed)
        return d.low, d.high
    return stats.bounded(r.low, r.high, metric)


def _holm(diffs: dict[str, stats.Difference]) -> dict[str, stats.Difference]:
    if not diffs:
        return {}
    h = stats.holm([d.pvalue for d in diffs.values()])
    return {m: d._replace(pvalue=float(p)) for (m, d), p in zip(diffs.items(), h.adjusted)}


def _paired(a: MethodResult, b: MethodResult, key: str) -> tuple[list[float], list[float]]:
    common = sorted(set(a.seeds) & set(b.seeds))
    return [a.seeds[s][key] for s in common], [b.seeds[s][key] for s in common]


def _predictions(a: MethodResult, b: MethodResult, seeds: list[int], split: str = "") -> tuple | None:
    """(pred_a, pred_b, labels) of the common seeds on test (`split` "") or validation ("val_"), or None
    when any run lacks them or the runs disagree on the split. A row may carry them itself
    (`<split>pred`, `<split>label` arrays) or name its predictions file."""
    if len(seeds) < 2:
        return None
    preds, labels = {"a": [], "b": []}, None
    for who, r in (("a", a), ("b", b)):
        for s in seeds:
            row = r.seeds[s]
            if f"{split}pred" in row:
                pred, label = row[f"{split}pred"], row[f"{split}label"]
            else:
                path = row.get("predictions")
                if not path or not Path(path).exists():
                    return None
                with np.load(path) as f:
                    if f"{split}pred" not in f:
                        return None
                    pred, label = f[f"{split}pred"], f[f"{split}label"]
            if labels is None:
                labels = label
            elif label.shape != labels.shape or not np.array_equal(label, labels):
                return None
            preds[who].append(pred)
    return np.stack(preds["a"]), np.stack(preds["b"]), labels


def _metric_name(study: Study) -> str:
    from akd_ray.tasks.metrics import primary_metric

    return primary_metric(study.task.name)


# ---------------------------------------------------------------------------------------- one pair
def family_size(rows: list[dict]) -> dict[str, Any]:
    """A family pair's student size: that of its best finished search trial (by validation) -- the size
    every method's confirmation runs at."""
    done = [r for r in rows if r["phase"] == "search" and r.get("finished")]
    return _size(max(done, key=lambda r: r["val_best"])) if done else {}


def judge(study: Study, teacher: str, student: str, rows: list[dict],
          quality: dict[str, dict] | None = None) -> Verdict:
    mine = [r for r in rows if (r["teacher"], r["student"]) == (teacher, student)]
    size = family_size(mine) if study.family is not None else {}
    results = {m: method_result(study, mine, m, size or None) for m in study.search.methods}
    at_size = [r for r in mine if not size or _size(r) == size]
    params = next((r["student_parameters"] for r in at_size if r.get("student_parameters")), None)
    verdict = Verdict(teacher, student, results, None, False, "", {}, params, size=size)
    ran = {m: r for m, r in results.items() if r.n}
    if not ran:
        failed, stopped = sum(r.failed for r in results.values()), sum(r.stopped for r in results.values())
        verdict.text = f"no trial finished for this pair ({failed} failed, {stopped} stopped early): no verdict"
        return verdict
    confirmed = {m: r for m, r in ran.items() if r.confirmed}
    if not confirmed:  # nothing re-run over seeds: the search's own pick, by validation (never test)
        verdict.best = max(ran, key=lambda m: ran[m].val)
        verdict.text = (f"{describe(verdict.best, ran[verdict.best].config)} has the best validation score, not "
                        f"confirmed over seeds (search.confirm_seeds: {study.search.confirm_seeds}): cannot tell")
        return _notes(study, verdict, quality, lead=False)
    for r in confirmed.values():
        r.low, r.high = method_interval(study, r)
    looks = planned_looks(study)
    alpha = (1 - stats.LEVEL) / len(looks)  # Bonferroni over the planned looks (racing)
    top, verdict.tied, on_val = decide_on_validation(confirmed, alpha, _metric_name(study))
    common = on_common_seeds(confirmed)
    fewest = min(r.finished for r in common.values())
    best = top if fewest < MIN_SEEDS else min(verdict.tied, key=CHEAPEST_FIRST.index)
    verdict.best = best
    verdict.comparisons, verdict.levels = compare_on_test(study, common, best)
    verdict.differences = {m: (d.estimate, d.low, d.high) for m, d in verdict.comparisons.items()}
    missing = [m for m in results if m not in confirmed]
    head = describe(best, confirmed[best].config)
    if fewest < MIN_SEEDS:
        text = (f"{head} has the best validation mean, but too few seeds to tell (n = {fewest}; the verdict needs "
                f"search.confirm_seeds >= {MIN_SEEDS})")
    elif len(verdict.tied) == 1:
        verdict.decided = not missing
        text = (f"{head} is best on validation, ahead of every other method" if best != "scratch" or missing
                else "scratch is best on validation: distillation does not help this pair")
    else:
        others = ", ".join(NAMES[m] for m in verdict.tied if m != best)
        text = (f"no method is clearly better on validation: {NAMES[best]} cannot be told from {others}; "
                f"{NAMES[best]}, the cheapest of them, is recommended")
        if best == "scratch" and not missing:
            text += ": distillation does not clearly help this pair"
        verdict.seeds_needed = seeds_needed(common, top, [m for m in verdict.tied if m != top], alpha, on_val)
    if fewest >= MIN_SEEDS:
        verdict.stop = "decided" if len(verdict.tied) == 1 else "cap" if fewest >= looks[-1] else ""
    verdict.text = text + _test_line(verdict)
    verdict.seeds_text = _seeds_line(study, verdict)
    verdict.tau, verdict.tau_same = tau_range(mine, confirmed[best], alpha)
    if len(verdict.tau) > 1:
        verdict.seeds_text += "; " + _tau_text(confirmed[best].config["tau_max"], verdict.tau_same, verdict.tau)
    return _notes(study, verdict, quality, lead=True)


TAU_PHASE = "tau"  # the rows of an Annealing-family pick's neighbouring tau_max values, on its seeds


def tau_range(rows: list[dict], pick: MethodResult, alpha: float) -> tuple[dict[float, list[float]], list[float]]:
    """An Annealing-family pick's tau_max against its neighbours, run on the pick's seeds (phase "tau"):
    per tau_max the validation metric by seed, and the tau_max values whose paired t-test against the
    pick's (on their common seeds, Holm over the neighbours) is not significant at `alpha`: the values a
    reader cannot tell apart from the pick on validation. Empty without such rows."""
    tau = pick.config.get("tau_max")
    mine = [r for r in rows if r["phase"] == TAU_PHASE and r["method"] == pick.method and r.get("finished")]
    if tau is None or not mine:
        return {}, []
    by_tau: dict[float, dict[int, float]] = {tau: {s: r["val_best"] for s, r in pick.seeds.items()}}
    for r in mine:
        by_tau.setdefault(r["params"]["tau_max"], {})[r["seed"]] = r["val_best"]
    others = [t for t in by_tau if t != tau]
    tests = []
    for t in others:
        common = sorted(set(by_tau[tau]) & set(by_tau[t]))
        tests.append(stats.paired_interval([by_tau[tau][s] for s in common], [by_tau[t][s] for s in common]))
    worse = stats.holm([d.pvalue for d in tests], alpha).reject if tests else []
    same = sorted([tau] + [t for t, w in zip(others, worse) if not w])
    return {t: list(v.values()) for t, v in sorted(by_tau.items())}, same


def _tau_text(tau: float, same: list[float], curve: dict[float, list[float]]) -> str:
    tried = ", ".join(f"{t:g}" for t in curve)
    if len(same) == 1:
        return f"τ_max {tau:g} (ahead of its neighbours on validation; tried {tried})"
    return f"τ_max {tau:g} ({min(same):g}–{max(same):g} cannot be told apart on validation; tried {tried})"


def planned_looks(study: Study) -> list[int]:
    """The seed counts the confirmation looks at (stats.racing_looks from search.confirm_seeds up to
    search.confirm_seeds_max); one look when confirm_seeds is below MIN_SEEDS (too few to race from)."""
    first = study.search.confirm_seeds
    return [first] if first < MIN_SEEDS else stats.racing_looks(first, study.search.confirm_seeds_max)


def racing_points(study: Study, verdicts: list[Verdict]) -> list[dict]:
    """The next racing round: for each pair whose pick is not decided on validation (and has every
    method confirmed), more seeds for the leader and every method tied with it, up to the next planned
    look. Their configs are the ones already confirmed. Empty: every pair is decided or at the cap."""
    looks = planned_looks(study)
    points = []
    for v in verdicts:
        confirmed = {m: r for m, r in v.methods.items() if r.confirmed}
        if v.decided or len(v.tied) < 2 or len(confirmed) < len(v.methods):
            continue
        have = min(confirmed[m].run for m in v.tied)
        nxt = next((n for n in looks if n > have), None)
        if nxt is None:
            continue
        for m in v.tied:
            r = confirmed[m]
            params = next(iter(r.seeds.values()))["params"]
            done = set(r.seeds) | set(r.failed_seeds)
            for s in range(1, nxt + 1):
                if study.seed + s not in done:
                    points.append({"teacher": v.teacher, "student": v.student, "method": m, "phase": "confirm",
                                   "seed": study.seed + s, **params})
    return points


def seeds_needed(results: dict[str, MethodResult], top: str, others: list[str], alpha: float,
                 on_val: dict[str, stats.Difference] | None = None) -> dict[str, tuple[int | None, int | None]]:
    """Per method tied with the leader: the seeds a paired t-test on validation at `alpha` needs for 80%
    power (stats.seeds_for_power, the observed paired spread taken as the truth), to tell the observed
    difference apart and to tell a 1-point difference apart. Where the decision counted the validation
    set's own noise (`on_val`: crossed_interval's example term), that part does not shrink with seeds and
    bounds the power: None then means no number of seeds would tell (a larger validation set would)."""
    out = {}
    for m in others:
        a, b = _paired(results[top], results[m], "val_best")
        d = np.subtract(a, b)
        floor = on_val[m].floor if on_val and m in on_val else 0.0
        out[m] = tuple(stats.seeds_for_power(d, effect=e, alpha=alpha, floor=floor).seeds_needed for e in (None, 0.01))
    return out


def _seeds_line(study: Study, v: Verdict) -> str:
    """Each method's seeds, why confirmation stopped and, when undecided, the seeds that would tell."""
    seeds = ", ".join(f"{NAMES[m]} {r.finished}" for m, r in v.methods.items() if r.run)
    why = {"decided": "stopped: decided",
           "cap": f"stopped: search.confirm_seeds_max = {study.search.confirm_seeds_max} reached, undecided"}.get(
        v.stop, "")
    text = f"confirmation seeds: {seeds}{' (' + why + ')' if why else ''}"
    parts = []
    for m, (observed, one) in v.seeds_needed.items():
        if observed == 0 and one == 0:
            parts.append(f"{NAMES[m]}: no number of seeds would tell the observed difference or a 1-point one apart "
                         f"(80% power): the validation set's own noise hides them; a larger validation set would tell")
            continue
        o, p = _seeds_text(observed), _seeds_text(one)
        parts.append(f"{NAMES[m]}: {o} would tell the observed difference apart, {p} a 1-point one (80% power)")
    if parts:
        text += "; " + "; ".join(parts)
    return text


def _seeds_text(n: int | None) -> str:
    return (f"{n} seeds" if n else "more than 1,000 seeds" if n is None else
            "no number of seeds (the validation set's noise hides it)")


def _test_line(v: Verdict) -> str:
    parts = []
    for m in sorted(v.comparisons, key=lambda m: (m != "kd", m != "scratch")):  # KD first: the baseline to beat
        d = v.comparisons[m]
        ci = f"{100 * v.levels[m]:.3g}% CI {_pts(d.low)}…{_pts(d.high)}"
        parts.append(f"{_pts(d.estimate)} points over {NAMES[m]} ({ci})" if d.low > 0 else
                     f"{_pts(d.estimate)} points below {NAMES[m]} ({ci})" if d.high < 0 else
                     f"within noise of {NAMES[m]} ({_pts(d.estimate)}, {ci})")
    return f"; on test: {'; '.join(parts)}" if parts else " (the only method run)"


def _notes(study: Study, v: Verdict, quality: dict[str, dict] | None, lead: bool) -> Verdict:
    """What a reader must know beside the pick: the size compared, missing or failed runs, unequal
    budgets and a teacher no better than the student alone."""
    notes = [v.seeds_text] if v.seeds_text else []
    recipe_line = _recipe_line(v) if lead else ""
    if recipe_line:
        notes.append(recipe_line)
    if v.size:
        notes.append(f"all methods at {_size_text(v.size)}" + (f" ({v.student_parameters:,} parameters)"
                                                               if v.student_parameters else ""))
    for m, r in v.methods.items():
        if lead and r.run and not r.confirmed:
            notes.append(f"{NAMES[m]} has no finished confirmation run ({r.run} run, none finished): "
                         "it is missing from the comparison")
        elif not r.n:
            notes.append(f"{NAMES[m]} has no finished run ({r.failed} failed, {r.stopped} stopped early): "
                         "it is missing from the comparison")
    if any(not r.confirmed for r in v.methods.values()) and lead and v.best:
        notes.append("whether distillation helps cannot be said until every method has a finished run")
    for m, r in v.methods.items():
        if r.failed_seeds and r.confirmed:
            notes.append(f"{NAMES[m]} failed on seed{'s' if len(r.failed_seeds) > 1 else ''} "
                         f"{', '.join(map(str, r.failed_seeds))} ({len(r.failed_seeds)} of {r.run}; methods are "
                         f"compared on the seeds all finished)")
    unequal = study.unequal_budgets()
    if unequal:
        notes.append(unequal)
    q, scratch = (quality or {}).get(v.teacher), v.methods.get("scratch")
    if q is not None and scratch is not None and scratch.n and q["val"] <= scratch.val:
        notes.append(f"the teacher's validation {q.get('metric', 'metric')} ({100 * q['val']:.2f}) is not above the "
                     f"scratch student's ({100 * scratch.val:.2f}): distillation from it is not expected to help")
    if notes:
        v.text += " — " + "; ".join(notes)
    return v


def _recipe_line(v: Verdict) -> str:
    """Which training recipe the methods trained with: one shared (search.shared: tuned on scratch's
    budget) or each its own, with the values, so a lead is never a tuning artefact unawares."""
    ran = {m: r for m, r in v.methods.items() if r.n}
    knobs = [k for k in RECIPE_KNOBS if any(k in r.config for r in ran.values())]
    if len(ran) < 2 or not knobs:
        return ""
    values = {k: {m: r.config.get(k) for m, r in ran.items()} for k in knobs}
    if all(len(set(map(str, vals.values()))) == 1 for vals in values.values()):
        return "one training recipe for every method (" + ", ".join(
            f"{k} {_value(next(iter(vals.values())))}" for k, vals in values.items()) + ")"
    return "each method tuned its own training recipe (" + "; ".join(
        f"{k}: " + ", ".join(f"{NAMES[m]} {_value(x)}" for m, x in vals.items()) for k, vals in values.items()) + ")"


def _value(x: Any) -> str:
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def _size_text(size: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in size.items())


def describe(method: str, config: dict[str, Any]) -> str:
    """'Annealing-KD tau_max 4, cosine' / 'KD alpha 0.5, T 4' / 'scratch'; a family's student size
    after it: 'KD alpha 0.5, T 4 (student.hidden 16)'."""
    size = _size_text({k: v for k, v in config.items() if k.startswith(STUDENT)})
    text = _describe(method, config)
    return f"{text} ({size})" if size else text


def _describe(method: str, config: dict[str, Any]) -> str:
    base, bits = base_method(method), []
    if base in ("annealing", "prokd"):
        bits = ([f"tau_max {config['tau_max']:g}"] if "tau_max" in config else []) + [str(config["schedule"])]
    elif base in ("kd", "takd"):
        bits = [f"alpha {config['alpha']:.2g}, T {config['kd_temperature']:.2g}"]
    if "layers" in levers(method):
        bits.append(f"beta {config['beta']:.2g}, {config['layer_map']} layers")
    if "minimax" in levers(method):
        bits.append(f"eps {config['minimax_eps']:.2g}, {config['minimax_steps']} steps")
    return f"{NAMES[method]} {', '.join(bits)}" if bits else NAMES[method]


def _pts(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:+.1f}"


def verdicts(study: Study, rows: list[dict], quality: dict[str, dict] | None = None) -> list[Verdict]:
    return [judge(study, t, s, rows, quality) for t, s in study.pairs]
