"""What Ray costs per trial: plain Tune function trials against Tune trials that each wrap a TorchTrainer.

    python bench/ray_overhead.py --trials 8 --concurrent 4 --num-cpus 2 --out ray-overhead.json

Both modes run the same N trivial trials (report once, return), K at a time, on a local Ray started
here with --num-cpus CPUs:
  plain  a Tune function trainable, as akd-ray runs every single-worker trial (akd_ray.study.trial.trial)
  train  a Tune function trainable that builds and fits a Ray Train V2 TorchTrainer with one CPU
         worker -- as akd-ray does only for multi-worker (DDP) trials: the trial process holds no
         resources, the Train worker asks for the trial's share (as akd_ray.study.run.run_phase sets up)
Times are wall clock of each Tuner.fit(); `slot_seconds_per_trial` = wall x K / N is how long one
trial keeps one of the K concurrency slots busy, i.e. the overhead a real trial pays on top of its training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def plain_trial(config: dict) -> None:
    from ray import tune
    tune.report({"done": 1})


def train_worker(config: dict) -> None:
    import ray.train
    ray.train.report({"done": 1})


def train_trial(config: dict) -> None:
    from ray import tune
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_worker, scaling_config=ScalingConfig(num_workers=1, use_gpu=False,
                                                   resources_per_worker={"CPU": config["cpus"]}),
        run_config=RunConfig(name=f"train-{tune.get_context().get_trial_id()}", storage_path=config["storage"]))
    trainer.fit()
    tune.report({"done": 1})


def run_mode(mode: str, trials: int, concurrent: int, cpus: float, storage: str) -> dict:
    from ray import tune

    if mode == "plain":
        trainable = tune.with_resources(plain_trial, {"cpu": cpus})
    else:
        trainable = tune.with_resources(train_trial, {"cpu": 0, "memory": 1})
    tuner = tune.Tuner(
        trainable, param_space={"i": tune.grid_search(list(range(trials))), "cpus": cpus, "storage": storage},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(name=mode, storage_path=storage, verbose=0))
    t0 = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    errors = [str(r.error) for r in grid if r.error]
    if errors:
        raise RuntimeError(f"{mode}: {len(errors)} trial(s) failed, first: {errors[0]}")
    per_trial = sorted(r.metrics.get("time_total_s", float("nan")) for r in grid)
    return {"wall_s": wall, "wall_per_trial_s": wall / trials, "slot_seconds_per_trial": wall * concurrent / trials,
            "trial_time_total_s_median": per_trial[len(per_trial) // 2]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--concurrent", type=int, default=4)
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray started here")
    p.add_argument("--modes", default="plain,train", help="comma-separated, run in this order")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    import ray

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    cpus = args.num_cpus / args.concurrent  # the trial's share: K trials fit at once
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t0
    results = {}
    try:
        with tempfile.TemporaryDirectory(prefix="akd-ray-overhead-") as storage:
            for mode in args.modes.split(","):
                print(f"-- {mode}: {args.trials} trials, {args.concurrent} at a time ...", flush=True)
                results[mode] = run_mode(mode, args.trials, args.concurrent, cpus, storage)
    finally:
        ray.shutdown()
    out = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "ray": ray.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
           "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "ray_init_s": init_s, "modes": results}
    if {"plain", "train"} <= results.keys():
        out["train_over_plain_wall"] = results["train"]["wall_s"] / results["plain"]["wall_s"]
        out["extra_slot_seconds_per_trial"] = (results["train"]["slot_seconds_per_trial"]
                                               - results["plain"]["slot_seconds_per_trial"])
    print(f"\n{args.trials} trivial trials, {args.concurrent} at a time, local Ray with {args.num_cpus} CPUs "
          f"(ray.init {init_s:.1f} s, not counted)")
    print(f"{'mode':6} {'wall s':>8} {'wall/trial s':>13} {'slot-s/trial':>13} {'trial time_total_s':>19}")
    for mode, r in results.items():
        print(f"{mode:6} {r['wall_s']:8.1f} {r['wall_per_trial_s']:13.2f} {r['slot_seconds_per_trial']:13.2f} "
              f"{r['trial_time_total_s_median']:19.2f}")
    if "train_over_plain_wall" in out:
        print(f"train / plain wall: {out['train_over_plain_wall']:.1f}x; each Train-wrapped trial holds a slot "
              f"{out['extra_slot_seconds_per_trial']:.1f} s longer")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    sys.exit(main() and 0)
