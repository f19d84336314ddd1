"""One model across ranks: the worker loop under torch.distributed (gloo, CPU), started with
torch.multiprocessing -- no Ray. Real digits, a real prepared teacher, a student with BatchNorm."""

from __future__ import annotations

import dataclasses
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from akd_ray.config import CNN, MLP, RunConfig, TaskSpec, TeacherSpec, TrainSpec
from akd_ray.engine import run_distillation
from akd_ray.tasks import load_task
from akd_ray.teacher import prepare_teacher

TASK = TaskSpec(name="digits")
TIMING = ("epoch_seconds", "samples_per_second")  # wall clock: the one thing ranks may differ in


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    spec = TeacherSpec(model=MLP(kind="mlp", hidden=(128,)), train=TrainSpec(epochs=6, lr=3e-3), checkpoints=1)
    return prepare_teacher("mlp-128", spec, TASK, tmp_path_factory.mktemp("study"))


def digit_images(spec: TaskSpec = TASK):
    """Digits as 1x8x8 images, so a conv student with BatchNorm can read them (the MLP teacher flattens)."""
    task = load_task(spec)
    as_images = {name: dataclasses.replace(s, features={"x": s.features["x"].reshape(-1, 1, 8, 8)})
                 for name, s in (("train", task.train), ("val", task.val), ("test", task.test))}
    return dataclasses.replace(task, **as_images)


def _rank(rank: int, world: int, port: int, run: RunConfig, images: bool, out: str) -> None:
    """One rank: the worker loop, every epoch's full model state kept for the parent to compare."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        epochs = []
        task = digit_images(run.task) if images else None
        result = run_distillation(run, task=task, on_epoch=lambda m, state: epochs.append((m, state()["model"])))
        torch.save({"result": result, "epochs": epochs}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(run: RunConfig, world: int, tmp_path, images: bool = False) -> list[dict]:
    mp.spawn(_rank, args=(world, _port(), run, images, str(tmp_path)), nprocs=world)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]


def assert_same_state(a: dict, b: dict, where: str) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{where}: {k} differs between ranks"


def test_two_ranks_train_one_model_through_annealing(teacher_dir, tmp_path):
    run = RunConfig(task=TASK, teacher_dir=teacher_dir, student_model=CNN(kind="cnn", channels=(8, 16)),
                    method="annealing", cache_dir=tmp_path / "cache",
                    train=TrainSpec(epochs=6, stage1_fraction=0.5, tau_max=2, lr=1e-2, batch_size=64,
                                    precision="fp32", device="cpu"))
    ranks = run_ranks(run, 2, tmp_path, images=True)
    history = [[m for m, _ in r["epochs"]] for r in ranks]
    assert [m["stage"] for m in history[0]] == [1, 1, 1, 2, 2, 2]
    buffers = [k for k in ranks[0]["epochs"][0][1] if "running_" in k]
    assert buffers, "the student should have BatchNorm buffers"
    for epoch, ((_, state0), (_, state1)) in enumerate(zip(ranks[0]["epochs"], ranks[1]["epochs"])):
        # epoch 3 is the first of stage II: it started from the best stage-I weights, loaded on each rank
        assert_same_state(state0, state1, f"after epoch {epoch}")
    for m0, m1 in zip(*history):
        assert {k: v for k, v in m0.items() if k not in TIMING} == {k: v for k, v in m1.items() if k not in TIMING}
    assert ranks[0]["result"] == ranks[1]["result"]
    assert ranks[0]["result"]["test_metric"] > 0.5  # it learned: 10 classes


def one_rank_vs_two(student, tmp_path, images: bool = False, method: str = "scratch", teacher_dir=None,
                    **task) -> tuple[list[dict], list[dict]]:
    """The same 2-epoch SGD run on one process with the global batch of 64 and on two ranks with 32
    each: (one process's model state per epoch, the two ranks' results)."""
    run = RunConfig(task=TASK.model_copy(update={"max_train_samples": 256, **task}), student_model=student,
                    method=method, teacher_dir=teacher_dir, cache_dir=tmp_path / "cache",
                    train=TrainSpec(epochs=2, batch_size=64, optimizer="sgd", lr=0.1,
                                    lr_schedule="constant", precision="fp32", device="cpu"))
    one = []
    run_distillation(run, task=digit_images(run.task) if images else None,
                     on_epoch=lambda m, state: one.append(state()["model"]))
    return one, run_ranks(run, 2, tmp_path, images=images)


def assert_ranks_match(one: list[dict], two: list[dict]) -> None:
    for epoch, single in enumerate(one):
        for rank in two:
            for k, v in single.items():
                torch.testing.assert_close(rank["epochs"][epoch][1][k], v, rtol=0, atol=1e-5,
                                           msg=lambda m: f"epoch {epoch}, {k}: {m}")


def test_two_ranks_with_half_the_batch_equal_one_rank_with_all_of_it(tmp_path):
    one, two = one_rank_vs_two(MLP(kind="mlp", hidden=(32,)), tmp_path)
    assert len(one) == 2  # 4 optimizer steps per epoch: 256 rows, global batch 64 (2 x 32 on two ranks)
    assert_ranks_match(one, two)


def test_two_ranks_with_half_the_batch_equal_one_rank_with_a_batchnorm_student(tmp_path):
    """BatchNorm over the global batch (GlobalBatchNorm; SyncBatchNorm on GPUs): with per-rank
    statistics each half batch would be normalised by its own mean and the runs would part."""
    one, two = one_rank_vs_two(CNN(kind="cnn", channels=(8, 16)), tmp_path, images=True)
    assert any("running_var" in k for k in one[0]), "the student should have BatchNorm"
    assert_ranks_match(one, two)


def _bf16_batchnorm_rank(rank: int, world: int, port: int, x: torch.Tensor, out: str) -> None:
    """One rank: GlobalBatchNorm in training, under CPU bf16 autocast, on this rank's rows of `x`."""
    from akd_ray.distributed import GlobalBatchNorm

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        bn = GlobalBatchNorm(x.shape[1])
        with torch.no_grad():
            bn.weight.copy_(torch.linspace(0.5, 2.0, x.shape[1]))
            bn.bias.copy_(torch.linspace(-1.0, 1.0, x.shape[1]))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = bn(x[rank::world])
        torch.save({"y": y, "mean": bn.running_mean, "var": bn.running_var}, os.path.join(out, f"bn{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_global_batchnorm_keeps_fp32_statistics_for_bf16_input(tmp_path):
    """257 bf16 rows over two ranks (129 + 128) with a large mean: in bf16 the count 257 rounds to 256 and
    a sum near 12,900 is kept to the nearest 64. The statistics must be one process's fp32 BatchNorm's."""
    g = torch.Generator().manual_seed(0)
    x = (100.0 + torch.randn(257, 6, generator=g) * torch.linspace(0.5, 3.0, 6)).to(torch.bfloat16)
    mp.spawn(_bf16_batchnorm_rank, args=(2, _port(), x, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"bn{r}.pt", weights_only=True) for r in range(2)]

    ref = torch.nn.BatchNorm1d(6)
    with torch.no_grad():
        ref.weight.copy_(torch.linspace(0.5, 2.0, 6))
        ref.bias.copy_(torch.linspace(-1.0, 1.0, 6))
    want = ref(x.float())  # the same bf16 values, in fp32, in one process
    for r, got in enumerate(ranks):
        assert got["y"].dtype == torch.bfloat16  # the output keeps the input's dtype
        torch.testing.assert_close(got["y"].float(), want[r::2], rtol=1.6e-2, atol=1e-2)  # bf16's own rounding
        # the running statistics are fp32 sums over 257 rows: one process's to fp32 rounding
        torch.testing.assert_close(got["mean"], ref.running_mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got["var"], ref.running_var, rtol=1e-5, atol=1e-6)


def test_two_ranks_split_the_union_of_labelled_and_unlabelled_rows_as_one_rank(teacher_dir, tmp_path):
    """Few labels (40 of 256 rows): KD's soft term on every row, its label term over the global batch's
    labelled rows however the ranks' halves share them. Two ranks train the one process's model."""
    one, two = one_rank_vs_two(MLP(kind="mlp", hidden=(32,)), tmp_path, method="kd", teacher_dir=teacher_dir,
                               labelled_samples=40)
    assert len(one) == 2
    assert_ranks_match(one, two)


def test_a_batch_that_does_not_split_over_the_ranks_is_refused(tmp_path):
    run = RunConfig(task=TASK, student_model=MLP(kind="mlp", hidden=(8,)), method="scratch",
                    train=TrainSpec(epochs=2, batch_size=63, device="cpu"))
    with pytest.raises(Exception, match="global batch"):
        run_ranks(run, 2, tmp_path)


def test_fractional_gpus_for_several_workers_are_refused_with_the_reason():
    from pydantic import ValidationError

    from akd_ray.config import Resources

    with pytest.raises(ValidationError, match="two ranks of one trial on the same GPU, which NCCL refuses"):
        Resources(workers=2, gpus_per_worker=0.5)
    assert Resources(workers=1, gpus_per_worker=0.5).gpus_per_worker == 0.5  # packing single-worker trials
    assert Resources(workers=2, gpus_per_worker=1).workers == 2
