"""torch.distributed helpers for the trainer: one code path for 1 and N processes.

Under ``torchrun --nproc_per_node N`` every process runs the same :func:`logitnorm_plugin.train`
call. :func:`setup` reads the launcher's environment (``env://``: ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and starts a process group
(``nccl`` on CUDA, ``gloo`` on CPU); in a plain process it returns a context of size 1 whose
collectives do nothing, so the trainer never branches on "distributed or not" beyond asking
:attr:`DistContext.is_main` before writing files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from logitnorm_plugin._core.device import resolve_device

__all__ = ["DistContext", "setup", "env_world_size", "shard_indices"]


def env_world_size() -> int:
    """``WORLD_SIZE`` set by a launcher such as torchrun (1 if unset)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def shard_indices(perm: Tensor, rank: int, world_size: int) -> Tensor:
    """This process's share of an index permutation, as ``DistributedSampler`` deals it.

    The permutation is padded to a multiple of ``world_size`` by repeating its first indices,
    then rank ``r`` takes ``perm[r::world_size]``. Every rank gets the same number of indices
    (so all take the same number of steps), and for a per-rank batch ``b`` the union of the
    ranks' ``i``-th batches is exactly ``perm[i*b*world_size : (i+1)*b*world_size]``: the
    global batch a single process would have drawn.

    :param perm: 1-D index tensor (the same on every rank)
    :param rank: this process's rank
    :param world_size: number of processes
    """
    if world_size <= 1:
        return perm
    pad = (-len(perm)) % world_size
    if pad:
        perm = torch.cat([perm, perm[:pad]])
    return perm[rank::world_size]


@dataclass
class DistContext:
    """Rank, world size and collectives of the current process.

    :param rank: global rank of this process
    :param world_size: number of processes
    :param local_rank: rank on this machine (picks the GPU)
    :param owns_group: whether :func:`setup` started the process group (and :meth:`close`
        should end it)
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0

    def all_reduce_sum(self, tensors: Sequence[Tensor]) -> None:
        """Sum each tensor over all processes, in place."""
        if self.enabled:
            import torch.distributed as dist

            for t in tensors:
                dist.all_reduce(t, op=dist.ReduceOp.SUM)

    def all_reduce_min(self, tensor: Tensor) -> None:
        """Minimum over all processes, in place."""
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.MIN)

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (e.g. BatchNorm running statistics) to every process, so
        that evaluation shards see one model."""
        if self.enabled:
            import torch.distributed as dist

            for buf in module.buffers():
                dist.broadcast(buf, src=0)

    def gather_objects(self, obj: Any) -> List[Any]:
        """``obj`` of every process, in rank order (a list of one without DDP)."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """End the process group if :func:`setup` started it."""
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False


def setup(device: str | None = None) -> Tuple[DistContext, torch.device]:
    """Join the process group that a launcher described in the environment, if any.

    :param device: the requested device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"``);
        under DDP on CUDA the process uses ``cuda:LOCAL_RANK`` whatever index was given
    :return: ``(context, device)``
    """
    import torch.distributed as dist

    requested = resolve_device(device)
    if dist.is_available() and dist.is_initialized():
        # the caller started a group itself: use it, leave it open
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))
        ctx = DistContext(rank, world, local, owns_group=False)
    elif env_world_size() > 1:
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        backend = "nccl" if requested.type == "cuda" else "gloo"
        if requested.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, init_method="env://")
        ctx = DistContext(dist.get_rank(), dist.get_world_size(), local, owns_group=True)
    else:
        return DistContext(), requested
    if requested.type == "cuda":
        requested = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(requested)
    return ctx, requested
