"""The per-pair report: which temperature to use for each teacher-student pair, and whether
Annealing-KD's gain over KD is larger than the seed-to-seed spread.

Input: the study's trial rows (see akd_ray.study.trial_rows). Output: `trials.csv`, `pairs.csv`,
`pairs.md` and three plots -- metric vs tau_max per pair, the capacity-gap curve (metric vs student
size per method), and the T / phi(T) schedule of each pair's best Annealing-KD config.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from akd_ray.config import Study
from akd_ray.method.schedules import phi, stage_split, temperature

ROWS_FILE = "trials.json"


def save_rows(rows: list[dict], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ROWS_FILE
    path.write_text(json.dumps(rows, indent=1, default=str))
    return path


def load_rows(folder: Path) -> list[dict]:
    path = Path(folder) / ROWS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results yet -- run `akd-ray tune` on the study first")
    return json.loads(path.read_text())


def _stats(values: list[float]) -> tuple[float, float, int]:
    if not values:
        return float("nan"), float("nan"), 0
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0), len(values)


def _method_summary(rows: list[dict], method: str) -> dict:
    """Mean/std of the test metric over confirmation seeds (else the best search trial) of a method."""
    done = [r for r in rows if r["method"] == method and r.get("finished")]
    search = [r for r in done if r["phase"] == "search"]
    confirm = [r for r in done if r["phase"] == "confirm"]
    if not done:
        return {"params": {}, "mean": float("nan"), "std": float("nan"), "n": 0, "trials": 0}
    best = max(search or done, key=lambda r: r["val_best"])
    values = [r["test_metric"] for r in confirm] or [best["test_metric"]]
    mean, std, n = _stats(values)
    return {"params": best["params"], "mean": mean, "std": std, "n": n, "trials": len(search)}


def pair_table(study: Study, rows: list[dict]) -> list[dict]:
    table = []
    for teacher, student in study.pairs:
        mine = [r for r in rows if r["teacher"] == teacher and r["student"] == student]
        s = {m: _method_summary(mine, m) for m in ("annealing", "kd", "scratch")}
        a, k = s["annealing"], s["kd"]
        gain = a["mean"] - k["mean"]
        spread = (a["std"] or 0) + (k["std"] or 0)
        table.append({
            "teacher": teacher, "student": student,
            "tau_max": a["params"].get("tau_max", study.train.tau_max),
            "schedule": a["params"].get("schedule", study.train.schedule),
            "stage1_fraction": round(a["params"].get("stage1_fraction", study.train.stage1_fraction), 3),
            "decay": a["params"].get("decay", study.train.decay),
            "annealing": a["mean"], "annealing_std": a["std"],
            "kd": k["mean"], "kd_std": k["std"], "scratch": s["scratch"]["mean"], "scratch_std": s["scratch"]["std"],
            "seeds": a["n"], "gain_over_kd": gain,
            "gain_exceeds_spread": bool(a["n"] > 1 and k["n"] > 1 and gain > spread),
            "trials": len([r for r in mine if r["phase"] == "search"]),
            "failed": len([r for r in mine if r.get("error")]),
        })
    return table


def _fmt(mean: float, std: float) -> str:
    return "n/a" if mean != mean else f"{100 * mean:.2f} ± {100 * std:.2f}"


def markdown(study: Study, table: list[dict]) -> str:
    lines = [f"# {study.name}: best temperature per teacher-student pair",
             "", f"Test metric ({study.task.name}) in %, mean ± std over confirmation seeds; "
             "'gain > spread' holds when Annealing-KD's mean gain over KD exceeds the sum of their stds.", "",
             "| teacher | student | tau_max | schedule | stage I | annealing | kd | scratch | gain over kd | gain > spread | trials |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['teacher']} | {r['student']} | {r['tau_max']} | {r['schedule']} | {r['stage1_fraction']} | "
                     f"{_fmt(r['annealing'], r['annealing_std'])} | {_fmt(r['kd'], r['kd_std'])} | "
                     f"{_fmt(r['scratch'], r['scratch_std'])} | {100 * r['gain_over_kd']:+.2f} | "
                     f"{'yes' if r['gain_exceeds_spread'] else 'no'} | {r['trials']} |")
    return "\n".join(lines) + "\n"


def plots(study: Study, rows: list[dict], table: list[dict], folder: Path) -> list[Path]:
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
    ax.legend(fontsize=7)
    files.append(_save(fig, folder / "metric_vs_tau_max.png"))

    # 2. capacity gap: metric vs student size, one line per method and teacher
    fig, ax = plt.subplots(figsize=(6, 4))
    for teacher in study.teachers:
        for method in ("scratch", "kd", "annealing"):
            pts = []
            for r in table:
                if r["teacher"] == teacher and r[method] == r[method]:
                    size = next((x["student_parameters"] for x in rows if x["student"] == r["student"]
                                 and x.get("student_parameters")), None)
                    if size:
                        pts.append((size, 100 * r[method]))
            if pts:
                ax.plot(*zip(*sorted(pts)), "o-", label=f"{method} ({teacher})")
    ax.set(xscale="log", xlabel="student parameters", ylabel="test metric (%)", title="Capacity gap")
    ax.legend(fontsize=7)
    files.append(_save(fig, folder / "capacity_gap.png"))

    # 3. the T / phi(T) schedule of each pair's best Annealing-KD config
    fig, (ax_t, ax_p) = plt.subplots(1, 2, figsize=(9, 3.5))
    for r in table:
        epochs = study.train.epochs
        first, _ = stage_split(epochs, r["stage1_fraction"])
        Ts = [temperature(r["schedule"], e, first, r["tau_max"], r["decay"]) for e in range(first)]
        Ts.append(Ts[-1])  # each value holds for its whole epoch: draw the last one to the stage's end
        label = f"{r['teacher']} → {r['student']} ({r['schedule']}, tau_max={r['tau_max']})"
        ax_t.step(range(first + 1), Ts, where="post", label=label)
        ax_p.step(range(first + 1), [phi(T, r["tau_max"]) for T in Ts], where="post")
    ax_t.set(xlabel="stage-I epoch", ylabel="T", title="temperature")
    ax_p.set(xlabel="stage-I epoch", ylabel="phi(T)", title="teacher-logit scale")
    ax_t.legend(fontsize=6)
    files.append(_save(fig, folder / "schedule.png"))
    return files


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def write_report(study: Study, rows: list[dict], folder: Path) -> list[Path]:
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    table = pair_table(study, rows)
    files = [save_rows(rows, folder)]
    with open(folder / "pairs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    files.append(folder / "pairs.csv")
    (folder / "pairs.md").write_text(markdown(study, table))
    files.append(folder / "pairs.md")
    files += plots(study, rows, table, folder)
    return files
