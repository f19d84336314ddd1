"""What one Annealing-KD trial costs: akd-ray's worker against the naive reference loop.

    python bench/bench.py --size cpu --out bench-cpu.json       # a small CPU box: about a minute
    python bench/bench.py --size gpu --out bench-gpu.json       # one H100/H200: 50k CIFAR-shaped images
    python bench/bench.py --size cpu --data-dir ../shared/data/cifar10-subset/jpg --teacher-epochs 5

One process, one teacher -> student pair, the same data, epochs, optimizer and lr schedule, run as:
  naive       the shape of the official Annealing-KD loop: torchvision RandomCrop(32, 4) +
              RandomHorizontalFlip + ToTensor + Normalize on PIL images through a DataLoader with
              --workers processes, teacher forward on every step, fp32, batch 128, MSE to
              phi(T) * teacher logits in stage I, cross-entropy in stage II; it sums loss.item()
              every step, as typical PyTorch loops do (a CPU-GPU sync per step on a GPU)
  student     akd-ray's worker (`run_distillation`, method scratch): the student alone on akd-ray's
              data path -- the floor an Annealing-KD epoch is measured against
  anneal-cold akd-ray's worker, method annealing, with an empty teacher-logit cache: each stage-I
              epoch first computes its view's logits (one teacher forward per training image)
  anneal-warm the same run again, the cache now on disk: what every later trial of a study costs
Epoch times exclude validation (as the worker's `epoch_seconds` does); trial times are wall clock for
the whole run, validation and the final test included. Synthetic data (uniform random pixels and
labels) measures throughput only; --data-dir (a CIFAR ImageFolder copy) also compares accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing

from akd_ray.config import ResNet, RunConfig, TaskSpec, TrainSpec  # noqa: E402
from akd_ray.engine import lr_lambda, make_optimizer, pick_device, plan, run_distillation  # noqa: E402
from akd_ray.method import phi, temperature  # noqa: E402
from akd_ray.models import build_model, load_model, save_model  # noqa: E402
from akd_ray.tasks import load_task  # noqa: E402
from akd_ray.tasks.base import Split, TaskData  # noqa: E402
from akd_ray.tasks.cifar import STATS, CifarInputs  # noqa: E402
from akd_ray.logits import TEACHER_FILE, weights_fingerprint  # noqa: E402

# every default of a size in one place; the command line overrides any of them.
# eval_batch: evaluation and teacher-logit batches, both loops. On a CPU a ResNet forward is about 2x
# slower per image at 512 than at 128 (measured on the 2-core box of docs/PERFORMANCE.md).
# workers: the naive loop's DataLoader processes. On 2 cores they only compete with the training
# threads (0 was fastest there); a GPU box feeds the GPU from its 16 cores.
SIZES = {
    "cpu": dict(teacher_depth=20, student_depth=8, train_samples=3072, eval_samples=512, epochs=6, tau_max=3,
                workers=0, eval_batch=128),
    "gpu": dict(teacher_depth=110, student_depth=8, train_samples=50_000, eval_samples=10_000, epochs=10,
                tau_max=5, workers=8, eval_batch=512),
}
BATCH = 128  # images per step, for both loops (the papers' batch size)
LR = 0.05  # SGD, nesterov momentum 0.9, weight decay 5e-4, cosine per stage, for both loops
SEED = 0  # student init and batch order
LOAD_BEFORE = os.getloadavg()  # (1, 5, 15-minute) load when the benchmark started


def busy_seconds() -> tuple[float, float, float]:
    """(CPU seconds of the whole machine, of this process and its reaped children, wall clock) so far."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        machine_s = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle, iowait
    except (OSError, ValueError, IndexError):
        machine_s = float("nan")  # not Linux
    t = os.times()
    return machine_s, t.user + t.system + t.children_user + t.children_system, time.monotonic()


BUSY_BEFORE = busy_seconds()


# ---------------------------------------------------------------------------------------- data
def synthetic_task(n_train: int, n_eval: int) -> TaskData:
    """CIFAR-10-shaped uint8 images and labels, uniformly random: throughput only."""
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        return Split({"x": torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)},
                     torch.randint(0, 10, (n,), generator=g))

    return TaskData("cifar10", 10, "accuracy", split(n_train), split(max(1, n_eval // 2)), split(n_eval),
                    CifarInputs("cifar10"), augments=True, info={"source": "synthetic"})


class PILImages(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's shape: HWC uint8 arrays in memory, a PIL image per item, then transforms."""

    def __init__(self, split: Split, transform):
        self.images = split.features["x"].permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = split.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


# ---------------------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory while the block runs: CUDA allocated bytes on GPU; resident set sizes on CPU.

    On CPU a thread samples every 50 ms the main process's RSS and the summed PSS of its child
    processes (DataLoader workers: forked, so their RSS would count shared pages again).
    """

    def __init__(self, device: torch.device):
        self.device, self.result = device, {}
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        self.result = {"rss_before_mb": _rss_mb(os.getpid())}
        self._peak, self._children = self.result["rss_before_mb"], 0.0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self._peak = max(self._peak, _rss_mb(os.getpid()))
            self._children = max(self._children, sum(_pss_mb(c) for c in _children(os.getpid())))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.result.update(rss_peak_mb=self._peak, workers_pss_peak_mb=self._children)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.result["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20


def _rss_mb(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")  # not Linux


def _pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    kids = []
    for f in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids += [int(c) for c in f.read_text().split()]
        except OSError:
            pass
    return kids


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------- the two loops
def naive_run(task: TaskData, teacher_dir: Path, run: RunConfig, device: torch.device, workers: int) -> dict:
    """The reference loop: same recipe, stages and model selection as the worker, the naive data path."""
    import torchvision.transforms as T

    mean, std = STATS["cifar10"]
    normalise = [T.ToTensor(), T.Normalize(mean, std)]
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), *normalise])
    eval_tf = T.Compose(normalise)
    cuda = device.type == "cuda"
    loader = torch.utils.data.DataLoader(PILImages(task.train, train_tf), batch_size=BATCH, shuffle=True,
                                         num_workers=workers, pin_memory=cuda)

    def accuracy(model, split: Split) -> float:
        model.eval()
        right = 0
        with torch.no_grad():
            for x, y in torch.utils.data.DataLoader(PILImages(split, eval_tf), batch_size=run.train.eval_batch_size,
                                                    num_workers=workers, pin_memory=cuda):
                right += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
        return right / len(split)

    torch.manual_seed(run.seed)  # as the worker: the same student initialisation
    student = build_model(run.student_model, task).to(device)
    teacher = load_model(teacher_dir, task, device)  # held for the whole run, as the official code does
    history, best, best_weights, stage_weights = [], -1.0, None, None
    epoch = 0
    for stage in plan(run):
        if stage.number == 2 and stage_weights is not None:
            student.load_state_dict(stage_weights)  # stage II starts from the best stage-I epoch
        stage_best = -1.0
        optimizer = make_optimizer(student, run.train, device)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(run.train, stage.epochs * len(loader)))
        for stage_epoch in range(stage.epochs):
            t = (temperature(run.train.schedule, stage_epoch, stage.epochs, run.train.tau_max, run.train.decay)
                 if stage.loss == "anneal" else None)
            student.train()
            t0 = time.perf_counter()
            running = 0.0
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                out = student(x)
                if stage.loss == "anneal":
                    with torch.no_grad():
                        z_t = teacher(x)
                    loss = F.mse_loss(out, phi(t, run.train.tau_max) * z_t)
                else:
                    loss = F.cross_entropy(out, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                running += loss.item()
            sync(device)
            seconds = time.perf_counter() - t0
            val = accuracy(student, task.val)
            if val > stage_best:
                stage_best, stage_weights = val, {k: v.clone() for k, v in student.state_dict().items()}
            if val > best:
                best, best_weights = val, {k: v.clone() for k, v in student.state_dict().items()}
            history.append({"epoch": epoch, "stage": stage.number, "seconds": seconds,
                            "img_per_s": len(task.train) / seconds, "train_loss": running / len(loader),
                            "val_accuracy": val})
            epoch += 1
    student.load_state_dict(best_weights)
    return {"history": history, "val_best": best, "test_accuracy": accuracy(student, task.test)}


def akd_run(task: TaskData, run: RunConfig) -> dict:
    history = []
    result = run_distillation(run, on_epoch=lambda m, state: history.append(m), task=task)
    return {"history": [{"epoch": m["epoch"], "stage": m["stage"], "seconds": m["epoch_seconds"],
                         "img_per_s": len(task.train) / m["epoch_seconds"], "train_loss": m["train_loss"],
                         "val_accuracy": m["val_metric"]} for m in history],
            "val_best": result["val_best"], "test_accuracy": result["test_metric"]}


# ---------------------------------------------------------------------------------------- teacher
def make_teacher(task: TaskData, spec_task: TaskSpec, depth: int, epochs: int, folder: Path,
                 eval_batch: int, device: torch.device) -> tuple[Path, dict]:
    """A prepared-teacher folder. epochs 0: untrained weights, BatchNorm statistics from the training
    images (as costly to run as a trained one); epochs > 0: trained by the worker (method scratch)."""
    spec = ResNet(kind="resnet", depth=depth)
    info: dict = {"name": f"resnet{depth}", "prepared": "train" if epochs else "untrained"}
    if epochs:
        run = RunConfig(task=spec_task, student_model=spec, method="scratch", seed=SEED,
                        train=recipe(max(2, epochs), 2, "auto", eval_batch))
        t0 = time.perf_counter()
        metrics = run_distillation(run, save_dir=folder, task=task)
        info.update(metrics=metrics, train_seconds=time.perf_counter() - t0)
    else:
        torch.manual_seed(SEED + 1)
        model = build_model(spec, task).to(device)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # cumulative: the statistics of the whole pass
        model.train()
        with torch.no_grad():
            for idx in torch.arange(min(len(task.train), 4096)).split(BATCH):
                model(**task.batch(task.train, idx, device)[0])
        save_model(model, spec, folder, task)
    info["fingerprint"] = weights_fingerprint(folder)
    (folder / TEACHER_FILE).write_text(json.dumps(info, indent=2, default=str))
    return folder, info


def recipe(epochs: int, tau_max: int, precision: str, eval_batch: int) -> TrainSpec:
    return TrainSpec(epochs=epochs, stage1_fraction=0.5, tau_max=tau_max, schedule="step", batch_size=BATCH,
                     eval_batch_size=eval_batch, optimizer="sgd", lr=LR, momentum=0.9, weight_decay=5e-4,
                     lr_schedule="cosine", precision=precision)


def warm_up(task: TaskData, teacher_dir: Path, run: RunConfig, device: torch.device) -> None:
    """A few steps of each model first, so no phase pays the process's one-off start costs alone."""
    student = build_model(run.student_model, task).to(device)
    teacher = load_model(teacher_dir, task, device)
    idx = torch.arange(min(BATCH, len(task.train)))
    x = task.batch(task.train, idx, device)[0]["x"]
    for _ in range(3):
        with torch.no_grad():
            teacher(x)
        student(x).square().mean().backward()
    sync(device)


# ---------------------------------------------------------------------------------------- report
def summarise(history: list[dict], stage: int | None = None) -> dict:
    rows = [h for h in history if stage is None or h["stage"] == stage]
    if not rows:
        return {}
    return {"epochs": len(rows), "median_epoch_s": statistics.median(h["seconds"] for h in rows),
            "median_img_per_s": statistics.median(h["img_per_s"] for h in rows)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--teacher-depth", type=int)
    p.add_argument("--student-depth", type=int)
    p.add_argument("--train-samples", type=int, help="synthetic: images; --data-dir: cap (default all)")
    p.add_argument("--eval-samples", type=int, help="test images (val: half) for synthetic; cap for --data-dir")
    p.add_argument("--epochs", type=int, help="whole run; half are stage I")
    p.add_argument("--tau-max", type=int)
    p.add_argument("--workers", type=int, help="DataLoader worker processes of the naive loop")
    p.add_argument("--eval-batch", type=int, help="evaluation and teacher-logit batch size, both loops")
    p.add_argument("--data-dir", type=Path, help="a CIFAR-10 ImageFolder copy (train/, test/); default synthetic")
    p.add_argument("--teacher-epochs", type=int, default=0, help="0: untrained teacher (throughput only)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="akd-ray's worker (auto: bf16 autocast on GPU); the naive loop is always fp32")
    p.add_argument("--sync-debug", action="store_true",
                   help="GPU: warn at every CPU-GPU synchronisation in akd-ray's runs (expected: per epoch only)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--workdir", type=Path, help="teacher and logit cache (default: a temporary folder, removed)")
    args = p.parse_args(argv)
    size = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in SIZES[args.size].items()}

    device = pick_device(TrainSpec())
    if args.size == "gpu" and device.type != "cuda":
        print("warning: --size gpu without a CUDA device: running it on the CPU", file=sys.stderr)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="akd-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        if args.data_dir is not None:
            spec_task = TaskSpec(name="cifar10", data_dir=args.data_dir, max_train_samples=args.train_samples,
                                 max_eval_samples=args.eval_samples)
            task = load_task(spec_task)
        else:
            spec_task = TaskSpec(name="cifar10")
            task = synthetic_task(size["train_samples"], size["eval_samples"])
        load_seconds = time.perf_counter() - t0
        teacher_dir, teacher = make_teacher(task, spec_task, size["teacher_depth"], args.teacher_epochs,
                                            workdir / "teacher", size["eval_batch"], device)
        run = RunConfig(task=spec_task, teacher_dir=teacher_dir, method="annealing",
                        student_model=ResNet(kind="resnet", depth=size["student_depth"]),
                        train=recipe(size["epochs"], size["tau_max"], args.precision, size["eval_batch"]),
                        seed=SEED, augment_seed=0, cache_dir=workdir / "cache")
        shutil.rmtree(workdir / "cache", ignore_errors=True)
        warm_up(task, teacher_dir, run, device)

        phases = {}
        for name, fn in [
            ("naive", lambda: naive_run(task, teacher_dir, run, device, size["workers"])),
            ("student", lambda: akd_run(task, run.model_copy(update={"method": "scratch", "teacher_dir": None}))),
            ("anneal-cold", lambda: akd_run(task, run)),  # the cache folder is empty: logits computed in-run
            ("anneal-warm", lambda: akd_run(task, run)),  # the same run again: logits read from disk
        ]:
            print(f"-- {name} ...", flush=True)
            if args.sync_debug and device.type == "cuda":  # which lines make the CPU wait for the GPU
                torch.cuda.set_sync_debug_mode("warn" if name != "naive" else "default")
            with PeakMemory(device) as mem:
                t0 = time.perf_counter()
                out = fn()
                sync(device)
                out["trial_seconds"] = time.perf_counter() - t0
            out["memory"] = mem.result
            out["all"], out["stage1"], out["stage2"] = (summarise(out["history"], s) for s in (None, 1, 2))
            phases[name] = out
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    student, naive = phases["student"]["all"]["median_epoch_s"], phases["naive"]["stage1"]["median_epoch_s"]
    summary = {
        # teacher cost: an Annealing-KD (stage I) epoch over a student-only epoch, same student and data
        "anneal_epoch_over_student_epoch_warm": phases["anneal-warm"]["stage1"]["median_epoch_s"] / student,
        "anneal_epoch_over_student_epoch_cold": phases["anneal-cold"]["stage1"]["median_epoch_s"] / student,
        # the same within one warm run: stage-I epochs over its stage-II (student-only) epochs; one
        # process, minutes apart, so less exposed to drift between runs than the figure above
        "anneal_stage1_over_stage2_warm": (phases["anneal-warm"]["stage1"]["median_epoch_s"]
                                           / phases["anneal-warm"]["stage2"]["median_epoch_s"]),
        "naive_anneal_epoch_over_student_epoch": naive / student,
        # akd-ray against the reference loop
        "speedup_stage1_epoch_warm": naive / phases["anneal-warm"]["stage1"]["median_epoch_s"],
        "speedup_stage1_epoch_cold": naive / phases["anneal-cold"]["stage1"]["median_epoch_s"],
        "speedup_trial_warm": phases["naive"]["trial_seconds"] / phases["anneal-warm"]["trial_seconds"],
        "speedup_trial_cold": phases["naive"]["trial_seconds"] / phases["anneal-cold"]["trial_seconds"],
    }
    result = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "config": {**size, "batch_size": BATCH, "lr": LR, "optimizer": "sgd",
                   "data": "synthetic" if args.data_dir is None else str(args.data_dir),
                   "train_images": len(task.train), "val_images": len(task.val), "test_images": len(task.test),
                   "load_seconds": load_seconds},
        "machine": machine(device), "teacher": teacher, "phases": phases, "summary": summary,
    }
    print_report(result)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {args.out}")
    return result


def machine(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "loadavg_before": LOAD_BEFORE, "loadavg_after": os.getloadavg()}
    (m0, own0, t0), (m1, own1, t1) = BUSY_BEFORE, busy_seconds()
    # the share of the machine's CPU time that other processes took while this ran: it skews every figure
    info["other_cpu_share"] = max(0.0, ((m1 - m0) - (own1 - own0)) / ((t1 - t0) * (os.cpu_count() or 1)))
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    return info


def print_report(r: dict) -> None:
    c, ph = r["config"], r["phases"]
    other = r["machine"]["other_cpu_share"]
    print(f"\nother processes took {other:.0%} of the machine's CPU time during the run"
          + (": the figures are skewed, run it again on a quiet machine" if other > 0.1 else ""))
    print(f"\nResNet-{c['teacher_depth']} -> ResNet-{c['student_depth']}, {c['train_images']} training images "
          f"({c['data']}), {c['epochs']} epochs (stage I {ph['anneal-warm']['stage1'].get('epochs', 0)}), "
          f"batch {c['batch_size']}, on {r['machine'].get('gpu', r['machine']['device'])}")
    mem_key = "cuda_peak_allocated_mb" if "cuda_peak_allocated_mb" in ph["naive"]["memory"] else "rss_peak_mb"
    print("img/s: median over epochs (training only); student-only runs are all stage II")
    print(f"{'phase':12} {'all epochs':>11} {'stage I':>9} {'stage II':>9} {'trial s':>8} {'test acc':>9} "
          f"{mem_key:>23}")
    for name, out in ph.items():
        s = [out[k].get("median_img_per_s", float("nan")) for k in ("all", "stage1", "stage2")]
        print(f"{name:12} {s[0]:11.0f} {s[1]:9.0f} {s[2]:9.0f} {out['trial_seconds']:8.1f} "
              f"{out['test_accuracy']:9.3f} {out['memory'][mem_key]:23.0f}")
    for k, v in r["summary"].items():
        print(f"  {k:40} {v:6.2f}")


if __name__ == "__main__":
    main()
