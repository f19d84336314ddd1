"""The capacity-gap answers of a study with a student family (see config.FamilySpec), per teacher:

1. the Pareto front of the search: validation metric (max) vs student cost (min) -- a trial is on it
   when no other trial of the teacher is at least as good on both and better on one;
2. the smallest student within X points of the teacher (X in `family.within`): chosen on validation
   among the search's finished trials, then re-run over the confirmation seeds; its test metric's
   95% t-interval against the teacher's test metric minus X says yes / no / cannot tell;
3. the best tau_max as a function of student size: per size the tau_max of the best Annealing-KD
   trial, a least-squares line in log10(parameters) with the 95% t-interval of its slope (the points
   are the search's own, few per size: the interval is what to read, not the line);
4. which knobs matter: Optuna's fANOVA importances (`FanovaImportanceEvaluator`, a random forest from
   scikit-learn) of the validation metric per (teacher, family, method) group.

Pure functions of the trial rows (akd_ray.study.trial_rows) and the teachers' assessment; no Ray.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy import stats  # the t quantile of the trend plot's band

from akd_ray.config import Study
from akd_ray.stats import LEVEL, bounded, mean_interval, slope_interval
from akd_ray.verdict import NAMES, _metric_name

COST = "student_cost"  # a family trial's second objective (study.fit): parameters, or latency in ms
MIN_SEEDS = 3
MIN_TRIALS_FOR_IMPORTANCE = 4  # fANOVA's forest on fewer points says nothing
MARKERS = {"scratch": "s", "kd": "^", "takd": "v", "annealing": "o", "prokd": "D", "layers": "P", "minimax": "X",
           "kd+layers": "<", "kd+minimax": ">", "annealing+layers": "p", "annealing+minimax": "h"}


def _search(rows: list[dict], teacher: str, method: str | None = None) -> list[dict]:
    return [r for r in rows if r["phase"] == "search" and r["teacher"] == teacher and r.get("finished")
            and r.get(COST) is not None and (method is None or r["method"] == method)]


# ---------------------------------------------------------------------------------------- the front
def pareto_front(rows: list[dict]) -> list[dict]:
    """The rows no other row dominates on (val_best: max, cost: min), by increasing cost."""
    def dominates(a: dict, b: dict) -> bool:
        return (a["val_best"] >= b["val_best"] and a[COST] <= b[COST]
                and (a["val_best"] > b["val_best"] or a[COST] < b[COST]))

    front = [r for r in rows if not any(dominates(o, r) for o in rows if o is not r)]
    return sorted(front, key=lambda r: (r[COST], -r["val_best"]))


def smallest_within(rows: list[dict], teacher: str, teacher_val: float, points: float) -> dict | None:
    """The cheapest finished search trial of `teacher` whose validation metric is at most `points`
    (percentage points) below the teacher's; the better one on a tie. None when no trial is that close."""
    close = [r for r in _search(rows, teacher) if r["val_best"] >= teacher_val - points / 100]
    return min(close, key=lambda r: (r[COST], -r["val_best"])) if close else None


@dataclass
class WithinPick:
    teacher: str
    points: float
    trial: dict | None  # the search trial chosen on validation
    values: list[float]  # its config's test metric over the confirmation seeds
    teacher_test: float
    mean: float = math.nan
    low: float = math.nan
    high: float = math.nan
    text: str = ""


def within_picks(study: Study, rows: list[dict], quality: dict[str, dict]) -> list[WithinPick]:
    out = []
    for teacher, _ in study.pairs:
        q = quality.get(teacher)
        for x in study.family.within:
            if q is None:
                out.append(WithinPick(teacher, x, None, [], math.nan, text="no teacher assessment: cannot pick"))
                continue
            trial = smallest_within(rows, teacher, q["val"], x)
            pick = WithinPick(teacher, x, trial, [], q["test"])
            if trial is None:
                pick.text = f"no searched student came within {x:g} points of the teacher on validation"
                out.append(pick)
                continue
            pick.values = [r["test_metric"] for r in rows if r["phase"] == "confirm" and r.get("finished")
                           and r["teacher"] == teacher and r["method"] == trial["method"]
                           and r["params"] == trial["params"]]
            pick.mean, _, pick.low, pick.high = mean_interval(pick.values)
            pick.low, pick.high = bounded(pick.low, pick.high, _metric_name(study))  # never past 100
            bar = q["test"] - x / 100
            if not pick.values:
                pick.text = "not confirmed over seeds (search.confirm_seeds: 0): cannot tell"
            elif len(pick.values) < MIN_SEEDS:
                pick.text = f"too few seeds to tell (n = {len(pick.values)}; needs {MIN_SEEDS})"
            elif pick.low >= bar:
                pick.text = f"within {x:g} points of the teacher on test (95% CI above teacher − {x:g})"
            elif pick.high < bar:
                pick.text = f"not within {x:g} points on test (95% CI below teacher − {x:g})"
            else:
                pick.text = f"cannot tell: the 95% CI holds teacher − {x:g} points"
            out.append(pick)
    return out


# ---------------------------------------------------------------------------------------- tau_max vs size
@dataclass
class TauTrend:
    teacher: str
    points: list[tuple[int, float]]  # (parameters, best tau_max at that size)
    slope: float = math.nan  # tau_max per decade of parameters
    low: float = math.nan
    high: float = math.nan
    intercept: float = math.nan
    text: str = ""


def tau_trend(study: Study, rows: list[dict], teacher: str, method: str = "annealing") -> TauTrend:
    by_size: dict[int, dict] = {}
    for r in _search(rows, teacher, method):
        size = r.get("student_parameters")
        if size and (size not in by_size or r["val_best"] > by_size[size]["val_best"]):
            by_size[size] = r
    points = sorted((size, float(r["params"].get("tau_max", study.train.tau_max))) for size, r in by_size.items())
    trend = TauTrend(teacher, points)
    if len(points) < 3:
        trend.text = f"{len(points)} size(s) with a finished {NAMES[method]} trial: too few to fit a trend"
        return trend
    x = [math.log10(p) for p, _ in points]
    y = [t for _, t in points]
    if len(set(y)) == 1:
        trend.slope = trend.low = trend.high = 0.0
        trend.intercept = y[0]
        trend.text = f"the best tau_max is {y[0]:g} at every size searched"
        return trend
    fit = slope_interval(x, y, LEVEL)
    trend.slope, trend.intercept, trend.low, trend.high = fit.slope, fit.intercept, fit.low, fit.high
    ci = f"{trend.slope:+.2f} per 10x parameters (95% CI {trend.low:+.2f}…{trend.high:+.2f}, {len(points)} sizes)"
    if trend.high < 0:
        trend.text = f"smaller students want a higher tau_max: {ci}"
    elif trend.low > 0:
        trend.text = f"larger students want a higher tau_max: {ci}"
    else:
        trend.text = f"cannot tell whether the best tau_max changes with size: {ci}"
    return trend


# ---------------------------------------------------------------------------------------- importances
def importances(study: Study, rows: list[dict]) -> dict[tuple[str, str], dict[str, float]]:
    """(teacher, method) -> {param: fANOVA importance of the validation metric}; groups with fewer than
    MIN_TRIALS_FOR_IMPORTANCE finished trials, or nothing searched, are left out."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator

    from akd_ray.space import load_space

    space = load_space(study.search.space)
    out = {}
    for teacher, _ in study.pairs:
        for method in study.search.methods:
            params = space.for_method(method)
            done = _search(rows, teacher, method)
            if len(done) < MIN_TRIALS_FOR_IMPORTANCE or not params:
                continue
            ot = optuna.create_study(direction="maximize")
            for r in done:
                chosen = {k: v for k, v in r["params"].items() if k in params}
                ot.add_trial(optuna.trial.create_trial(
                    params=chosen, distributions={k: _distribution(params[k]) for k in chosen},
                    value=r["val_best"]))
            try:
                got = optuna.importance.get_param_importances(ot, evaluator=FanovaImportanceEvaluator(seed=0))
            except (RuntimeError, ValueError):  # e.g. every trial the same value
                continue
            if got:
                out[(teacher, method)] = dict(got)
    return out


def _distribution(p):
    from optuna import distributions as D

    if p.type == "categorical":
        return D.CategoricalDistribution(list(p.choices))
    if p.type == "int":
        return D.IntDistribution(int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return D.FloatDistribution(p.low, p.high, step=p.step, log=p.log)


# ---------------------------------------------------------------------------------------- files
def write(study: Study, rows: list[dict], folder: Path, quality: dict[str, dict]) -> tuple[list[Path], list[str]]:
    """The family's files (pareto.csv, within.csv, importances.csv, capacity.md and plots) and the
    summary lines for the terminal."""
    files, md, summary = [], [f"# {study.name}: capacity gap ({study.family.name}, cost: {study.family.cost})", ""], []
    cost_name = "parameters" if study.family.cost == "parameters" else f"latency (ms per batch of {study.family.latency_batch_size})"

    # 1. the front
    with open(folder / "pareto.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["teacher", "method", "cost", "student_parameters", "val_best", "test_metric", "params"])
        for teacher, _ in study.pairs:
            for r in pareto_front(_search(rows, teacher)):
                w.writerow([teacher, r["method"], r[COST], r.get("student_parameters"), r["val_best"],
                            r.get("test_metric"), json.dumps(r["params"])])
    files.append(folder / "pareto.csv")
    for teacher, _ in study.pairs:
        front = pareto_front(_search(rows, teacher))
        md += [f"## Pareto front, teacher {teacher} (validation metric vs {cost_name})", "",
               f"{len(_search(rows, teacher))} finished search trials; {len(front)} on the front (no other trial "
               "is as good on both objectives and better on one).", "",
               "| cost | method | val (%) | test (%) | config |", "|---|---|---|---|---|"]
        md += [f"| {r[COST]:,.4g} | {NAMES[r['method']]} | {100 * r['val_best']:.2f} | "
               f"{100 * r.get('test_metric', math.nan):.2f} | {_config(r['params'])} |" for r in front]
        md.append("")
    files += _pareto_plots(study, rows, folder, cost_name)

    # 2. the smallest student within X points
    picks = within_picks(study, rows, quality)
    md += ["## Smallest student within X points of the teacher", "",
           "Chosen on validation among the search's trials (cheapest within X points of the teacher's validation "
           "metric), then re-run over the confirmation seeds; test mean and 95% t-interval against the teacher's "
           "test metric minus X.", "",
           "| teacher | X | method | cost | config | test (%) | 95% CI | seeds | teacher test (%) | verdict |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    with open(folder / "within.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["teacher", "points", "method", "cost", "student_parameters", "params", "mean", "ci_low",
                    "ci_high", "seeds", "teacher_test", "verdict"])
        for p in picks:
            t = p.trial or {}
            w.writerow([p.teacher, p.points, t.get("method", ""), t.get(COST, ""), t.get("student_parameters", ""),
                        json.dumps(t.get("params", {})), p.mean, p.low, p.high, len(p.values), p.teacher_test, p.text])
            if t:
                md.append(f"| {p.teacher} | {p.points:g} | {NAMES[t['method']]} | {t[COST]:,.4g} | "
                          f"{_config(t['params'])} | {_pts(p.mean)} | {_pts(p.low)}…{_pts(p.high)} | {len(p.values)} | "
                          f"{100 * p.teacher_test:.2f} | {p.text} |")
            else:
                md.append(f"| {p.teacher} | {p.points:g} | — | — | — | — | — | 0 | {_pts(p.teacher_test)} | {p.text} |")
            summary.append(f"  {p.teacher}: smallest within {p.points:g} points: "
                           + (f"{NAMES[t['method']]} {_config(t['params'])} (cost {t[COST]:,.4g}) — {p.text}"
                              if t else p.text))
    files.append(folder / "within.csv")
    md.append("")

    # 3. tau_max vs size
    trends = [tau_trend(study, rows, teacher) for teacher, _ in study.pairs]
    md += ["## Best tau_max vs student size", "",
           "Per size, the tau_max of the best Annealing-KD search trial; least squares in log10(parameters), 95% "
           "t-interval of the slope. Few trials per size make each point noisy: read the interval.", ""]
    md += [f"- {t.teacher}: {t.text}" for t in trends]
    summary += [f"  {t.teacher}: tau_max vs size: {t.text}" for t in trends]
    (folder / "tau_max_vs_size.json").write_text(json.dumps([t.__dict__ for t in trends], indent=1))
    files.append(folder / "tau_max_vs_size.json")
    files.append(_tau_plot(trends, folder))
    md.append("")

    # 4. importances
    imp = importances(study, rows)
    md += ["## Which knobs matter (fANOVA importance of the validation metric)", ""]
    with open(folder / "importances.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["teacher", "method", "param", "importance"])
        for (teacher, method), values in imp.items():
            md.append(f"- {teacher}, {NAMES[method]}: " + ", ".join(f"{k} {v:.2f}" for k, v in values.items()))
            w.writerows([teacher, method, k, v] for k, v in values.items())
    if not imp:
        md.append(f"- no group had {MIN_TRIALS_FOR_IMPORTANCE} finished trials: no importances")
    files.append(folder / "importances.csv")
    files.append(_importance_plot(imp, folder))
    (folder / "capacity.md").write_text("\n".join(md) + "\n")
    files.append(folder / "capacity.md")
    return files, summary


def _pts(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.2f}"


def _config(params: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())


def _pareto_plots(study: Study, rows: list[dict], folder: Path, cost_name: str) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from akd_ray.figures import save as _save

    files = []
    for teacher, _ in study.pairs:
        done = _search(rows, teacher)
        front = pareto_front(done)
        fig, ax = plt.subplots(figsize=(6, 4))
        for method in study.search.methods:  # every trial, dimmed, one marker per method
            pts = [(r[COST], 100 * r["val_best"]) for r in done if r["method"] == method]
            if pts:
                ax.scatter(*zip(*pts), marker=MARKERS[method], alpha=0.3, label=f"{NAMES[method]} trials")
        if front:
            ax.step([r[COST] for r in front], [100 * r["val_best"] for r in front], where="post", color="k", lw=1,
                    label="Pareto front")
            for i, r in enumerate(front):  # one legend entry says what the black marks are
                ax.scatter(r[COST], 100 * r["val_best"], marker=MARKERS[r["method"]], color="k", zorder=3,
                           label="on the front (marker: method)" if i == 0 else None)
        ax.set(xscale="log", xlabel=f"student cost: {cost_name}", ylabel="validation metric (points, best epoch)",
               title=f"metric vs cost, teacher {teacher}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        files.append(_save(fig, folder / f"pareto_{teacher}.png"))
    return files


def _tau_plot(trends: list[TauTrend], folder: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from akd_ray.figures import save as _save

    fig, ax = plt.subplots(figsize=(6, 4))
    for t in trends:
        if not t.points:
            continue
        x, y = zip(*t.points)
        ax.plot(x, y, "o", label=f"best tau_max ({t.teacher})")
        if t.slope == t.slope and len(t.points) >= 3:
            lx = np.log10(np.array(x, dtype=float))
            grid = np.linspace(lx.min(), lx.max(), 50)
            fit = t.intercept + t.slope * grid
            # 95% band of the fitted mean: t * s * sqrt(1/n + (x - mean)^2 / Sxx)
            resid = np.array(y) - (t.intercept + t.slope * lx)
            n = len(lx)
            s = math.sqrt(max(float(resid @ resid) / (n - 2), 0.0))
            sxx = float(((lx - lx.mean()) ** 2).sum())
            half = stats.t.ppf((1 + LEVEL) / 2, n - 2) * s * np.sqrt(1 / n + (grid - lx.mean()) ** 2 / sxx)
            ax.plot(10 ** grid, fit, "-", label=f"trend ({t.teacher})")
            ax.fill_between(10 ** grid, fit - half, fit + half, alpha=0.2)
    ax.set(xscale="log", xlabel="student parameters", ylabel="tau_max of the best trial",
           title="Annealing-KD: best tau_max vs student size")
    ys = [y for t in trends for _, y in t.points]
    if ys and all(float(y).is_integer() for y in ys):  # tau_max searched as an int: no tick at 2.25
        from matplotlib.ticker import MaxNLocator
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return _save(fig, folder / "tau_max_vs_size.png")


def _importance_plot(imp: dict[tuple[str, str], dict[str, float]], folder: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from akd_ray.figures import save as _save

    groups = list(imp.items())
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(4 * max(1, len(groups)), 3.5), squeeze=False)
    for ax, ((teacher, method), values) in zip(axes[0], groups):
        names = list(values)[::-1]
        ax.barh(names, [values[n] for n in names])
        ax.set(xlabel="fANOVA importance", title=f"{teacher}, {NAMES[method]}")
    if not groups:
        axes[0][0].text(0.5, 0.5, "too few trials for importances", ha="center", va="center")
        axes[0][0].set_axis_off()
    return _save(fig, folder / "importances.png")
