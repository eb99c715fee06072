"""Distributed training under ``torchrun``: process groups, reductions, synchronised BN (docs/training.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass
import torch
import torch.distributed as dist
from torch import nn

from .errors import RecipeError

__all__ = ["DistInfo", "process_info", "join_process_group", "cleanup_distributed", "all_reduce_sum",
           "DistributedBatchNorm2d", "convert_sync_batchnorm"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, local rank, world size and device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def process_info(device: str = "auto") -> DistInfo:
    """This process's rank and device from ``torchrun``'s variables (one process without them); joins nothing."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RecipeError(
                f"recipe key 'device' is {device!r}, but this PyTorch sees no CUDA device "
                f"(built with CUDA {torch.version.cuda}); use --device cpu or --device auto"
            )
        dev = torch.device("cuda", local_rank if world_size > 1 else (torch.device(device).index or 0))
    else:
        dev = torch.device("cpu")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def join_process_group(info: DistInfo) -> None:
    """Select this process's CUDA device and join the process group of a multi-process run."""
    if info.device.type == "cuda":
        torch.cuda.set_device(info.device)
    if info.distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if info.device.type == "cuda" else "gloo")


def cleanup_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks (identity without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


class DistributedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span every rank, for CPU (PyTorch's ``SyncBatchNorm`` needs CUDA)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = (0, 2, 3)
        xf = x.float()
        count = torch.tensor([float(x.numel() // x.shape[1])], device=x.device)
        count = all_reduce(count)
        mean = all_reduce(xf.sum(dims)) / count
        centred = xf - mean[None, :, None, None]
        var = all_reduce(centred.square().sum(dims)) / count
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                n = count.item()
                m = self.momentum if self.momentum is not None else 0.0
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
                    if self.momentum is None:
                        m = 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach() * m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / max(n - 1, 1)) * m)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm2d by a synchronised one: PyTorch's on CUDA, ours elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def convert(module: nn.Module) -> nn.Module:
        if isinstance(module, nn.BatchNorm2d) and not isinstance(module, DistributedBatchNorm2d):
            new = DistributedBatchNorm2d(
                module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
            )
            new.load_state_dict(module.state_dict())
            new.train(module.training)
            return new
        for name, child in module.named_children():
            setattr(module, name, convert(child))
        return module

    return convert(model)

