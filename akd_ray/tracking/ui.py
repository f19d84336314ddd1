"""The address that opens a study's answer in the MLflow UI, and the saved view it opens on.

MLflow 3.x's UI opens an experiment on GenAI pages ("Traces: 0") unless the address says
`workflowType=machine_learning` (it follows a browser-wide switch, not the `mlflow.experimentKind`
tag). Its runs table shows no parameter or metric column until a user ticks them. A *shared view*
fixes both without a click: the experiment tag `mlflow.sharedViewState.<key>` holds the table's state
as JSON (filter, sort, columns), and `#/experiments/<id>/runs?viewStateShareKey=<key>` applies it (the UI's
own "Share" button writes the same tag). The UI ignores the key when the address also carries a
`searchFilter`, so the filter lives in the view, not in the address.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from mlflow import MlflowClient

from akd_ray.config import KNOBS
from akd_ray.tracking.store import PAIR_LEVEL, PAIR_LEVEL_TAG

VIEW_KEY = "akd-ray-pairs"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
PAIR_FILTER = f"tags.`{PAIR_LEVEL_TAG}` = '{PAIR_LEVEL}'"
# knobs a reader of the pick wants first; the rest of a method's recipe is in the run's description
SHOWN_KNOBS = ("tau_max", "schedule", "alpha", "kd_temperature")


def _col(kind: str, key: str) -> str:
    """A runs-table column id as the UI spells it (`makeCanonicalSortKey`): kind.`key`."""
    return f"{kind}.`{key}`"


def pair_columns(methods: list[str] | tuple[str, ...]) -> list[str]:
    """The pair table's columns: the pick (method, its knobs, mean and interval in points), the gain
    over every method, the registered model. The same for every pair (see `log_picks`)."""
    knobs = [k for k in SHOWN_KNOBS if any(k in KNOBS[m] for m in methods)]
    # the answer first (the pick in words, its mean), so it is on screen beside the run name
    return [_col("tags", "recommended"), _col("metrics", "pick.mean"), _col("metrics", "pick.ci_low"),
            _col("metrics", "pick.ci_high"), _col("params", "pick.method"),
            *(_col("params", f"pick.{k}") for k in knobs),
            _col("metrics", "pick.seeds"), *(_col("metrics", f"gain_over_{m}") for m in methods),
            _col("tags", "decided"), _col("tags", "registered_model")]


def view_state(methods: list[str] | tuple[str, ...]) -> str:
    """The shared view's JSON: pair runs only, their pick's columns, sorted by run name."""
    columns = pair_columns(methods)
    return json.dumps({"searchFilter": PAIR_FILTER, "orderByKey": _col("tags", "mlflow.runName"), "orderByAsc": True,
                       "selectedColumns": columns, "columnOrder": columns,
                       "columnWidths": {_col("tags", "recommended"): 230, _col("tags", "registered_model"): 280},
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
