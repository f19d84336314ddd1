"""What the worker loop needs from torch.distributed to keep one model across ranks; no-ops on one process.

Ray Train (or any launcher) initialises the process group; these helpers only read it. The rule they
serve: every rank holds the same weights and buffers at every point where the loop decides
something (selection, stage switch, saving), and every decision is taken from numbers all ranks
share.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_chief() -> bool:
    return world()[0] == 0


def broadcast_state(model: nn.Module, buffers_only: bool = False) -> None:
    """Rank 0's parameters (unless `buffers_only`) and buffers on every rank.

    DDP keeps parameters equal by averaging gradients, but BatchNorm's running statistics are
    updated by each rank's own forward passes, and a `load_state_dict` is invisible to DDP.
    """
    if world()[1] == 1:
        return
    tensors = list(model.buffers()) if buffers_only else [*model.parameters(), *model.buffers()]
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=0)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (small things: a metrics dict, a decision)."""
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    if world()[1] == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / world()[1]


def gather_rows(mine: torch.Tensor, order: torch.Tensor, n: int) -> torch.Tensor:
    """All ranks' rows in one (n, ...) tensor, on every rank.

    Rank r computed the rows `order[r::world]` of some split (`mine`, in that order); each row of
    the split is computed by exactly one rank, so each example counts once in a metric.
    """
    rank, size = world()
    if size == 1:
        out = torch.empty((n, *mine.shape[1:]), dtype=mine.dtype, device=mine.device)
        out[order.to(mine.device)] = mine
        return out
    most = -(-n // size)  # all_gather wants equal shapes: pad every share to the largest
    padded = torch.zeros((most, *mine.shape[1:]), dtype=mine.dtype, device=mine.device)
    padded[:len(mine)] = mine
    shares = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(shares, padded)
    out = torch.empty((n, *mine.shape[1:]), dtype=mine.dtype, device=mine.device)
    order = order.to(mine.device)
    for r, share in enumerate(shares):
        rows = order[r::size]
        out[rows] = share[:len(rows)]
    return out
