"""The address that opens a study's answer in the MLflow UI, and the saved view it opens on.

MLflow 3.x's UI opens an experiment on GenAI pages ("Traces: 0") unless the address says
`workflowType=machine_learning` (it follows a browser-wide switch, not the `mlflow.experimentKind`
tag). Its runs table shows no parameter or metric column until a user ticks them. A *shared view*
fixes both without a click: the experiment tag `mlflow.sharedViewState.<key>` holds the table's state
as JSON (filter, sort, columns), and `#/experiments/<id>/runs?viewStateShareKey=<key>` applies it (the UI's
own "Share" button writes the same tag). The UI ignores the key when the address also carries a
`searchFilter`, so the filter lives in the view, not in the address.

Serving a local store: `mlflow server` spends ~10 CPU seconds before its app starts (its CLI imports
every flavour; it checks the store for trace roll-ups) and then starts 4 uvicorn workers and huey job
consumers. `serve_store` runs what it runs at the end -- uvicorn on `mlflow.server.fastapi_app:app`
with the store in MLflow's server environment variables -- with one worker and job execution off:
the address answers in ~5 s on an idle 2-core machine instead of ~45 s, and its output goes to a log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from akd_ray.config import KNOBS
from akd_ray.tracking.store import PAIR_LEVEL, PAIR_LEVEL_TAG

if TYPE_CHECKING:
    from mlflow import MlflowClient

VIEW_KEY = "akd-ray-pairs"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
PAIR_FILTER = f"tags.`{PAIR_LEVEL_TAG}` = '{PAIR_LEVEL}'"
# knobs a reader of the pick wants first; the rest of a method's recipe is in the run's description
SHOWN_KNOBS = ("tau_max", "schedule", "alpha", "kd_temperature")


def _col(kind: str, key: str) -> str:
    """A runs-table column id as the UI spells it (`makeCanonicalSortKey`): kind.`key`."""
    return f"{kind}.`{key}`"


def pair_columns(methods: list[str] | tuple[str, ...]) -> list[str]:
    """The pair table's columns: the answer and its certainty first (the pick in words with decided or
    not, `decided`, the mean and its 95% interval in points), then the pick's method and knobs, the gain
    over every method, the registered model. The same for every pair (see `log_picks`)."""
    knobs = [k for k in SHOWN_KNOBS if any(k in KNOBS[m] for m in methods)]
    # the first columns are on screen beside the run name without scrolling
    return [_col("tags", "recommended"), _col("tags", "decided"), _col("metrics", "pick.mean"),
            _col("metrics", "pick.ci95_low"), _col("metrics", "pick.ci95_high"), _col("params", "pick.method"),
            *(_col("params", f"pick.{k}") for k in knobs),
            _col("metrics", "pick.seeds"), *(_col("metrics", f"gain_over_{m}") for m in methods),
            _col("tags", "registered_model")]


def view_state(methods: list[str] | tuple[str, ...]) -> str:
    """The shared view's JSON: pair runs only, their pick's columns, sorted by run name."""
    columns = pair_columns(methods)
    return json.dumps({"searchFilter": PAIR_FILTER, "orderByKey": _col("tags", "mlflow.runName"), "orderByAsc": True,
                       "selectedColumns": columns, "columnOrder": columns,
                       "columnWidths": {_col("tags", "recommended"): 300, _col("tags", "decided"): 80, _col("tags", "registered_model"): 280},
                       "runListHidden": False,
                       "viewMaximized": False})


def save_view(client: MlflowClient, experiment_id: str, methods: list[str] | tuple[str, ...]) -> None:
    """Write (or refresh) the pair view on the experiment; idempotent."""
    state = view_state(methods)
    held = client.get_experiment(experiment_id).tags.get(VIEW_TAG)
    if held != state:
        client.set_experiment_tag(experiment_id, VIEW_TAG, state)


def experiment_url(base: str, experiment_id: str) -> str:
    """`<base>/#/experiments/<id>/runs?viewStateShareKey=...&workflowType=machine_learning`: the runs table
    of model training, filtered to the pair runs, with their pick's columns."""
    query = urlencode({"viewStateShareKey": VIEW_KEY, "workflowType": "machine_learning"})
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def study_url(study, base: str) -> str | None:
    """The pair view of `study`'s experiment under the UI at `base`; None while the store has no
    such experiment (the study has not started). Saves the view first: a store from before it existed."""
    from akd_ray.tracking.store import client_for, tracking_uri

    client = client_for(tracking_uri(study))
    experiment = client.get_experiment_by_name(study.mlflow.experiment or study.name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        return None
    save_view(client, experiment.experiment_id, study.search.methods)
    return experiment_url(base, experiment.experiment_id)


# what `mlflow server` hands its uvicorn workers (mlflow/server/constants.py, mlflow/server/__init__.py
# `_run_server`); tests/test_tracking.py checks these names against the installed MLflow
SERVER_ENV = {"store": "_MLFLOW_SERVER_FILE_STORE", "registry": "_MLFLOW_SERVER_REGISTRY_STORE",
              "server": "_MLFLOW_SGI_NAME", "jobs": "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"}


def serve_store(uri: str, port: int, log: Path) -> subprocess.Popen:
    """The MLflow UI (and REST API) on 127.0.0.1:`port` for the store `uri`: one uvicorn worker, no job
    consumers, its output appended to `log`. Answers `/health` once up (store.wait_healthy)."""
    import mlflow

    log_config = Path(mlflow.__file__).parent / "server" / "uvicorn_log_config.yaml"  # MLflow's own log format
    env = {**os.environ, SERVER_ENV["store"]: uri, SERVER_ENV["registry"]: uri, SERVER_ENV["server"]: "uvicorn",
           SERVER_ENV["jobs"]: "false", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    return _spawn([sys.executable, "-m", "uvicorn",
                   *(["--log-config", str(log_config)] if log_config.exists() else []), "--host", "127.0.0.1",
                   "--port", str(port), "--workers", "1", "mlflow.server.fastapi_app:app"], log, env)


def serve_optuna(storage: str, port: int, log: Path) -> subprocess.Popen:
    """optuna-dashboard (the `dashboard` extra) on 127.0.0.1:`port` for the study's Optuna storage."""
    code = ("import sys, optuna_dashboard; "
            "optuna_dashboard.run_server(sys.argv[1], host='127.0.0.1', port=int(sys.argv[2]))")
    return _spawn([sys.executable, "-c", code, storage, str(port)], log, dict(os.environ))


def _spawn(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:  # its own session: Ctrl-C in the terminal reaches `akd-ray ui` alone
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
