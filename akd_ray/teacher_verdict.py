"""Which teacher for this student: the verdict per student across candidate teachers, and the map.

Where teachers are a dimension (a `teacher_family`, or `checkpoints_as_teachers`), every student has
several candidate teachers: sizes, and early checkpoints of one teacher's training (`mlp-128-epoch10`).
For each candidate the best distillation method is chosen on validation, as in the pair verdict (the
best validation mean over the confirmation seeds). Those picks and scratch (the floor: no teacher)
are then compared with the pair verdict's own statistics (akd_ray.verdict): selection on validation by
a t-test over seeds and validation examples against the best, Holm-corrected over the best-vs-each
comparisons (verdict.decide_on_validation: a better arm is never tied); test only reported, best minus
each by the seeds × test-examples t-interval, Holm-corrected. Among
the candidates validation cannot tell from the best, the cheapest teacher (fewest parameters; a
smaller teacher costs less to run) is recommended. Runs pair by seed: only seeds both arms finished
count, so a failed seed drops out of that comparison and is named.

Cho & Hariharan (ICCV 2019), "On the Efficacy of Knowledge Distillation": larger teachers are often
worse teachers of small students, and an early-stopped teacher can distil better than the converged one.

Files: `teacher_student.csv` (one row per candidate teacher and student: the best method's validation
gain over scratch in points, the pick marked) and `teacher_student.png` (that map as a heatmap, and the
gain against teacher size: the capacity-gap curve along the teacher axis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from akd_ray import stats
from akd_ray.config import Study
from akd_ray.figures import save as _save
from akd_ray.tasks.metrics import primary_metric
from akd_ray.verdict import (MIN_SEEDS, NAMES, MethodResult, Verdict, compare_on_test,
                             decide_on_validation, describe, method_interval, method_result, planned_looks)

SCRATCH = "scratch"  # the floor's key beside the candidates': no teacher
MAP_CSV, MAP_PNG = "teacher_student.csv", "teacher_student.png"


@dataclass
class TeacherChoice:
    """One student's verdict across candidate teachers."""
    student: str
    results: dict[str, MethodResult]  # candidate -> its best distillation method's result; SCRATCH -> the floor
    methods: dict[str, str]  # candidate -> that method
    costs: dict[str, float]  # candidate -> teacher parameters (NaN where unknown)
    converged: list[str] = field(default_factory=list)  # the candidates that are converged teachers
    teacher: str | None = None  # the recommended teacher; None: no teacher (scratch), or no verdict
    decided: bool = False  # ahead of every other candidate and scratch on validation beyond noise
    text: str = ""
    tied: list[str] = field(default_factory=list)  # cannot be told from the best on validation
    differences: dict[str, stats.Difference] = field(default_factory=dict)  # on test: pick - other, Holm
    levels: dict[str, float] = field(default_factory=dict)

    @property
    def method(self) -> str | None:
        return self.methods.get(self.teacher) if self.teacher else (SCRATCH if SCRATCH in self.results else None)

    @property
    def pick(self) -> MethodResult | None:
        return self.results.get(self.teacher or SCRATCH)

    def gain(self, candidate: str) -> float:
        """The candidate's best method's validation mean minus scratch's, in points (NaN if either is missing)."""
        r, s = self.results.get(candidate), self.results.get(SCRATCH)
        return 100 * (r.val - s.val) if r is not None and s is not None and r.n and s.n else math.nan

    def as_verdict(self) -> Verdict | None:
        """The pick as a pair verdict of (teacher, student), for the registry's description."""
        if self.pick is None or self.method is None:
            return None
        return Verdict(self.teacher or "none", self.student, {self.method: self.pick}, self.method, self.decided,
                       self.text, {}, None)


# ---------------------------------------------------------------------------------------- rows
def share_scratch(study: Study, rows: list[dict]) -> list[dict]:
    """A shared scratch (config.Study.shared_scratch: searched once per student) joins every pair of its
    student, so each pair verdict has its floor. Idempotent: a pair holding scratch rows is left alone."""
    holder = study.shared_scratch
    if holder is None:
        return rows
    have = {(r["teacher"], r["student"]) for r in rows if r["method"] == SCRATCH}
    shared = [r for r in rows if r["method"] == SCRATCH and r["teacher"] == holder]
    extra = [{**r, "teacher": t, "shared_from": holder} for t, s in study.pairs if t != holder and (t, s) not in have
             for r in shared if r["student"] == s]
    return rows + extra


def _best_distillation(study: Study, rows: list[dict]) -> tuple[str, MethodResult] | None:
    """One pair's best distillation method, chosen on validation as the pair verdict chooses: confirmed
    methods by their validation mean over the seeds; search-only ones when none was confirmed."""
    results = {m: method_result(study, rows, m) for m in study.search.methods if m != SCRATCH}
    ran = {m: r for m, r in results.items() if r.n}
    pool = {m: r for m, r in ran.items() if r.confirmed} or ran
    if not pool:
        return None
    m = max(pool, key=lambda k: pool[k].val)
    return m, pool[m]


# ---------------------------------------------------------------------------------------- the verdict
def choose_teacher(study: Study, student: str, rows: list[dict],
                   quality: dict[str, dict] | None = None) -> TeacherChoice:
    """The verdict for `student` across every candidate teacher of the study (see the module)."""
    candidates = [t for t, s in study.pairs if s == student]
    quality = quality or {}
    choice = TeacherChoice(student, {}, {}, {c: float(quality.get(c, {}).get("parameters", math.nan))
                                             for c in candidates},
                           converged=[c for c in candidates if study.candidates[c].snapshot is None])
    for c in candidates:
        best = _best_distillation(study, [r for r in rows if (r["teacher"], r["student"]) == (c, student)])
        if best is not None:
            choice.methods[c], choice.results[c] = best
    floor = [r for r in rows if r["student"] == student and r["method"] == SCRATCH and r["teacher"] ==
             next((t for t in candidates if any(x["teacher"] == t and x["student"] == student and
                                                x["method"] == SCRATCH for x in rows)), None)]
    if floor:
        choice.results[SCRATCH] = method_result(study, floor, SCRATCH)
    confirmed = {k: r for k, r in choice.results.items() if r.confirmed}
    teachers = [k for k in confirmed if k != SCRATCH]
    if not teachers:
        return _unconfirmed(study, choice)
    for r in confirmed.values():  # each arm's interval as the pair verdict prints it
        r.low, r.high = method_interval(study, r)
    # the pair verdict's decision: on the seeds every arm finished, at its level (Bonferroni over racing's looks)
    alpha = (1 - stats.LEVEL) / len(planned_looks(study))
    top, choice.tied, _ = decide_on_validation(confirmed, alpha, primary_metric(study.task.name))
    fewest = min(r.finished for r in confirmed.values())
    tied_teachers = [k for k in choice.tied if k != SCRATCH]
    if fewest < MIN_SEEDS:
        choice.teacher = top if top != SCRATCH else max(teachers, key=lambda k: confirmed[k].val)
    elif top == SCRATCH and len(choice.tied) == 1:
        choice.teacher = None
    else:
        choice.teacher = min(tied_teachers or teachers, key=lambda k: _cost_key(choice, k))
    arm = choice.teacher or SCRATCH
    choice.differences, choice.levels = compare_on_test(study, confirmed, arm)
    choice.text = _text(study, choice, top, fewest, candidates)
    return choice


def _cost_key(choice: TeacherChoice, k: str) -> tuple[float, float]:
    """Cheapest first (fewest teacher parameters; unknown last), then the better validation mean."""
    cost = choice.costs.get(k, math.nan)
    return (math.inf if cost != cost else cost, -choice.results[k].val)


def _unconfirmed(study: Study, choice: TeacherChoice) -> TeacherChoice:
    ran = {k: r for k, r in choice.results.items() if r.n and k != SCRATCH}
    if not ran:
        choice.text = f"no candidate teacher has a finished run for {choice.student}: no verdict"
        return choice
    choice.teacher = max(ran, key=lambda k: ran[k].val)
    choice.text = (f"{choice.teacher} ({_method_text(choice, choice.teacher)}) has the best validation score for "
                   f"{choice.student}, not confirmed over seeds (search.confirm_seeds: {study.search.confirm_seeds}): "
                   "cannot tell")
    return choice


def _method_text(choice: TeacherChoice, k: str) -> str:
    return describe(choice.methods[k], choice.results[k].config) if k in choice.methods else NAMES[SCRATCH]


def _text(study: Study, choice: TeacherChoice, top: str, fewest: int, candidates: list[str]) -> str:
    s, pick = choice.student, choice.teacher
    others = [k for k in choice.tied if k not in (pick, SCRATCH)]
    if pick is None:
        text = f"scratch is best on validation for {s}, ahead of every teacher: distillation does not help it"
    else:
        head = f"distil {s} from {pick} with {_method_text(choice, pick)}"
        if fewest < MIN_SEEDS:
            text = (f"{head}: the best validation mean, but too few seeds to tell (n = {fewest}; the verdict needs "
                    f"search.confirm_seeds >= {MIN_SEEDS})")
        elif len(choice.tied) == 1:
            choice.decided = SCRATCH in choice.results and all(
                choice.results.get(c) is not None and choice.results[c].confirmed for c in candidates)
            text = head
        else:
            tied = ", ".join(others + ([SCRATCH] if SCRATCH in choice.tied else []))
            text = (f"no teacher is clearly better on validation: {pick} cannot be told from {tied}; "
                    f"{pick}, the cheapest of them, is recommended: {head}")
            if SCRATCH in choice.tied:
                text += f" (scratch is within noise: distillation does not clearly help {s})"
    return text + _test_line(choice, candidates) + _notes(choice, candidates)


def _reference(choice: TeacherChoice, candidates: list[str]) -> str | None:
    """The teacher a user would reach for without this study: the largest converged one."""
    converged = [c for c in candidates if c in choice.costs and c in choice.converged and c in choice.differences]
    return max(converged, key=lambda c: _cost_key(choice, c)[0] if _cost_key(choice, c)[0] != math.inf else -1,
               default=None)


def _test_line(choice: TeacherChoice, candidates: list[str]) -> str:
    ref = _reference(choice, candidates)
    shown = [k for k in (ref, SCRATCH) if k is not None and k in choice.differences]
    parts = []
    for k in shown:
        d, level = choice.differences[k], choice.levels[k]
        name = f"the converged {k}" if k != SCRATCH and len(choice.converged) < len(candidates) else k
        ci = f"{100 * level:.3g}% CI {_pts(d.low)}…{_pts(d.high)}"
        parts.append(f"{_pts(d.estimate)} points over {name} ({ci})" if d.low > 0 else
                     f"{_pts(d.estimate)} points below {name} ({ci})" if d.high < 0 else
                     f"within noise of {name} ({_pts(d.estimate)}, {ci})")
    return f"; on test: {'; '.join(parts)}" if parts else ""


def _notes(choice: TeacherChoice, candidates: list[str]) -> str:
    notes = []
    for c in candidates:
        r = choice.results.get(c)
        if r is None:
            notes.append(f"{c} has no finished run: it is missing from the comparison")
        elif not r.confirmed:
            notes.append(f"{c} has no finished confirmation run: it is missing from the comparison")
    for k, r in choice.results.items():
        if r.confirmed and r.run > r.finished:
            what = NAMES[SCRATCH] if k == SCRATCH else f"{NAMES[choice.methods[k]]} from {k}"
            notes.append(f"{what} failed on {r.run - r.finished} of {r.run} seeds (compared on the "
                         f"{r.finished} that finished)")
    if SCRATCH not in choice.results:
        notes.append("scratch has no finished run: whether distillation helps cannot be said")
    return " — " + "; ".join(notes) if notes else ""


def _pts(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:+.1f}"


def choose_teachers(study: Study, rows: list[dict], quality: dict[str, dict] | None = None) -> list[TeacherChoice]:
    """One verdict per student where the study has more than one candidate teacher (named students; a
    student family's size search answers another question); else none."""
    if len(study.candidates) < 2 or study.family is not None:
        return []
    rows = share_scratch(study, rows)
    return [choose_teacher(study, s, rows, quality) for s in study.students]


# ---------------------------------------------------------------------------------------- the map
def map_rows(study: Study, choices: list[TeacherChoice], quality: dict[str, dict] | None = None) -> list[dict]:
    """One row per (candidate teacher, student): the best method's validation gain over scratch, the pick."""
    quality = quality or {}
    out = []
    for ch in choices:
        for c in (t for t, s in study.pairs if s == ch.student):
            cand, r = study.candidates[c], ch.results.get(c)
            out.append({
                "teacher": c, "of": cand.teacher,
                "checkpoint": "converged" if cand.snapshot is None else (
                    f"epoch {cand.epoch}" if cand.epoch else f"snapshot {cand.snapshot + 1}"),
                "teacher_parameters": quality.get(c, {}).get("parameters", ""),
                "teacher_val": _num(100 * quality[c]["val"]) if c in quality else "",
                "student": ch.student, "method": ch.methods.get(c, ""),
                "config": describe(ch.methods[c], r.config) if r is not None else "",
                "val_gain_over_scratch": _num(ch.gain(c)),
                "val_mean": _num(100 * r.val) if r is not None and r.n else "",
                "test_mean": _num(100 * r.mean) if r is not None and r.n else "",
                "seeds": f"{r.finished}/{r.run}" if r is not None else "",
                "tied": c in ch.tied, "pick": c == ch.teacher,
            })
    return out


def _num(x: float) -> float | str:
    return "" if x != x else round(x, 2)


def plot_map(study: Study, choices: list[TeacherChoice], records: list[dict], path: Path,
             quality: dict[str, dict] | None = None) -> Path:
    """Left: the heatmap (candidate teacher x student, each cell the best method's validation gain over
    scratch in points; the pick of each student boxed). Right: that gain against the teacher's parameters
    per student and checkpoint -- the capacity-gap curve along the teacher axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    quality = quality or {}
    teachers = list(dict.fromkeys(r["teacher"] for r in records))
    students = [ch.student for ch in choices]
    grid = np.full((len(teachers), len(students)), np.nan)
    for r in records:
        if r["val_gain_over_scratch"] != "":
            grid[teachers.index(r["teacher"]), students.index(r["student"])] = r["val_gain_over_scratch"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(5 + 2.2 * len(students), 0.5 * len(teachers) + 2.5),
                                  gridspec_kw={"width_ratios": [max(1, len(students)), 2]})
    span = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
    im = ax.imshow(grid, cmap="RdBu", vmin=-span, vmax=span, aspect="auto")
    for i, t in enumerate(teachers):
        for j, s in enumerate(students):
            if grid[i, j] == grid[i, j]:
                ax.text(j, i, f"{grid[i, j]:+.1f}", ha="center", va="center", fontsize=8,
                        color="w" if abs(grid[i, j]) > 0.6 * span else "k")  # readable on the darkest cells
    for j, ch in enumerate(choices):
        if ch.teacher in teachers:
            ax.add_patch(plt.Rectangle((j - 0.5, teachers.index(ch.teacher) - 0.5), 1, 1, fill=False, lw=2.5,
                                       ec="k"))
    ax.set_xticks(range(len(students)), [f"student {s}" for s in students])
    ax.set_yticks(range(len(teachers)), teachers)
    ax.set_title("best method's val gain over scratch (points);\nbox: the pick of each student", fontsize=9)
    fig.colorbar(im, ax=ax, label="points")
    for s in students:
        for converged in (True, False):
            pts = sorted((float(r["teacher_parameters"]), r["val_gain_over_scratch"]) for r in records
                         if r["student"] == s and (r["checkpoint"] == "converged") == converged
                         and r["teacher_parameters"] != "" and r["val_gain_over_scratch"] != "")
            if pts:
                x, y = zip(*pts)
                ax2.plot(x, y, "o-" if converged else "s--",
                         label=f"{s}, {'converged teachers' if converged else 'early checkpoints'}")
    ax2.axhline(0, color="grey", lw=0.8)
    ax2.set(xscale="log", xlabel="teacher parameters", ylabel="val gain over scratch (points)",
            title="capacity gap along the teacher axis")
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=7)
    return _save(fig, path)


def write(study: Study, rows: list[dict], folder: Path,
          quality: dict[str, dict] | None = None) -> tuple[list[Path], list[str]]:
    """The map's files under `folder` and the summary's lines (one "which teacher" verdict per student);
    nothing where the study has one candidate teacher."""
    import csv

    choices = choose_teachers(study, rows, quality)
    if not choices:
        return [], []
    records = map_rows(study, choices, quality)
    with open(folder / MAP_CSV, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(records[0]))
        w.writeheader()
        w.writerows(records)
    files = [folder / MAP_CSV, plot_map(study, choices, records, folder / MAP_PNG, quality)]
    lines = ["which teacher (see teacher_student.csv / .png):",
             *(f"  {ch.student}: {ch.text}" for ch in choices)]
    return files, lines


def summary_of(choice: TeacherChoice) -> dict[str, Any]:
    """The choice's numbers for MLflow, in points: the pick's test mean and interval, its gain over scratch."""
    pick, nan = choice.pick, math.nan
    out = {"pick.mean": nan, "pick.std": nan, "pick.ci95_low": nan, "pick.ci95_high": nan, "pick.seeds": 0.0}
    if pick is not None and pick.n:
        out.update({"pick.mean": 100 * pick.mean, "pick.std": 100 * pick.std, "pick.ci95_low": 100 * pick.low,
                    "pick.ci95_high": 100 * pick.high, "pick.seeds": float(pick.n)})
    d = choice.differences.get(SCRATCH)
    zero = choice.teacher is None and SCRATCH in choice.results
    out.update({"gain_over_scratch": 0.0 if zero else (100 * d.estimate if d else nan),
                "gain_over_scratch.ci_low": 0.0 if zero else (100 * d.low if d else nan),
                "gain_over_scratch.ci_high": 0.0 if zero else (100 * d.high if d else nan)})
    return out
