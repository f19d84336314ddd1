"""The "which teacher" runs: one per student under the study run, named `<student> ← which teacher`,
carrying akd_ray.teacher_verdict's pick with the pair runs' names (so the UI's pair view lists them
beside the pairs): `pick.teacher`, `pick.method`, `pick.<knob>` params; `pick.mean`, `pick.ci95_low`,
`pick.ci95_high`, `pick.seeds`, `gain_over_scratch` (with its interval) metrics in points; `recommended`,
`verdict`, `decided`, `registered_model` tags; the verdict and one row per candidate teacher as its
description."""

from __future__ import annotations

from mlflow.entities import Metric
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from akd_ray.tracking.store import STUDY_TAG, _log_batch, _now_ms, client_for
from akd_ray.tracking.study_run import _registered, _signed, pair_run

WHICH_TEACHER = "which teacher"  # the run's teacher slot: `mlp-16 ← which teacher`
KIND_TAG = "akd.kind"


def log_teacher_choices(parent_run_id: str, choices: list) -> list[str]:
    """Each student's "which teacher" run, FINISHED, with its pick; returns the run ids."""
    from akd_ray.teacher_verdict import summary_of
    from akd_ray.tracking.registry import student_model_name

    client = client_for()
    study_name = client.get_run(parent_run_id).data.tags.get(STUDY_TAG, "")
    ids = []
    for c in choices:
        run_id = pair_run(client, parent_run_id, WHICH_TEACHER, c.student)
        pick = c.pick
        params = {"pick.teacher": c.teacher or "none (scratch)", "pick.method": c.method or "none",
                  **{f"pick.{k}": v for k, v in (pick.config if pick is not None else {}).items()}}
        held = client.get_run(run_id).data.params
        model = _registered(client, study_name, None, c.student, student_model_name(study_name, c.student))
        tags = {KIND_TAG: "which-teacher", "verdict": c.text, "decided": str(c.decided).lower(),
                "recommended": recommended(c), MLFLOW_RUN_NOTE: note(c, model)}
        if model is not None:
            tags["registered_model"] = model
        _log_batch(client, run_id, params={k: v for k, v in params.items() if k not in held},
                   metrics=[Metric(k, round(float(v), 2), _now_ms(), 0) for k, v in summary_of(c).items()], tags=tags)
        client.set_terminated(run_id, status="FINISHED")
        ids.append(run_id)
    return ids


def recommended(c) -> str:
    """`mlp-128-epoch10: Annealing-KD tau_max 3, step — decided`, or `scratch (no teacher) — not decided (no
    teacher clearly better)`: the certainty in words, as the pair runs' `recommended` says it."""
    if c.pick is None:
        return "none"
    return f"{_pick(c)} — " + ("decided" if c.decided else "not decided (no teacher clearly better)")


def _pick(c) -> str:
    from akd_ray.verdict import describe

    return f"{c.teacher}: {describe(c.method, c.pick.config)}" if c.teacher else "scratch (no teacher)"


def note(c, model: str | None = None) -> str:
    """The run's description (Markdown): the verdict, then one row per candidate teacher and scratch."""
    from akd_ray.teacher_verdict import SCRATCH

    verb = "use" if c.decided else "no teacher clearly better; recommended"
    lines = [f"**{c.student} ← which teacher: {verb} {_pick(c) if c.pick is not None else 'none'}**", "", c.text, "",
             "| teacher | method | val gain over scratch (points) | test mean (points) | seeds finished/run | "
             "pick − this on test (seeds × test examples, Holm) |", "|---|---|---|---|---|---|"]
    for k, r in c.results.items():
        d = c.differences.get(k)
        gain = "—" if k == (c.teacher or SCRATCH) or d is None else f"{_signed(d.estimate)} ({_signed(d.low)}…{_signed(d.high)})"
        name = f"**{k}** (pick)" if k == (c.teacher or SCRATCH) else k
        val = "0 (the floor)" if k == SCRATCH else f"{c.gain(k):+.2f}"
        lines.append(f"| {name} | {c.methods.get(k, SCRATCH)} | {val} | {100 * r.mean:.2f} | {r.finished}/{r.run} "
                     f"| {gain} |")
    if model is not None:
        lines += ["", f"Registered student: `{model}` (alias `best`)"]
    return "\n".join(lines)
