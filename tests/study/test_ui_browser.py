"""What a user sees in a real browser at the address `akd-ray ui` prints, on a finished study.

Needs Debian's `chromium` and the `playwright` package (the `dev` extra); skipped without them. Not a
CI requirement: CI has neither, and MlflowClient tests (tests/test_tracking.py) check the same data.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from test_run import small_study, tune

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory) -> Path:
    """test_run's tiny study (two pairs), smaller budget, in the default SQLite store: a finished study."""
    tmp = tmp_path_factory.mktemp("ui-study")
    study = small_study(tmp, None)
    data = yaml.safe_load(study.read_text())
    data["search"]["trials"] = {"scratch": 1, "kd": 1, "annealing": 2}
    data["search"]["confirm_seeds"] = 2
    study.write_text(yaml.safe_dump(data, sort_keys=False))
    done = tune(study)
    assert done.returncode == 0, done.stderr[-3000:]
    return study


def _shown(value: float) -> str:
    """A metric as the UI prints it (a JavaScript number): 98.3, 98.33, 98."""
    return f"{value:.10g}"


def test_the_ui_address_shows_each_pairs_answer_without_a_click(finished_study, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright").sync_playwright
    port = __import__("conftest").free_port()
    ui = subprocess.Popen([sys.executable, "-m", "akd_ray.cli", "ui", str(finished_study), "--port", str(port)],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          start_new_session=True, env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        url = None
        for line in ui.stdout:  # the address comes once the UI answers
            found = re.search(r"(http://127\.0\.0\.1:\d+/#/experiments/\S+)", line)
            if found:
                url = found.group(1)
                break
        assert url and "workflowType=machine_learning" in url, url
        client = MlflowClient(f"sqlite:///{finished_study.parent / 'results/tiny/mlflow.db'}")
        experiment = client.get_experiment_by_name("tiny")
        pairs = client.search_runs([experiment.experiment_id], "tags.`akd.level` = 'pair'")
        assert len(pairs) == 2
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            page.goto(url)
            for run in pairs:
                page.get_by_text(run.info.run_name, exact=True).wait_for(timeout=60_000)
            page.wait_for_timeout(1000)  # the cells fill in after the names
            page.screenshot(path=str(tmp_path / "ui.png"))
            rows = {}
            for run in pairs:  # the grid splits a row into a pinned part and the rest: join them by row-index
                index = page.locator("[row-index]", has_text=run.info.run_name).first.get_attribute("row-index")
                rows[run.info.run_name] = " | ".join(page.locator(f"[row-index='{index}']").all_inner_texts())
            browser.close()
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
    assert (tmp_path / "ui.png").stat().st_size > 10_000
    for run in pairs:
        student, method = run.data.tags["student"], run.data.params["pick.method"]
        row = rows[run.info.run_name]
        assert run.info.run_name == f"{student} ← mlp-128" and student in row
        assert run.data.tags["recommended"] in row, (run.data.tags["recommended"], row)  # method and tau_max in words
        if method == "annealing":
            assert f"tau_max {float(run.data.params['pick.tau_max']):g}" in row
        mean = run.data.metrics["pick.mean"]
        assert 10 < mean <= 100 and _shown(mean) in row, (mean, row)  # points, not a fraction
