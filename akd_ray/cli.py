"""`akd-ray`: thin commands over library calls. All user-facing output goes through `say`."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from akd_ray.config import ConfigError, Study, load_study

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Annealing Knowledge Distillation studies on Ray Tune + Optuna, tracked in MLflow.")

StudyArg = Annotated[Path, typer.Argument(help="a study file, e.g. studies/quickstart.yaml")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override a study field: KEY.PATH=VALUE")]


def say(text: str = "", err: bool = False) -> None:
    typer.echo(text, err=err)


def _load(path: Path, overrides: list[str] | None) -> Study:
    try:
        return load_study(path, overrides or [])
    except ConfigError as e:
        say(f"error: {e}", err=True)
        raise typer.Exit(2) from None


@app.command()
def validate(study: StudyArg, set: SetOpt = None) -> None:
    """Check a study file and its search space; start nothing."""
    from akd_ray.study import budgets, validate as check

    s = _load(study, set)
    try:
        space = check(s)
    except ConfigError as e:
        say(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    budget = budgets(s, space)
    say(f"{study}: valid -- task {s.task.name}, {len(s.pairs)} pair(s), methods "
        f"{', '.join(f'{m} x{n}' for m, n in budget.items())}, {len(space.params)} searched parameter(s)")
    for m, n in s.search.trials.items():
        if budget[m] != n:
            say(f"  {m}: the search space has no parameter for it, so it runs once per pair (trials: {n} -> 1)")


@app.command()
def tune(study: StudyArg, address: Annotated[Optional[str], typer.Option(help="Ray cluster address; "
         "default RAY_ADDRESS, else a local Ray")] = None, set: SetOpt = None) -> None:
    """Run (or resume) a study on Ray: teachers, per-pair search, confirmation, MLflow, report.

    Ctrl-C (or SIGTERM) stops the running trials at their last checkpoint and exits 130 (143); run
    the same command again to resume. A second Ctrl-C stops at once.
    """
    from akd_ray.study import StudyStopped, run_study
    from akd_ray.tracking import TrackingError

    s = _load(study, set)
    try:
        result = run_study(s, address=address, say=say)
    except (ConfigError, TrackingError) as e:
        say(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except StudyStopped as e:
        say(f"stopped: {e}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt as e:
        where = getattr(e, "where", "the study")
        again = shlex.join(["akd-ray", *sys.argv[1:]]) if sys.argv[1:2] == ["tune"] else f"akd-ray tune {study}"
        say(f"interrupted during {where}. Finished trials are kept and the MLflow runs of the unfinished "
            f"ones are marked KILLED; no report was written. Resume with: {again}", err=True)
        raise typer.Exit(getattr(e, "exit_code", 130)) from None
    say()
    say((result.layout.report / "summary.txt").read_text())
    failed = [r for r in result.rows if r.get("error")]
    if failed:
        say(f"{len(failed)} trial(s) failed; see the MLflow runs tagged akd.error")
        for r in failed:  # the traceback's last line says why
            say(f"  {r.get('trial_id', '?')} {r['method']} {r['teacher']}->{r['student']}: "
                f"{r['error'].strip().splitlines()[-1]}")
    say(f"report:  {result.layout.report / 'pairs.md'}")
    say(f"results: {result.layout.root}\nMLflow:  {result.tracking_uri}  (browse: akd-ray ui {study})")


@app.command()
def teacher(study: StudyArg, set: SetOpt = None) -> None:
    """Prepare the study's teachers only (train, fine-tune or load), reusing ready ones."""
    from akd_ray.study import Layout
    from akd_ray.teacher import prepare_teacher, teacher_info

    s = _load(study, set)
    for name, spec in s.teachers.items():
        folder = prepare_teacher(name, spec, s.task, Layout.of(s).root, s.seed)
        info = teacher_info(folder)
        metric = info.get("metrics", {}).get("test_metric")
        say(f"{name}: {folder}" + (f"  (test metric {metric:.4f})" if metric is not None else ""))


@app.command()
def report(study: StudyArg, set: SetOpt = None) -> None:
    """Print the per-pair table and write CSV, Markdown and plots under the study's report folder."""
    from akd_ray.report import load_rows, write_report
    from akd_ray.study import Layout

    s = _load(study, set)
    folder = Layout.of(s).report
    try:
        rows, teachers = load_rows(folder)
    except FileNotFoundError as e:
        say(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    files = write_report(s, rows, folder, teachers)
    say((folder / "summary.txt").read_text())
    say("written: " + ", ".join(str(f) for f in files))


@app.command()
def ui(study: StudyArg, port: int = 5000, set: SetOpt = None) -> None:
    """Open the study's MLflow store in the MLflow UI (on 127.0.0.1)."""
    from akd_ray.tracking import tracking_uri

    s = _load(study, set)
    uri = tracking_uri(s)
    if uri.startswith("http"):
        say(f"the study tracks to a server: open {uri}")
        return
    say(f"MLflow UI for {uri} on http://127.0.0.1:{port}")
    os.execvp(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                               "--host", "127.0.0.1", "--port", str(port)])


if __name__ == "__main__":
    app()
