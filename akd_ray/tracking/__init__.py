"""MLflow, in one package, one job per file; only the study's driver calls it.

    study   -> experiment `mlflow.experiment` (default: the study name)            study_run.py
               parent run tagged `akd.study=<name>`: study file, search space, code version,
               teachers, the report, the verdict per pair
    pair    -> a run `<student> ← <teacher>` under the study run, its trials under it;  study_run.py
               at the end the pair's pick: params/metrics in points (the same names for every
               pair), the verdict as its description, the registered model's URI
    trial   -> child run (`mlflow.parentRunId`, `akd.trial_id`): config as params,    callback.py
               per-epoch metrics at step = epoch, FINISHED / FAILED / KILLED
    which   -> a run `<student> ← which teacher` per student (teachers as a dimension):  teacher_runs.py
               the teacher verdict's pick, with the pair runs' names, so the pair view lists it
    best    -> registered model `<study>-<teacher>-<student>`, alias `best`         registry.py
               (and `<study>-<student>`: the student of the picked teacher and method)
               a pyfunc on raw inputs that loads without Ray                       student.py
    where   -> tracking URI, reachability, batched writes, fail-fast HTTP           store.py
    the UI  -> the pair view saved on the experiment, the address that opens it     ui.py

Everything is idempotent by tag, so a resumed study or a restarted trial reuses its runs.
`start_study` makes the study's tracking URI the process default, which the later calls use. The
trial callback never lets an unreachable server stop a study: failed calls stay buffered, in order,
are retried, and are spooled to disk if the server is still away at the end of a phase.

Importing this package does not import Ray: `MlflowCallback` (a Tune callback) loads on first use.
"""

from akd_ray.tracking.registry import model_name, register_best
from akd_ray.tracking.store import (ALIAS, ERROR_TAG, OUTCOME_TAG, PAIR_TAG, STUDY_RUN_TAG, STUDY_TAG, TRIAL_TAG,
                                    TrackingError,
                                    callback_env, check_reachable, client_for, env_defaults, study_dir,
                                    tracking_uri)
from akd_ray.tracking.student import StudentModel, load_student, text_columns
from akd_ray.tracking.study_run import (code_version, finish_study, log_picks, log_report, log_teachers, pair_run,
                                        start_study)
from akd_ray.tracking.teacher_runs import log_teacher_choices

__all__ = ["ALIAS", "ERROR_TAG", "OUTCOME_TAG", "PAIR_TAG", "STUDY_RUN_TAG", "STUDY_TAG", "TRIAL_TAG", "MlflowCallback", "StudentModel",
           "TrackingError", "callback_env", "check_reachable", "client_for", "code_version", "env_defaults",
           "finish_study", "load_student", "log_picks", "log_teacher_choices", "log_report", "pair_run", "log_teachers", "model_name", "register_best",
           "start_study", "study_dir", "text_columns", "tracking_uri"]


def __getattr__(name: str):
    if name == "MlflowCallback":  # the one part that needs Ray
        from akd_ray.tracking.callback import MlflowCallback

        return MlflowCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
