"""The collectives a fit needs over a ``torch.distributed`` process group.

:class:`Collective` wraps a process group (or none: one process) with the few operations
the chunked EM uses: sums, minima and maxima of statistics across ranks, a broadcast from
the group's rank 0, and gathering a variable number of rows from every rank. For one
process every operation returns its input, so the fitting code has one path.

Backends: gloo for CPU tensors, NCCL for CUDA tensors (the tensors must then live on the
rank's current CUDA device). Processes are started as usual, e.g. with ``torchrun``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["Collective"]


class Collective:
    """Reductions over ``group`` (a ``torch.distributed`` process group), or no-ops for None.

    Args:
        group: the process group, or None for a one-process fit.

    Example:
        >>> c = Collective(None)  # one process: every operation is the identity
        >>> c.rank, c.world_size, c.sum_(torch.ones(2)).tolist()
        (0, 1, [1.0, 1.0])
    """

    def __init__(self, group: Any) -> None:
        self.group = group
        if group is None:
            self.rank, self.world_size = 0, 1
            return
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "`process_group` was given but torch.distributed is not initialised; call "
                "torch.distributed.init_process_group first (torchrun sets up its environment)."
            )
        self._dist = dist
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self._root = dist.get_global_rank(group, 0) if hasattr(dist, "get_global_rank") else 0

    @property
    def active(self) -> bool:
        """Whether there is more than one process to talk to."""
        return self.world_size > 1

    def default_device(self) -> torch.device:
        """The device a rank's collectives run on when it has no data to say: the current
        CUDA device for NCCL, else the CPU."""
        if self.group is not None and self._dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _reduce(self, tensor: Tensor, op: str) -> Tensor:
        if self.active:
            self._dist.all_reduce(tensor, op=getattr(self._dist.ReduceOp, op), group=self.group)
        return tensor

    def sum_(self, tensor: Tensor) -> Tensor:
        """All-reduce ``tensor`` in place by summation; returns it."""
        return self._reduce(tensor, "SUM")

    def min_(self, tensor: Tensor) -> Tensor:
        """All-reduce ``tensor`` in place by the element-wise minimum; returns it."""
        return self._reduce(tensor, "MIN")

    def max_(self, tensor: Tensor) -> Tensor:
        """All-reduce ``tensor`` in place by the element-wise maximum; returns it."""
        return self._reduce(tensor, "MAX")

    def broadcast_(self, tensor: Tensor) -> Tensor:
        """Overwrite ``tensor`` in place with rank 0's; returns it."""
        if self.active:
            self._dist.broadcast(tensor, src=self._root, group=self.group)
        return tensor

    def all_gather_rows(self, tensor: Tensor, dim: int = 1) -> Tensor:
        """Every rank's ``tensor`` concatenated along ``dim`` in rank order.

        The ranks may hold different sizes along ``dim`` (other dims equal): sizes are
        gathered first, each tensor is padded to the largest, gathered, and trimmed.
        """
        if not self.active:
            return tensor
        size = torch.tensor([tensor.shape[dim]], device=tensor.device, dtype=torch.long)
        sizes = [torch.zeros_like(size) for _ in range(self.world_size)]
        self._dist.all_gather(sizes, size, group=self.group)
        sizes = [int(s) for s in sizes]
        largest = max(sizes)
        pad_shape = list(tensor.shape)
        pad_shape[dim] = largest - tensor.shape[dim]
        padded = torch.cat([tensor, tensor.new_zeros(pad_shape)], dim=dim).contiguous()
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        self._dist.all_gather(parts, padded, group=self.group)
        return torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, sizes)], dim=dim)

    def all_gather_ints(self, values: list[int], device: torch.device) -> list[list[int]]:
        """Every rank's list of ints (same length on every rank), in rank order."""
        local = torch.tensor(values, device=device, dtype=torch.long)
        if not self.active:
            return [values]
        parts = [torch.zeros_like(local) for _ in range(self.world_size)]
        self._dist.all_gather(parts, local, group=self.group)
        return [p.tolist() for p in parts]
