"""Everything `validate` and `tune` check before Ray or MLflow start or any folder is made, and the plan.

    check(study) -> Plan       raises PreflightError (a ConfigError: the CLI exits 2) on the first problem

What is checked, without training or writing anything:
- the search space against the study (the step schedule's epochs, warm-start points);
- the data: GLUE TSV folders (every file's header, every label, with file:line of the first bad row),
  CIFAR ImageFolder trees (class folders, one readable 32x32 image in each), or what will be downloaded;
- every model: a local folder holds a model; a hub id is in the local cache, or the hub answers for
  it now (one request, a few seconds, no retries; none at all under HF_HUB_OFFLINE);
- the storage can be written, the MLflow URI has a known scheme (and a server answers);
- one trial fits this machine (a local Ray) -- a cluster is checked once Ray connects to it.

Imports stay light (no Ray, MLflow or optuna; torch only for GLUE/CIFAR data), so `validate` is quick.
"""

from akd_ray.preflight.data import GLUE_HUB_DATASET, check_data, check_glue_folder, check_image_folder
from akd_ray.preflight.errors import PreflightError
from akd_ray.preflight.machine import check_fits, concurrency, local_capacity
from akd_ray.preflight.models import HUB_TIMEOUT_S, STATE_DICT_SUFFIXES, check_models, check_weights
from akd_ray.preflight.plan import Plan, check
from akd_ray.preflight.search import budgets, check_batch_split, check_levers, check_space, lever_refusal
from akd_ray.preflight.storage import check_storage, check_tracking

__all__ = ["GLUE_HUB_DATASET", "HUB_TIMEOUT_S", "STATE_DICT_SUFFIXES", "Plan", "PreflightError", "budgets",
           "check", "check_batch_split", "check_data", "check_fits", "check_glue_folder", "check_image_folder",
           "check_levers", "check_models", "check_space", "check_storage", "check_tracking", "check_weights",
           "concurrency", "lever_refusal", "local_capacity"]
