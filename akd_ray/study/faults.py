"""A chaos hook for the cluster tests: kill or pause the trial that reaches a given epoch.

Like Ray's own `RAY_testing_*` switches it is off unless an environment variable names it, and a
user's study never sets it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ray import tune

FAULTS_ENV = "AKD_RAY_FAULTS"


def inject_fault(epoch: int, node_id: str) -> None:
    """Faults on demand, for the cluster tests: `$AKD_RAY_FAULTS` names a folder of `*.fault` files,
    each holding `exit N` or `pause N`. The first trial to report epoch N (with its checkpoint) claims
    a file -- an atomic rename to `*.claimed`, so one trial per file -- says who it is in `*.json`, then
    dies at once (`exit`: a killed worker) or waits until the test deletes `*.claimed` (`pause`)."""
    folder = os.environ.get(FAULTS_ENV)
    for fault in sorted(Path(folder).glob("*.fault")) if folder else []:
        try:
            action, at = fault.read_text().split()
            if int(at) != epoch:
                continue
            claimed = fault.rename(fault.with_suffix(".claimed"))
        except (OSError, ValueError):  # another trial claimed it first
            continue
        who = {"trial_id": tune.get_context().get_trial_id(), "node_id": node_id, "pid": os.getpid(),
               "epoch": epoch}
        fault.with_suffix(".tmp").write_text(json.dumps(who))
        fault.with_suffix(".tmp").rename(fault.with_suffix(".json"))
        if action == "exit":
            os._exit(1)
        while claimed.exists():
            time.sleep(0.1)
        return
