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


# ---------------------------------------------------------------------------------------- BatchNorm
class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose batch statistics are those of the global batch, on any device.

    What `torch.nn.SyncBatchNorm` computes, which refuses CPU tensors (gloo): in training under a
    process group, per channel c

        mean_c = sum_ranks sum_i x_ic / N,   var_c = sum_ranks sum_i (x_ic - mean_c)^2 / N

    with N the global count, both sums by a differentiable all-reduce (its backward all-reduces the
    gradients, so each rank's inputs receive the gradient of every rank's loss through the shared
    statistics). Two passes rather than E[x^2] - mean^2, which loses digits. The count, sums,
    mean and variance are fp32 whatever the input's dtype (under bf16 autocast a count of 257 would
    round to 256 and the sums lose digits), as cuDNN's and SyncBatchNorm's statistics are; the output
    takes the input's dtype. Running statistics take the unbiased variance N / (N - 1), as BatchNorm
    does. Outside training or without a group it is plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world()[1] > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        x32 = x.float()
        n = all_reduce(x32.new_tensor(float(x.numel() // x.shape[1])))
        mean = all_reduce(x32.sum(dims)) / n
        var = all_reduce(((x32 - mean.view(shape)) ** 2).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1), m)
        y = (x32 - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.float().view(shape) + self.bias.float().view(shape)
        return y.to(x.dtype)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of `model` normalised over the global batch when the trial runs on more than
    one rank, so a recipe means the same on 1 and 8 GPUs: `torch.nn.SyncBatchNorm` on GPUs,
    `GlobalBatchNorm` elsewhere. The state-dict keys do not change. A no-op on one rank."""
    if world()[1] == 1 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert(model, device)


def _convert(module: nn.Module, device: torch.device) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats).to(device)
        out.load_state_dict(module.state_dict())
        out.train(module.training)
        return out
    for name, child in module.named_children():
        module.add_module(name, _convert(child, device))
    return module
