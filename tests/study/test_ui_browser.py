"""What a user sees in a real browser at the address `akd-ray ui` prints, on a finished study.

Needs Debian's `chromium` and the `playwright` package (the `dev` extra). `.ci/run` installs chromium and
sets AKD_RAY_REQUIRE_BROWSER=1, so there a missing browser fails the test instead of skipping it. The
study is the session's finished one (tests/study/conftest.py), shared with test_run and test_lock.
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
from mlflow import MlflowClient

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# a desktop's first screen: what is seen without a click or a scroll, with MLflow's Assistant panel open
# (it opens on a fresh browser and takes a third of the width)
SCREEN = {"width": 1920, "height": 1080}


def _need(found: bool, why: str) -> None:
    if not found:
        if os.environ.get("AKD_RAY_REQUIRE_BROWSER"):
            pytest.fail(f"{why}; CI must run this test (.ci/run installs chromium)")
        pytest.skip(why)


def _shown(value: float) -> str:
    """A metric as the UI prints it (a JavaScript number): 98.3, 98.33, 98."""
    return f"{value:.10g}"


def test_the_ui_address_shows_each_pairs_answer_and_its_certainty_on_the_first_screen(finished_study, tmp_path):
    _need(Path(CHROMIUM).exists(), f"no chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need(False, "no playwright (pip install playwright)")
    port = __import__("conftest").free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the store the study wrote, as it ran
    ui = subprocess.Popen([sys.executable, "-m", "akd_ray.cli", "ui", str(finished_study.study), "--port", str(port)],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                          env=env)
    printed = []
    try:
        url = None
        for line in ui.stdout:  # the address comes once the UI answers
            printed.append(line)
            found = re.search(r"(http://127\.0\.0\.1:\d+/#/experiments/\S+)", line)
            if found:
                url = found.group(1)
                printed.append(ui.stdout.readline())  # how to stop it
                break
        assert url and "workflowType=machine_learning" in url, printed
        client = MlflowClient(f"sqlite:///{finished_study.root / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("tiny")
        pairs = client.search_runs([experiment.experiment_id], "tags.`akd.level` = 'pair'")
        assert len(pairs) == 2
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport=SCREEN)
            page.goto(url)
            for run in pairs:
                page.get_by_text(run.info.run_name, exact=True).wait_for(timeout=60_000)
            page.wait_for_timeout(1000)  # the cells fill in after the names
            page.screenshot(path=str(tmp_path / "ui.png"))
            grid = page.locator("[role='grid']").first.bounding_box()
            right = min(SCREEN["width"], grid["x"] + grid["width"])  # cells scrolled past the grid's edge are hidden
            rows = {}
            for run in pairs:  # the grid splits a row into a pinned part and the rest: join them by row-index
                index = page.locator("[row-index]", has_text=run.info.run_name).first.get_attribute("row-index")
                cells = page.locator(f"[row-index='{index}'] [role='gridcell']")
                # only the cells on the first screen: left of the grid's visible right edge
                rows[run.info.run_name] = " | ".join(
                    c.inner_text() for c in cells.all() if (box := c.bounding_box()) and box["x"] + box["width"] / 2 < right)
            browser.close()
        ui.stdout.close()
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
    assert len([line for line in printed if line.strip()]) <= 4, printed  # the address, how to stop; MLflow's own output in ui.log
    assert (finished_study.root / "ui.log").stat().st_size > 0
    assert (tmp_path / "ui.png").stat().st_size > 10_000
    for run in pairs:
        student = run.data.tags["student"]
        row = rows[run.info.run_name]
        assert run.info.run_name == f"{student} ← mlp-128" and student in row
        recommended = run.data.tags["recommended"]  # the method, its knobs and its certainty in words
        assert recommended in row and recommended.endswith(("— decided", "— not decided (no method clearly better)"))
        assert run.data.tags["decided"] in row.split(" | "), row  # the decided column itself
        for metric in ("pick.mean", "pick.ci95_low", "pick.ci95_high"):  # in points, 2 decimals
            value = run.data.metrics[metric]
            assert _shown(value) in row, (metric, value, row)
        assert 10 < run.data.metrics["pick.mean"] <= 100  # points, not a fraction
