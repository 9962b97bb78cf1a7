"""Running under ``torchrun``: one process per device, the pool split across ranks by chunk.

A single process is a world of one: every collective is then a no-op, so the pipeline has one
code path. Across nodes nothing assumes a shared filesystem: rank 0 receives the other ranks'
scores through ``gather_object``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @classmethod
    def current(cls) -> "DistContext":
        """The process group this process already belongs to (set up by ``torchrun`` and a
        framework such as accelerate), else a world of one. Nothing is initialised here."""
        if dist.is_available() and dist.is_initialized():
            return cls(rank=dist.get_rank(), world=dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")))
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            if dist.get_backend() == "nccl":  # nccl reduces device tensors only
                on_dev = t.cuda()
                dist.all_reduce(on_dev, op=dist.ReduceOp.SUM)
                t.copy_(on_dev.cpu())
            else:
                dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def gather_to_main(self, obj) -> list | None:
        """Every rank's ``obj`` on rank 0 (``None`` elsewhere)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast_from_main(self, obj):
        if self.world == 1:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn):
        """Run ``fn`` on rank 0 and hand its result to every rank. An error there is raised on
        every rank, so no rank is left waiting in a collective for one that already failed."""
        if self.world == 1:
            return fn()
        result, error, failure = None, None, None
        if self.is_main:
            try:
                result = fn()
            except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
                failure, error = exc, f"{type(exc).__name__}: {exc}"
        result, error = self.broadcast_from_main((result, error))
        if failure is not None:
            raise failure
        if error is not None:
            raise RuntimeError(f"rank 0 failed: {error}")
        return result

    def close(self) -> None:
        if self.initialised_here and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str | None) -> tuple[DistContext, str | None]:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1), else a world of one.
    Returns the context and the device this rank should use."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), device
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    here = False
    if not dist.is_initialized():
        # gloo carries the object collectives on CPU too; nccl when every rank has a GPU
        # long enough for rank 0 to run a warmup while the others wait (TRIM_FAST_DIST_TIMEOUT_MIN)
        timeout = timedelta(minutes=float(os.environ.get("TRIM_FAST_DIST_TIMEOUT_MIN", "240")))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timeout)
        here = True
    return DistContext(rank=rank, world=world, local_rank=local_rank, initialised_here=here), device
