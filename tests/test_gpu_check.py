"""`make gpu-check DEVICE=cpu`: the GPU machine's one prepared command, shrunk onto the CPU, so it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_writes_every_figure_and_the_gpu_tests_skip_with_a_reason(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert proc.returncode == 0, {k: v.get("error") for k, v in report["steps"].items()}
    assert {"date", "device", "torch", "steps", "figures"} <= set(report) and report["dry_run"] is True
    assert set(report["steps"]) == {"tests", "bench", "glue", "quick"}
    assert all(s["ok"] and s["seconds"] > 0 for s in report["steps"].values())

    tests = report["steps"]["tests"]["tests"]
    assert len(tests) >= 7 and all(t["status"] == "skipped" for t in tests.values())
    assert all("needs a CUDA GPU" in t["reason"] for t in tests.values())

    f = report["figures"]
    assert f["trial_speedup_warm"] > 0 and f["anneal_epoch_over_student_epoch_warm"] > 0
    glue = report["steps"]["glue"]
    run = glue["runs"][0]
    assert run["tokens_per_s"] > 0 and run["token_slots_per_epoch"] >= run["tokens_per_epoch"] > 0
    assert glue["student"]["non_embedding_parameters"] < glue["student"]["parameters"]
    assert glue["peak_bf16_flops"] is None and run["mfu"] is None  # no peak for a CPU: no MFU claimed
    quick = report["steps"]["quick"]
    assert quick["predicted_s"] == sum(quick["parts"].values()) > 0


def test_peak_flops_by_device_name():
    sys.path.insert(0, str(ROOT / "bench"))
    from gpu_check import peak_bf16

    assert peak_bf16("NVIDIA H200") == peak_bf16("NVIDIA H100 80GB HBM3") == 989.4e12
    assert peak_bf16("NVIDIA H100 PCIe") == 756e12 and peak_bf16("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16("Tesla T4") is None and peak_bf16(None) is None
