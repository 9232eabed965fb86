"""Sharding a run over processes: an explicit :class:`Shard`, created at the CLI edge.

Launched with ``torchrun --nproc-per-node N`` (or ``accelerate launch``) each
process takes every N-th batch of the pending items and writes its own part;
rank 0 merges after a barrier. Batches are formed before sharding, so a fresh
sharded run computes bit for bit what a single process computes.

Library code holds no global state: :func:`analysis.evaluation.evaluate` never
joins a process group itself. The caller that owns the process (the ``vsink``
command) calls :func:`init_distributed` and passes the :class:`Shard` in;
without one a run is a single process, whatever the environment says.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from analysis.capture import batched
from analysis.config import DISTRIBUTED_TIMEOUT_HOURS
from analysis.eval.errors import EvalError
from analysis.eval.runfolder import load_item_records, part_path, repair_part

if TYPE_CHECKING:
    from analysis.datasets import Item
    from analysis.eval.conditions import Condition


@dataclass(frozen=True)
class Shard:
    """This process's place in a ``torchrun``/``accelerate launch`` job (0 of 1 alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise EvalError(
                f"Bad shard: rank {self.rank} of world size {self.world_size} "
                f"(local rank {self.local_rank})."
            )

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def shard_from_env() -> Shard:
    """RANK / WORLD_SIZE / LOCAL_RANK as set by torchrun and accelerate."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise EvalError("RANK / WORLD_SIZE / LOCAL_RANK must be integers.") from None
    if world < 1 or not 0 <= rank < world:
        raise EvalError(f"Bad distributed environment: RANK={rank}, WORLD_SIZE={world}.")
    return Shard(rank, world, local)


def init_distributed(timeout_hours: float = DISTRIBUTED_TIMEOUT_HOURS) -> Shard:
    """Join the process group when launched by torchrun/accelerate (idempotent).

    For the process's entry point only (it sets torch's global process group).
    gloo on every device: the processes only exchange barriers and never
    tensors, so NCCL (which needs one GPU per rank) would add nothing. The
    long timeout lets a fast rank wait at the final barrier for a slow one.
    """
    shard = shard_from_env()
    if shard.world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            "gloo",
            rank=shard.rank,
            world_size=shard.world_size,
            timeout=timedelta(hours=timeout_hours),
        )
    return shard


def rank_device(device: str | None, shard: Shard) -> str | None:
    """One GPU per rank under torchrun: ``cuda`` (or the default) becomes ``cuda:LOCAL_RANK``."""
    if shard.world_size == 1 or not torch.cuda.is_available():
        return device
    if device is None or device == "cuda":
        return f"cuda:{shard.local_rank}"
    return device


def resolve_shard(shard: Shard | None) -> Shard:
    """The shard a run uses: a single process for None; a shard of several processes
    only when their process group exists (else they would race on the run folder)."""
    if shard is None:
        return Shard()
    if shard.world_size > 1 and not torch.distributed.is_initialized():
        raise EvalError(
            f"Shard {shard.rank} of {shard.world_size}: no process group; call "
            "init_distributed() at the entry point and pass its Shard."
        )
    return shard


def _barrier(shard: Shard) -> None:
    if shard.world_size > 1:
        resolve_shard(shard)  # a multi-process shard without its group is refused
        torch.distributed.barrier()


Pending = tuple[int, "Item", list["Condition"]]  # (dataset index, item, conditions not yet done)


def _my_batches(
    run: Path, shard: Shard, selected: list[Item], parsed: list[Condition], batch_size: int
) -> list[list[Pending]]:
    """This rank's batches of the items with conditions not done yet.

    Batches are formed over all pending items and then dealt round-robin, so
    a fresh sharded run puts the same items together as a single process.
    """
    repair_part(part_path(run, shard.rank))
    _barrier(shard)
    done = {r.key for r in load_item_records(run)}
    _barrier(shard)  # nobody appends before everyone has read the same done set
    todo = [
        (index, item, [c for c in parsed if (item.id, c.name) not in done])
        for index, item in enumerate(selected)
    ]
    pending = [t for t in todo if t[2]]
    return list(batched(pending, batch_size))[shard.rank :: shard.world_size]
