"""The study's report files: for each teacher-student pair the verdict (akd_ray.verdict), how much
tuning each method got, and what the teacher is worth.

Output: `trials.json` (the rows), `teachers.json`, `pairs.csv`, `pairs.md`, `summary.txt`,
`budget.csv` (Dodge et al.'s expected best validation metric vs number of trials, per pair and
method) and plots -- metric vs tau_max per pair, the capacity-gap curve (metric vs student size per
method), the T / phi(T) schedule of each pair's best Annealing-KD config, and `budget_<pair>.png`.
A study with a student family adds the capacity files (akd_ray.capacity).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from akd_ray import stats
from akd_ray.config import Study
from akd_ray.figures import save as _save
from akd_ray.method.schedules import phi, stage_split, temperature
from akd_ray.verdict import (MIN_SEEDS, NAMES, SELECTION, TEST, MethodResult, Verdict, describe, judge,  # noqa: F401
                             verdicts)

ROWS_FILE = "trials.json"
TEACHERS_FILE = "teachers.json"
BUDGET_FILE = "budget.csv"
METHOD_LINE = (f"The recommended method is chosen on validation: the best validation mean over the confirmation "
               f"seeds every method finished, unless a {SELECTION} (Holm-corrected over the best-vs-each "
               f"comparisons, at 0.05 / the planned racing looks) cannot tell it from another method -- then the "
               f"cheapest of the tied ones (scratch, then KD, then the others); while undecided, the tied methods "
               f"get more seeds up to search.confirm_seeds_max. Test is only reported: each method's mean ± seed SD "
               f"(\"±\" is always the seed SD) with its 95% interval, and the recommended method minus each other "
               f"one by a {TEST} (a paired t-interval over seeds where a run saved no predictions), "
               f"Holm-corrected, each interval at its Holm level and within the metric's range.")


# ---------------------------------------------------------------------------------------- files
def save_rows(rows: list[dict], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ROWS_FILE
    path.write_text(json.dumps(rows, indent=1, default=str))
    return path


def load_rows(folder: Path) -> tuple[list[dict], dict[str, dict]]:
    """The rows and the teachers' assessment a finished study wrote."""
    path = Path(folder) / ROWS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results yet -- run `akd-ray tune` on the study first")
    teachers = Path(folder) / TEACHERS_FILE
    return json.loads(path.read_text()), (json.loads(teachers.read_text()) if teachers.exists() else {})


def _fmt(r: MethodResult) -> str:
    if not r.n:
        return "n/a"
    return f"{100 * r.mean:.2f}" if r.n < 2 else f"{100 * r.mean:.2f} ± {100 * r.std:.2f}"


def _interval(low: float, high: float) -> str:
    return "n/a" if low != low else f"{100 * low:.2f}…{100 * high:.2f}"


def _config_text(config: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in config.items())


def teachers_md(quality: dict[str, dict]) -> list[str]:
    return [f"- teacher **{name}**: {q['metric']} val {100 * q['val']:.2f} / test {100 * q['test']:.2f}; "
            f"majority class val {100 * q['majority_val']:.2f} / test {100 * q['majority_test']:.2f}"
            for name, q in quality.items()]


def summary(study: Study, table: list[Verdict], quality: dict[str, dict]) -> str:
    """The short answer, for the terminal: one line per teacher, two per pair. "use X" only when decided."""
    lines = [f"{study.name}: verdict per teacher-student pair (chosen on validation {_metric_name(study)}, "
             f"test reported; {_seeds(study)}; {_budgets(study)})"]
    lines += [line.removeprefix("- ").replace("**", "") for line in teachers_md(quality)]
    for v in table:
        best = v.methods.get(v.best) if v.best else None
        if best is None:
            pick = "no verdict"
        else:
            score = (f"val {_mean(best.val)}, test {_fmt(best)} [{_interval(best.low, best.high)}], "
                     f"{best.finished}/{best.run} seeds" if best.confirmed else f"val {_mean(best.val)}, search only")
            scratch = v.methods.get("scratch")
            vs = (f"; scratch val {_mean(scratch.val)}, test {_fmt(scratch)}"
                  if scratch and scratch.n and v.best != "scratch" else "")
            name = describe(v.best, best.config)
            pick = (f"use {name} ({score}{vs})" if v.decided else
                    f"no method is clearly better; cheapest within noise on validation: {name} ({score}{vs})"
                    if len(v.tied) > 1 else f"not decided; best on validation: {name} ({score}{vs})")
        lines.append(f"  {v.teacher} → {v.student}: {pick}")
        lines.append(f"    {v.text}")
    return "\n".join(lines)


def markdown(study: Study, table: list[Verdict], quality: dict[str, dict]) -> str:
    metric = _metric_name(study)
    lines = [f"# {study.name}: which method and temperature for each teacher-student pair", "",
             f"{metric} in points (%). Each confirmation seed draws its own init, batch order and augmentation, "
             f"the same for every method, so runs are paired by seed. {METHOD_LINE} Tuning budget: "
             f"{_budgets(study)}; see {BUDGET_FILE} and budget_*.png for the expected best validation "
             f"{metric} after n trials (Dodge et al. 2019).", ""]
    lines += teachers_md(quality) + [""]
    lines += ["| teacher | student | recommended | verdict |", "|---|---|---|---|"]
    for v in table:
        rec = f"{describe(v.best, v.methods[v.best].config)}" if v.best else "—"
        lines.append(f"| {v.teacher} | {v.student} | {rec}{'' if v.decided else ' (not decided)'} | {v.text} |")
    for v in table:
        lines += ["", f"## {v.teacher} → {v.student}" + (f" ({v.student_parameters:,} parameters)"
                                                          if v.student_parameters else ""), "",
                  f"**{v.text}**", ""]
        if v.best:
            lines += [f"Recommended: {NAMES[v.best]} with {_config_text(v.methods[v.best].config)}", ""]
        lines += [f"| method | config | val {metric} | test {metric} (mean ± seed SD) | test 95% CI | seeds finished/run | "
                  f"recommended − this on test (CI, Holm p) | budget | search trials | stopped early | failed |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for m, r in v.methods.items():
            d = v.comparisons.get(m)
            diff = ("—" if d is None else f"{_pts(d.estimate)} ({100 * v.levels[m]:.3g}% CI {_pts(d.low)}…"
                    f"{_pts(d.high)}, p {d.pvalue:.2g}, {d.test})")
            seeds = f"{r.finished}/{r.run}" if r.run else "0 (search only)"
            lines.append(f"| {NAMES[m]} | {_config_text(r.config) if r.n else ''} | {_mean(r.val)} | {_fmt(r)} | "
                         f"{_interval(r.low, r.high)} | {seeds} | {diff} | {r.budget} | {r.trials} | {r.stopped} | "
                         f"{r.failed} |")
    return "\n".join(lines) + "\n"


def csv_rows(study: Study, table: list[Verdict], quality: dict[str, dict]) -> list[dict]:
    out = []
    for v in table:
        q = quality.get(v.teacher, {})
        row = {"teacher": v.teacher, "student": v.student, "student_parameters": v.student_parameters,
               "student_size": json.dumps(v.size) if v.size else "",
               "recommended": v.best or "", "decided": v.decided, "tied_on_val": " ".join(v.tied), "verdict": v.text,
               "config": json.dumps(v.methods[v.best].config) if v.best else "",
               "teacher_val": q.get("val"), "teacher_test": q.get("test"), "majority_test": q.get("majority_test")}
        for m, r in v.methods.items():
            row.update({f"{m}_val": r.val, f"{m}_mean": r.mean, f"{m}_std": r.std, f"{m}_ci_low": r.low,
                        f"{m}_ci_high": r.high, f"{m}_seeds": r.finished, f"{m}_seeds_run": r.run,
                        f"{m}_budget": r.budget, f"{m}_trials": r.trials})
            d = v.comparisons.get(m)
            nan = math.nan
            row.update({f"best_minus_{m}": d.estimate if d else nan, f"best_minus_{m}_ci_low": d.low if d else nan,
                        f"best_minus_{m}_ci_high": d.high if d else nan, f"best_minus_{m}_level": v.levels.get(m, nan),
                        f"best_minus_{m}_p_holm": d.pvalue if d else nan, f"best_minus_{m}_test": d.test if d else ""})
        out.append(row)
    return out


def _seeds(study: Study) -> str:
    first, cap = study.search.confirm_seeds, study.search.confirm_seeds_max
    return (f"{first} confirmation seeds, racing up to {cap} while undecided" if cap > first and first >= MIN_SEEDS
            else f"{first} confirmation seeds")


def _budgets(study: Study) -> str:
    trials = study.search.trials
    same = len(set(trials.values())) == 1
    return (f"{next(iter(trials.values()))} search trials per method (equal)" if same else
            "search trials " + ", ".join(f"{NAMES[m]} {n}" for m, n in trials.items()) + " (unequal)")


def _mean(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.2f}"


def _pts(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:+.1f}"


# ---------------------------------------------------------------------------------------- tuning budget
def budget_rows(study: Study, rows: list[dict]) -> list[dict]:
    """Per pair and method, the expected best validation metric after n = 1..budget search trials
    (stats.expected_max over the method's search trials; Dodge et al. 2019). A trial stopped early
    counts at the last validation score it reached (`pruned` says how many): dropping them would leave
    only the better trials of a method that early stopping pruned often, and flatter its curve."""
    n_max = max(study.search.trials.values())
    out = []
    for teacher, student in study.pairs:
        for method in study.search.methods:
            mine = [r for r in rows if r["phase"] == "search" and (r.get("finished") or r.get("stopped"))
                    and r.get("val_best") is not None
                    and (r["teacher"], r["student"], r["method"]) == (teacher, student, method)]
            vals = [r["val_best"] for r in mine]
            e = stats.expected_max(vals, n_max)
            out += [{"teacher": teacher, "student": student, "method": method, "trials": int(n),
                     "expected_best_val": float(m), "std": float(sd), "observed_trials": len(vals),
                     "pruned": sum(not r.get("finished") for r in mine),
                     "budget": study.search.trials[method]} for n, m, sd in zip(e.n, e.mean, e.std)]
    return out


def budget_plots(study: Study, records: list[dict], folder: Path) -> list[Path]:
    """One plot per pair: expected best validation metric vs number of trials, a line per method (solid
    up to the trials it observed, dotted beyond: a draw from the same trials, not new ones), ±1 std."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    files = []
    for teacher, student in study.pairs:
        fig, ax = plt.subplots(figsize=(6, 4))
        for method in study.search.methods:
            mine = [r for r in records if (r["teacher"], r["student"], r["method"]) == (teacher, student, method)]
            if not mine:
                continue
            n = [r["trials"] for r in mine]
            y = [100 * r["expected_best_val"] for r in mine]
            sd = [100 * r["std"] for r in mine]
            seen = mine[0]["observed_trials"]
            line, = ax.plot(n[:seen], y[:seen], "o-", label=f"{NAMES[method]} ({seen} trials)")
            ax.plot(n[seen - 1:], y[seen - 1:], ":", color=line.get_color())
            ax.fill_between(n, [a - b for a, b in zip(y, sd)], [a + b for a, b in zip(y, sd)],
                            color=line.get_color(), alpha=0.15)
        ax.set(xlabel="search trials (n)", ylabel=f"expected best validation {_metric_name(study)} (points)",
               title=f"{student} ← {teacher}: expected best after n trials")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials come whole
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        files.append(_save(fig, folder / f"budget_{teacher}_{student}.png"))
    return files


def tau_plots(study: Study, table: list[Verdict], folder: Path) -> list[Path]:
    """One plot per pair whose Annealing-family pick ran its neighbouring tau_max values: validation
    metric vs tau_max, the mean over seeds with a band of ± one seed SD, every seed as a dot, the pick
    starred and the values that cannot be told from it shaded."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    files = []
    for v in table:
        if len(v.tau) < 2:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        taus = list(v.tau)
        mean = np.array([100 * np.mean(v.tau[t]) for t in taus])
        sd = np.array([100 * np.std(v.tau[t], ddof=1) if len(v.tau[t]) > 1 else 0.0 for t in taus])
        ax.fill_between(taus, mean - sd, mean + sd, alpha=0.2, label="± 1 seed SD")
        ax.plot(taus, mean, "o-", label="mean over seeds")
        for t in taus:
            ax.plot([t] * len(v.tau[t]), [100 * x for x in v.tau[t]], ".", color="grey", alpha=0.6)
        pick = v.methods[v.best].config["tau_max"]
        ax.plot([pick], [100 * np.mean(v.tau[pick])], "*", markersize=14, color="C3", label=f"pick: τ_max {pick:g}")
        if len(v.tau_same) > 1:
            ax.axvspan(min(v.tau_same) - 0.1, max(v.tau_same) + 0.1, color="C2", alpha=0.1,
                       label="cannot be told apart")
        ax.set(xlabel="τ_max", ylabel=f"validation {_metric_name(study)} (points)",
               title=f"{v.student} ← {v.teacher}: {NAMES[v.best]} by τ_max")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
        files.append(_save(fig, folder / f"tau_range_{v.teacher}_{v.student}.png"))
    return files


def _metric_name(study: Study) -> str:
    from akd_ray.tasks.metrics import primary_metric

    return primary_metric(study.task.name)


# ---------------------------------------------------------------------------------------- plots
def plots(study: Study, rows: list[dict], table: list[Verdict], folder: Path) -> list[Path]:
    """Three plots, each in one unit (points, x100, as the text), integer parameters on integer ticks,
    each pair's pick marked, and legends that say what each mark is."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metric = _metric_name(study)
    picks = {(v.teacher, v.student): v for v in table}
    files = []
    # 1. metric vs tau_max per pair: the "pick the temperature" view
    fig, ax = plt.subplots(figsize=(6, 4))
    taus = []
    for teacher, student in study.pairs:
        pts = sorted((r["params"].get("tau_max", study.train.tau_max), 100 * r["val_best"]) for r in rows
                     if (r["teacher"], r["student"], r["method"]) == (teacher, student, "annealing")
                     and r.get("finished") and r["phase"] == "search")
        if not pts:
            continue
        taus += [t for t, _ in pts]
        (line,) = ax.plot(*zip(*pts), "o", alpha=0.6, label=f"{student} ← {teacher}: search trials")
        v = picks.get((teacher, student))
        a = v.methods.get("annealing") if v else None
        if a is not None and a.n and "tau_max" in a.config:
            best = max((y for t, y in pts if t == a.config["tau_max"]), default=None)
            if best is not None:
                picked = v.best == "annealing"
                ax.plot([a.config["tau_max"]], [best], "*" if picked else "s", ms=14 if picked else 9,
                        mfc="none", mec=line.get_color(), mew=2,
                        label=f"{student} ← {teacher}: " + ("the pick" if picked else
                                                            f"best Annealing-KD (the pick is {NAMES[v.best]})"))
    if taus and all(float(t).is_integer() for t in taus):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="tau_max", ylabel=f"validation {metric} (points, best epoch)",
           title="Annealing-KD: validation vs tau_max")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    files.append(_save(fig, folder / "metric_vs_tau_max.png"))

    # 2. capacity gap: confirmed metric (with its 95% interval) vs student size, per method and teacher
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in study.search.methods:
        # scratch never sees a teacher: one curve, not one per teacher
        teachers = list(study.candidates)  # a teacher's early checkpoints are teachers of their own
        for teacher in (teachers if method != "scratch" else teachers[:1]):
            pts = sorted({(v.student_parameters, 100 * v.methods[method].mean,
                           100 * (v.methods[method].high - v.methods[method].mean))
                          for v in table if (v.teacher == teacher or method == "scratch") and v.student_parameters
                          and v.methods[method].n})
            if pts:
                x, y, err = zip(*pts)
                label = NAMES[method] if method == "scratch" or len(teachers) == 1 else \
                    f"{NAMES[method]} (teacher {teacher})"
                ax.errorbar(x, y, yerr=[e if e == e else 0 for e in err], fmt="o-", capsize=3, label=label)
    marked = False
    for v in table:
        if v.best and v.student_parameters and v.methods[v.best].n:
            ax.plot([v.student_parameters], [100 * v.methods[v.best].mean], "*", ms=14, mfc="none", mec="k", mew=1.5,
                    label=None if marked else "the pick of each pair")
            marked = True
    ax.set(xscale="log", xlabel="student parameters", ylabel=f"test {metric} (points, mean ± 95% CI)",
           title="Capacity gap")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    files.append(_save(fig, folder / "capacity_gap.png"))

    # 3. the T / phi(T) schedule of each pair's best Annealing-KD config
    fig, (ax_t, ax_p) = plt.subplots(1, 2, figsize=(9, 3.5))
    for v in table:
        a = v.methods.get("annealing")
        if a is None or not a.n:
            continue
        c = {**study.train.model_dump(), **a.config}
        first, _ = stage_split(c["epochs"], c["stage1_fraction"])
        Ts = [temperature(c["schedule"], e, first, c["tau_max"], c["decay"]) for e in range(first)]
        Ts.append(Ts[-1])  # each value holds for its whole epoch: draw the last one to the stage's end
        label = (f"{v.student} ← {v.teacher}: {c['schedule']}, tau_max {c['tau_max']:g}"
                 + (" (the pick)" if v.best == "annealing" else ""))
        ax_t.step(range(first + 1), Ts, where="post", label=label)
        ax_p.step(range(first + 1), [phi(T, c["tau_max"]) for T in Ts], where="post")
    for ax in (ax_t, ax_p):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_t.set(xlabel="stage-I epoch", ylabel="T", title="temperature")
    ax_p.set(xlabel="stage-I epoch", ylabel="phi(T)", title="teacher-logit scale")
    if ax_t.get_legend_handles_labels()[0]:
        ax_t.legend(fontsize=6)
    files.append(_save(fig, folder / "schedule.png"))
    return files


def write_report(study: Study, rows: list[dict], folder: Path, teachers: dict[str, dict] | None = None) -> list[Path]:
    """Write the rows, the verdict (Markdown, CSV, summary), the budget curves and the plots under
    `folder` (a family study: the capacity files too); return the files."""
    folder.mkdir(parents=True, exist_ok=True)
    quality = teachers or {}
    table = verdicts(study, rows, quality)
    files = [save_rows(rows, folder)]
    (folder / TEACHERS_FILE).write_text(json.dumps(quality, indent=1))
    files.append(folder / TEACHERS_FILE)
    files.append(_write_csv(folder / "pairs.csv", csv_rows(study, table, quality)))
    (folder / "pairs.md").write_text(markdown(study, table, quality))
    files.append(folder / "pairs.md")
    budget = budget_rows(study, rows)
    files.append(_write_csv(folder / BUDGET_FILE, budget))
    text = summary(study, table, quality)
    files += plots(study, rows, table, folder) + budget_plots(study, budget, folder) + tau_plots(study, table, folder)
    if study.family is not None:
        from akd_ray import capacity

        more, lines = capacity.write(study, rows, folder, quality)
        files += more
        text += "\n" + "\n".join(["capacity gap (see capacity.md, pareto_*.png):", *lines])
    from akd_ray import teacher_verdict  # teachers as a dimension: the teacher x student map

    more, lines = teacher_verdict.write(study, rows, folder, quality)
    files += more
    text += "\n" + "\n".join(lines) if lines else ""
    (folder / "summary.txt").write_text(text + "\n")
    files.append(folder / "summary.txt")
    return files


def _write_csv(path: Path, records: list[dict]) -> Path:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(records[0]) if records else [])
        w.writeheader()
        w.writerows(records)
    return path
