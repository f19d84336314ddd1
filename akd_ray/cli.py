"""`akd-ray`: thin commands over library calls. All user-facing output goes through `say`
(the live view of a running study is akd_ray.progress).

Exit codes: 0 done; 1 a trial or the study failed; 2 bad input (a study, its data or models, a
`--set`, the command line) -- one short message, no traceback; 130/143 interrupted (Ctrl-C/SIGTERM).
"""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

try:  # typer >= 0.20 carries its own click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors

from akd_ray.config import ConfigError, Study, load_study

EXIT_FAILED, EXIT_BAD_INPUT = 1, 2

app = typer.Typer(
    add_completion=False, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Annealing Knowledge Distillation studies on Ray Tune + Optuna, tracked in MLflow.\n\n"
         "Exit codes: 0 done, 1 a trial or the study failed, 2 bad input, 130/143 interrupted.")

StudyArg = Annotated[Path, typer.Argument(help="A study file, e.g. studies/quickstart.yaml. Relative paths in it "
                                               "(search.space, task.data_dir, storage, ...) are relative to it.",
                                          metavar="STUDY", show_default=False)]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="KEY.PATH=VALUE", show_default=False,
    help="Override a study field, e.g. --set train.epochs=5. Repeat it for several fields. The value is read as "
         "YAML: 5, 0.1, true, null, [8, 8], {kd: 2}.")]
AddressOpt = Annotated[Optional[str], typer.Option(
    help="Ray cluster address (e.g. ray://head:10001 or auto); default $RAY_ADDRESS, else a local Ray on this "
         "machine.", metavar="ADDRESS", show_default=False)]


def say(text: str = "", err: bool = False) -> None:
    typer.echo(text, err=err)


def _bad_input(message: str) -> typer.Exit:
    say(f"error: {message}", err=True)
    return typer.Exit(EXIT_BAD_INPUT)


def _load(path: Path, overrides: list[str] | None) -> Study:
    try:
        return load_study(path, overrides or [])
    except ConfigError as e:
        raise _bad_input(str(e)) from None


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version
        say(f"akd-ray {version('akd-ray')}")
        raise typer.Exit()


@app.callback()
def main_options(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                       help="Print the version and exit.")] = False) -> None:
    """Annealing Knowledge Distillation studies on Ray Tune + Optuna, tracked in MLflow."""


@app.command()
def validate(study: StudyArg, set: SetOpt = None, address: Annotated[Optional[str], typer.Option(
        help="The Ray cluster `tune` will use (default $RAY_ADDRESS): one trial is then not checked against "
             "this machine; `tune` checks it on the cluster once connected.", metavar="ADDRESS",
        show_default=False)] = None) -> None:
    """Check a study and everything it points to, without training; print the plan.

    Checks the study file and search space, the data (GLUE columns and labels, ImageFolder classes and
    images), every model (local folder, or a hub id in the cache or on the hub; a teacher's weights
    open), that the global batch splits over the workers, that the storage can be written, the MLflow
    URI, and whether one trial fits this machine. Starts nothing, writes nothing.

    Exit 2: the study is wrong. Exit 0 with a warning: the study is valid but this machine cannot run
    a trial (e.g. no GPU); run it on a cluster with --address (`tune` here refuses).
    """
    from akd_ray.preflight import check

    s = _load(study, set)
    try:
        plan = check(s, address, machine="warn")
    except ConfigError as e:
        raise _bad_input(str(e)) from None
    say(f"{study}: valid")
    for line in plan.lines():
        say(f"  {line}")
    for warning in plan.warnings:  # valid, but not runnable here: exit 0, `tune` refuses
        say(f"warning: {warning}", err=True)


@app.command()
def tune(study: StudyArg, set: SetOpt = None, address: AddressOpt = None,
         fresh: Annotated[bool, typer.Option("--fresh", help="Start the study over in the same storage; its old "
                                             "results are kept under <storage>/<name>-<date>. Needed after the "
                                             "study or its search space changed.")] = False,
         verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray Tune's own status tables on "
                                               "the terminal, as Tune prints them, instead of the live view "
                                               "(without it they go to <storage>/<name>/tune.log).")] = False) -> None:
    """Run a study on Ray: teachers, per-pair search, confirmation over seeds, MLflow, report.

    Runs the same checks as `validate` first. Results go to <storage>/<name>/ (storage is relative to the
    study file): report/, tune/, teachers/, the MLflow store, tune.log and status.json. Running it again
    resumes the study: finished trials are not run again. `akd-ray status STUDY` shows progress from
    another shell.

    Ctrl-C (or SIGTERM) stops the running trials at their last checkpoint and exits 130 (143); run the
    same command again to resume. A second Ctrl-C stops at once.

    One `tune` per study at a time: a second one exits 2 naming the running one. A rerun after the
    study or its search space changed exits 2 naming the change (see --fresh).
    """
    from akd_ray.preflight import check
    from akd_ray.study.fingerprint import check_rerun
    from akd_ray.study.layout import Layout
    from akd_ray.study.lock import StudyLock

    s = _load(study, set)
    lock = StudyLock(Layout.of(s).root, s.name, study)
    try:
        lock.refuse_if_held()  # a running study is refused in seconds, before the checks (which make nothing)
        plan = check(s, address)
        lock.acquire()
        old = check_rerun(lock.path.parent, s, plan.space, fresh)
    except ConfigError as e:
        lock.release()
        raise _bad_input(str(e)) from None
    if old is not None:
        say(f"starting over; the old results are in {old}")
    try:
        _tune(study, s, plan, address, verbose)
    finally:
        lock.release()


def _tune(study: Path, s: Study, plan, address: str | None, verbose: bool) -> None:
    from akd_ray.study import StudyStopped, run_study
    from akd_ray.tracking import TrackingError

    say(f"{study}: {plan.search_trials} search trials + up to {plan.confirm_runs} confirmation runs; "
        f"results in {Path(s.storage) / s.name}")
    try:
        result = run_study(s, address=address, say=say, plan=plan, verbose=verbose)
    except (ConfigError, TrackingError) as e:
        raise _bad_input(str(e)) from None
    except StudyStopped as e:
        say(f"stopped: {e}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
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
    if failed:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def status(study: StudyArg, set: SetOpt = None) -> None:
    """How far a study is, from its storage alone: phase, trials per pair and method by state, best
    validation so far, failures with their reason. Works while `tune` runs (from another shell) or after."""
    from akd_ray.progress import read_status, status_lines
    from akd_ray.study.layout import Layout

    s = _load(study, set)
    root = Path(s.storage) / s.name
    found = read_status(root)
    if found is None:
        from akd_ray.study.lock import holder_of

        holder = holder_of(Layout.of(s).root)
        say(f"{study}: starting (pid {holder.get('pid', '?')}, started {holder.get('started', '?')})" if holder is not None
            else f"{study}: no run yet under {root} (start it with `akd-ray tune {study}`)")
        return
    for line in status_lines(found):
        say(line)


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
        raise _bad_input(str(e)) from None
    files = write_report(s, rows, folder, teachers)
    say((folder / "summary.txt").read_text())
    say("written: " + ", ".join(str(f) for f in files))


@app.command()
def ui(study: StudyArg, port: Annotated[int, typer.Option(help="Port of the UI on 127.0.0.1.")] = 5000,
       open_: Annotated[bool, typer.Option("--open", help="Open the address in a web browser too.")] = False,
       optuna: Annotated[bool, typer.Option("--optuna", help="Also serve optuna-dashboard on the study's Optuna "
                                            "storage, on --port + 1 (pip install 'akd-ray[dashboard]').")] = False,
       set: SetOpt = None) -> None:
    """Serve the study's MLflow store (on 127.0.0.1) and print the address of its answer: the pair runs,
    one row per teacher-student pair with the recommended method, whether it is decided, its mean and
    interval in points. MLflow's own output goes to <storage>/<name>/ui.log.

    A study that tracks to a server (`mlflow.tracking_uri: http://...`) is not served again: the
    address is on that server. Reads the study without its lock: works while `tune` runs.
    """
    from akd_ray.config import tracking_uri
    from akd_ray.study.layout import Layout, optuna_storage

    s = _load(study, set)
    uri, layout = tracking_uri(s), Layout.of(s)
    if optuna and importlib.util.find_spec("optuna_dashboard") is None:
        raise _bad_input("--optuna: optuna-dashboard is not installed; pip install 'akd-ray[dashboard]'")
    local = not uri.startswith("http")
    if local and uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise _bad_input(f"{study}: no MLflow store yet at {uri} (run `akd-ray tune {study}` first)")
    from akd_ray.tracking.ui import serve_optuna, serve_store, study_url

    log = layout.root / "ui.log"
    servers = []
    try:
        if local:
            servers.append((serve_store(uri, port, log), f"http://127.0.0.1:{port}", "/health"))
        if optuna:
            servers.append((serve_optuna(optuna_storage(s), port + 1, log), f"http://127.0.0.1:{port + 1}", "/"))
        base = servers[0][1] if local else uri
        url = study_url(s, base)  # while the servers start
        for server, address, path in servers:
            if not _wait_health(address, server, path, log):
                raise typer.Exit(EXIT_FAILED)
        _show(url, base, open_)
        if optuna:
            say(f"optuna-dashboard, each search's history: {servers[-1][1]}")
        if servers:
            say(f"(Ctrl-C stops it; MLflow's own output: {log})")
            servers[0][0].wait()
    except KeyboardInterrupt:
        pass
    finally:
        for server, _, _ in servers:
            if server.poll() is None:
                server.terminate()
                server.wait(timeout=30)


def _show(url: str | None, base: str, open_: bool) -> None:
    if url is None:
        say(f"MLflow UI: {base} (the study has no experiment there yet: run `akd-ray tune` first)")
        url = base
    else:
        say(f"the study's answer, one row per pair: {url}")
    if open_:
        import webbrowser
        webbrowser.open(url)


def _wait_health(base: str, server: subprocess.Popen, path: str, log: Path, timeout_s: float = 120) -> bool:
    """True once the UI answers; False (with the reason said) if it exits or never answers."""
    from akd_ray.tracking.store import wait_healthy

    why = wait_healthy(server, base, timeout_s, path=path)
    if why is None:
        return True
    if why.startswith("exited"):
        say(f"error: the UI at {base} {why} (is port {base.rsplit(':', 1)[1]} taken? try --port; see {log})", err=True)
    else:
        say(f"error: the UI did not answer at {base} within {timeout_s:.0f} s (see {log})", err=True)
    return False


def main() -> None:
    """The `akd-ray` command: a usage error is one line (and exit 2), never a box or a traceback."""
    try:
        code = app(standalone_mode=False)  # a command's typer.Exit comes back as its exit code
    except click_errors.NoArgsIsHelpError as e:
        say(e.ctx.get_help())
        code = 0
    except typer.Abort:  # Ctrl-C while click itself had control
        say("interrupted", err=True)
        code = 130
    except click_errors.ClickException as e:
        ctx = getattr(e, "ctx", None)
        say(f"error: {e.format_message()}" + (f" (see: {ctx.command_path} -h)" if ctx is not None else ""), err=True)
        code = e.exit_code
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
