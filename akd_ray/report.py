"""The study's answer: for each teacher-student pair, which method and config to use, how sure we are,
and what the teacher is worth.

Input: the study's trial rows (see akd_ray.study.trial_rows) and the teachers' assessment. For each
pair and method the confirmation runs (the search's best config re-run over fresh seeds, each with its
own init, batch order and augmentation) give a mean, a std and a 95% t-interval of the test metric.
The method with the best mean is compared with every other one by Welch's t-interval on the
difference of means (unequal variances); where that interval holds 0 the verdict says so ("cannot
tell"). Below 3 seeds per method it says "too few seeds to tell".

Output: `trials.json` (the rows), `pairs.csv`, `pairs.md`, `teachers.json` and three plots -- metric
vs tau_max per pair, the capacity-gap curve (metric vs student size per method), and the T / phi(T)
schedule of each pair's best Annealing-KD config.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scipy import stats

from akd_ray.config import Study
from akd_ray.method.schedules import phi, stage_split, temperature

ROWS_FILE = "trials.json"
TEACHERS_FILE = "teachers.json"
LEVEL = 0.95
MIN_SEEDS = 3  # below this a 95% interval is too wide to say anything (t = 4.3 at n = 3)
NAMES = {"scratch": "scratch", "kd": "KD", "takd": "TAKD", "annealing": "Annealing-KD", "prokd": "Pro-KD",
         "layers": "layer matching", "minimax": "MiniMax augmentation", "kd+layers": "KD + layers",
         "kd+minimax": "KD + MiniMax", "annealing+layers": "Annealing-KD + layers",
         "annealing+minimax": "Annealing-KD + MiniMax"}
# the knobs that define each method's recipe, in the order a reader wants them
KNOBS = {"scratch": ("lr",), "kd": ("alpha", "kd_temperature", "lr"), "takd": ("alpha", "kd_temperature", "lr"),
         "annealing": ("tau_max", "schedule", "decay", "stage1_fraction", "lr"),
         "prokd": ("tau_max", "schedule", "decay", "stage1_fraction", "lr"),
         "layers": ("beta", "layer_map", "lr"),
         "minimax": ("minimax_eps", "minimax_steps", "minimax_weight", "kd_temperature", "lr"),
         "kd+layers": ("alpha", "kd_temperature", "beta", "layer_map", "lr"),
         "kd+minimax": ("alpha", "kd_temperature", "minimax_eps", "minimax_steps", "minimax_weight", "lr"),
         "annealing+layers": ("tau_max", "schedule", "decay", "stage1_fraction", "beta", "layer_map", "lr"),
         "annealing+minimax": ("tau_max", "schedule", "decay", "stage1_fraction", "minimax_eps", "minimax_steps",
                               "minimax_weight", "lr")}


# ---------------------------------------------------------------------------------------- statistics
def mean_interval(values: list[float], level: float = LEVEL) -> tuple[float, float, float, float]:
    """(mean, std, low, high): Student's t-interval for the mean; no interval from fewer than 2 values."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    std = statistics.stdev(values)
    half = stats.t.ppf((1 + level) / 2, n - 1) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def welch_interval(a: list[float], b: list[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean(a) - mean(b), low, high): Welch's t-interval, which does not assume equal variances."""
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))  # Welch-Satterthwaite
    half = stats.t.ppf((1 + level) / 2, df) * se
    return diff, diff - half, diff + half


# ---------------------------------------------------------------------------------------- per pair
@dataclass
class MethodResult:
    """One method of one pair: its best searched config and that config over the confirmation seeds."""
    method: str
    config: dict[str, Any]
    values: list[float]  # test metric per confirmation seed (the search's best trial if none)
    confirmed: bool
    trials: int  # search trials
    stopped: int
    failed: int
    val: float  # the search's best validation score: what picks the method when nothing is confirmed
    mean: float = field(init=False)
    std: float = field(init=False)
    low: float = field(init=False)
    high: float = field(init=False)

    def __post_init__(self) -> None:
        self.mean, self.std, self.low, self.high = mean_interval(self.values)

    @property
    def n(self) -> int:
        return len(self.values)


@dataclass
class Verdict:
    teacher: str
    student: str
    methods: dict[str, MethodResult]
    best: str | None  # the method with the highest mean
    decided: bool  # the best is ahead of every other method beyond the 95% interval
    text: str
    differences: dict[str, tuple[float, float, float]]  # other method -> (best - other, low, high)
    student_parameters: int | None


def method_result(study: Study, rows: list[dict], method: str) -> MethodResult:
    mine = [r for r in rows if r["method"] == method]
    search = [r for r in mine if r["phase"] == "search"]
    done = [r for r in search if r.get("finished")]
    confirm = [r for r in mine if r["phase"] == "confirm" and r.get("finished")]
    best = max(done, key=lambda r: r["val_best"]) if done else None
    params = best["params"] if best else (confirm[0]["params"] if confirm else {})
    values = [r["test_metric"] for r in confirm] or ([best["test_metric"]] if best else [])
    return MethodResult(method, recipe(study, method, params), values, bool(confirm), trials=len(search),
                        stopped=sum(bool(r.get("stopped")) for r in search),
                        failed=sum(bool(r.get("error")) for r in mine), val=best["val_best"] if best else math.nan)


def recipe(study: Study, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """The method's full config: its knobs (searched values, else the study's defaults), then anything
    else the search set."""
    train = study.train.model_dump()
    out = {k: params.get(k, train[k]) for k in KNOBS[method]}
    if out.get("schedule", "exp") != "exp":
        out.pop("decay", None)
    return {**out, **{k: v for k, v in params.items() if k not in out and k != "decay"}}


def judge(study: Study, teacher: str, student: str, rows: list[dict]) -> Verdict:
    mine = [r for r in rows if (r["teacher"], r["student"]) == (teacher, student)]
    results = {m: method_result(study, mine, m) for m in study.search.methods}
    size = next((r["student_parameters"] for r in mine if r.get("student_parameters")), None)
    ran = {m: r for m, r in results.items() if r.n}
    if not ran:
        failed, stopped = sum(r.failed for r in results.values()), sum(r.stopped for r in results.values())
        return Verdict(teacher, student, results, None, False,
                       f"no trial finished for this pair ({failed} failed, {stopped} stopped early): no verdict",
                       {}, size)
    confirmed = all(r.confirmed for r in ran.values())
    # confirmed: the best mean over fresh seeds; else the search's own pick, by validation (never test)
    best = max(ran, key=lambda m: ran[m].mean if confirmed else ran[m].val)
    others = [m for m in ran if m != best]
    diffs = {m: welch_interval(ran[best].values, ran[m].values) for m in others}
    decided = all(low > 0 for _, low, _ in diffs.values())
    fewest = min(r.n for r in ran.values())
    head = describe(best, ran[best].config)
    if not confirmed:
        text = (f"{head} has the best validation score, not confirmed over seeds (search.confirm_seeds: "
                f"{study.search.confirm_seeds}): cannot tell")
        decided = False
    elif fewest < MIN_SEEDS:
        text = (f"{head} has the best mean, but too few seeds to tell (n = {fewest}; the verdict needs "
                f"search.confirm_seeds >= {MIN_SEEDS})")
        decided = False
    elif best == "scratch":
        tied = [NAMES[m] for m in others if diffs[m][1] <= 0]
        text = ("scratch is best: distillation does not help this pair" if not tied else
                f"scratch has the best mean and cannot be told from {', '.join(tied)}: distillation does not "
                f"clearly help this pair")
    else:
        parts = []
        for m in sorted(others, key=lambda m: (m != "kd", m != "scratch")):  # KD first: the baseline to beat
            d, low, high = diffs[m]
            interval = f"95% CI {_pts(low)}…{_pts(high)}"
            parts.append(f"{_pts(d)} points over {NAMES[m]} ({interval})" if low > 0
                         else f"within noise of {NAMES[m]} ({_pts(d)}, {interval})")
        text = f"{head}: " + "; ".join(parts) if parts else f"{head} (the only method run)"
    return Verdict(teacher, student, results, best, decided, text, diffs, size)


def describe(method: str, config: dict[str, Any]) -> str:
    """'Annealing-KD tau_max 4, cosine' / 'KD alpha 0.5, T 4' / 'scratch'; a family's student size
    after it: 'KD alpha 0.5, T 4 (student.hidden 16)'."""
    size = ", ".join(f"{k} {v}" for k, v in config.items() if k.startswith("student."))
    text = _describe(method, config)
    return f"{text} ({size})" if size else text


def _describe(method: str, config: dict[str, Any]) -> str:
    if method in ("annealing", "prokd"):
        bits = ([f"tau_max {config['tau_max']:g}"] if "tau_max" in config else []) + [str(config["schedule"])]
        return f"{NAMES[method]} {', '.join(bits)}"
    if method in ("kd", "takd"):
        return f"{NAMES[method]} alpha {config['alpha']:.2g}, T {config['kd_temperature']:.2g}"
    return NAMES[method]


def _pts(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:+.1f}"


def verdicts(study: Study, rows: list[dict]) -> list[Verdict]:
    if study.family is not None:
        rows = best_config_rows(rows)
    return [judge(study, t, s, rows) for t, s in study.pairs]


def best_config_rows(rows: list[dict]) -> list[dict]:
    """The search rows and only those confirmation rows that re-run a group's best search config of
    their method: a family study also confirms other configs (its "within X points" picks, see
    akd_ray.capacity), which are not that method's pick."""
    best: dict[tuple, dict] = {}
    for r in rows:
        key = (r["teacher"], r["student"], r["method"])
        if r["phase"] == "search" and r.get("finished") and (key not in best or r["val_best"] > best[key]["val_best"]):
            best[key] = r
    return [r for r in rows if r["phase"] != "confirm"
            or r["params"] == best.get((r["teacher"], r["student"], r["method"]), {}).get("params")]


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
    """The short answer, for the terminal: one line per teacher, one per pair."""
    lines = [f"{study.name}: verdict per teacher-student pair (test {_metric_name(study)}, "
             f"{study.search.confirm_seeds} confirmation seeds, Welch 95% intervals)"]
    lines += [line.removeprefix("- ").replace("**", "") for line in teachers_md(quality)]
    for v in table:
        best = v.methods.get(v.best) if v.best else None
        score = f"{_fmt(best)} [{_interval(best.low, best.high)}]" if best else "n/a"
        scratch = v.methods.get("scratch")
        vs = f"; scratch {_fmt(scratch)}" if scratch and v.best != "scratch" else ""
        lines.append(f"  {v.teacher} → {v.student}: use {describe(v.best, best.config) if best else '—'} "
                     f"({score}{vs})")
        lines.append(f"    {v.text}")
    return "\n".join(lines)


def markdown(study: Study, table: list[Verdict], quality: dict[str, dict]) -> str:
    metric = _metric_name(study)
    lines = [f"# {study.name}: which method and temperature for each teacher-student pair", "",
             f"Test {metric} in points (%): mean ± std over the confirmation seeds (each seed its own init, "
             f"batch order and augmentation), 95% Student-t interval of the mean. The best method is compared "
             f"with each other one by Welch's t-interval on the difference of means (95%); an interval that "
             f"holds 0 means *cannot tell*.", ""]
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
        lines += [f"| method | config | {metric} | 95% CI | seeds | best − this (95% CI) | search trials | "
                  "stopped early | failed |", "|---|---|---|---|---|---|---|---|---|"]
        for m, r in v.methods.items():
            d = v.differences.get(m)
            diff = "—" if d is None else f"{_pts(d[0])} ({_pts(d[1])}…{_pts(d[2])})"
            lines.append(f"| {NAMES[m]} | {_config_text(r.config) if r.n else ''} | {_fmt(r)} | "
                         f"{_interval(r.low, r.high)} | {r.n if r.confirmed else '0 (search only)'} | {diff} | "
                         f"{r.trials} | {r.stopped} | {r.failed} |")
    return "\n".join(lines) + "\n"


def csv_rows(study: Study, table: list[Verdict], quality: dict[str, dict]) -> list[dict]:
    out = []
    for v in table:
        q = quality.get(v.teacher, {})
        row = {"teacher": v.teacher, "student": v.student, "student_parameters": v.student_parameters,
               "recommended": v.best or "", "decided": v.decided, "verdict": v.text,
               "config": json.dumps(v.methods[v.best].config) if v.best else "",
               "teacher_test": q.get("test"), "majority_test": q.get("majority_test")}
        for m, r in v.methods.items():
            row.update({f"{m}_mean": r.mean, f"{m}_std": r.std, f"{m}_ci_low": r.low, f"{m}_ci_high": r.high,
                        f"{m}_seeds": r.n if r.confirmed else 0, f"{m}_trials": r.trials})
            d = v.differences.get(m, (math.nan,) * 3)
            row.update({f"best_minus_{m}": d[0], f"best_minus_{m}_ci_low": d[1], f"best_minus_{m}_ci_high": d[2]})
        out.append(row)
    return out


def _metric_name(study: Study) -> str:
    from akd_ray.tasks.metrics import primary_metric

    return primary_metric(study.task.name)


# ---------------------------------------------------------------------------------------- plots
def plots(study: Study, rows: list[dict], table: list[Verdict], folder: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    # 1. metric vs tau_max per pair: the "pick the temperature" view
    fig, ax = plt.subplots(figsize=(6, 4))
    for teacher, student in study.pairs:
        pts = sorted((r["params"].get("tau_max", study.train.tau_max), r["val_best"]) for r in rows
                     if (r["teacher"], r["student"], r["method"]) == (teacher, student, "annealing") and r.get("finished"))
        if pts:
            ax.plot(*zip(*pts), "o", label=f"{teacher} → {student}")
    ax.set(xlabel="tau_max", ylabel="validation metric (best epoch)", title="Annealing-KD: metric vs tau_max")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    files.append(_save(fig, folder / "metric_vs_tau_max.png"))

    # 2. capacity gap: confirmed metric (with its 95% interval) vs student size, per method and teacher
    fig, ax = plt.subplots(figsize=(6, 4))
    for teacher in study.teachers:
        for method in study.search.methods:
            pts = sorted((v.student_parameters, 100 * v.methods[method].mean,
                          100 * (v.methods[method].high - v.methods[method].mean))
                         for v in table if v.teacher == teacher and v.student_parameters and v.methods[method].n)
            if pts:
                x, y, err = zip(*pts)
                ax.errorbar(x, y, yerr=[e if e == e else 0 for e in err], fmt="o-", capsize=3,
                            label=f"{NAMES[method]} ({teacher})")
    ax.set(xscale="log", xlabel="student parameters", ylabel="test metric (%)", title="Capacity gap")
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
        label = f"{v.teacher} → {v.student} ({c['schedule']}, tau_max={c['tau_max']})"
        ax_t.step(range(first + 1), Ts, where="post", label=label)
        ax_p.step(range(first + 1), [phi(T, c["tau_max"]) for T in Ts], where="post")
    ax_t.set(xlabel="stage-I epoch", ylabel="T", title="temperature")
    ax_p.set(xlabel="stage-I epoch", ylabel="phi(T)", title="teacher-logit scale")
    if ax_t.get_legend_handles_labels()[0]:
        ax_t.legend(fontsize=6)
    files.append(_save(fig, folder / "schedule.png"))
    return files


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(study: Study, rows: list[dict], folder: Path, teachers: dict[str, dict] | None = None) -> list[Path]:
    """Write the rows, the verdict (Markdown, CSV) and the plots under `folder`; return the files."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    quality = teachers or {}
    table = verdicts(study, rows)
    files = [save_rows(rows, folder)]
    (folder / TEACHERS_FILE).write_text(json.dumps(quality, indent=1))
    files.append(folder / TEACHERS_FILE)
    records = csv_rows(study, table, quality)
    with open(folder / "pairs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(records[0]))
        w.writeheader()
        w.writerows(records)
    files.append(folder / "pairs.csv")
    (folder / "pairs.md").write_text(markdown(study, table, quality))
    files.append(folder / "pairs.md")
    text = summary(study, table, quality)
    files += plots(study, rows, table, folder)
    if study.family is not None:
        from akd_ray import capacity

        more, lines = capacity.write(study, rows, folder, quality)
        files += more
        text += "\n" + "\n".join(["capacity gap (see capacity.md, pareto_*.png):", *lines])
    (folder / "summary.txt").write_text(text + "\n")
    files.append(folder / "summary.txt")
    return files
