"""Data-parallel processes started by torchrun: who we are, the process group, collectives.

``ds2 train`` runs unchanged as one process or as N under torchrun::

    torchrun --standalone --nproc-per-node 4 -m ds2.cli train data/train.json data/dev.json -o exp/run

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK (and where to meet, MASTER_ADDR/PORT);
:func:`ranks_from_env` reads them, :func:`device_for` puts each rank on its LOCAL_RANK GPU
(or the CPU), and :func:`start` joins the process group: NCCL between GPUs, gloo on the CPU.
Without those variables everything here is a no-op for one process, so callers never branch
on the number of processes themselves.

The collectives here are the few that training needs besides DistributedDataParallel's own
gradient all-reduce: sums of counters, averages of buffers, and gathering Python objects
(dev hypotheses). Every rank must call each of them at the same point of the run.

Imports only ds2.io.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ds2.io import select_device

ENV_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes."""

    rank: int = 0  # 0 .. world_size - 1, across all machines
    world_size: int = 1
    local_rank: int = 0  # on this machine: which GPU to use

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes logs, CSVs, plots and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = Ranks()


def ranks_from_env(environ: dict | None = None) -> Ranks:
    """The ranks torchrun announces in WORLD_SIZE, RANK and LOCAL_RANK; one process without them.

    Raises ValueError naming the variable when one is set and not a valid number.
    """
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return SINGLE
    values = {}
    for name in ENV_VARIABLES:
        text = environ.get(name, "0")
        try:
            values[name] = int(text)
        except ValueError:
            raise ValueError(f"environment variable {name}={text!r} is not an integer (set by torchrun)") from None
    world_size, rank, local_rank = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(f"inconsistent torchrun environment: WORLD_SIZE={world_size}, RANK={rank}, LOCAL_RANK={local_rank}")
    return Ranks(rank, world_size, local_rank)


def device_for(name: str, ranks: Ranks) -> torch.device:
    """The device of this rank for a --device value. One process: as :func:`ds2.io.select_device`
    names it. Under torchrun, auto and cuda mean cuda:LOCAL_RANK (auto: the CPU without a GPU).

    Raises ValueError for a device that cannot serve: cuda:N under torchrun (each rank must
    have its own GPU), or fewer GPUs on this machine than ranks.
    """
    device = select_device(name)
    if not ranks.distributed or device.type != "cuda":
        return device
    if device.index is not None:
        raise ValueError(f"--device {name}: under torchrun each rank uses cuda:LOCAL_RANK; give --device cuda or auto")
    if ranks.local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {ranks.local_rank}, but this machine has {torch.cuda.device_count()} GPUs: "
                         "start at most one process per GPU (--nproc-per-node)")
    return torch.device("cuda", ranks.local_rank)


def start(ranks: Ranks, device: torch.device, timeout_minutes: float = 30.0) -> bool:
    """Join the process group (NCCL for CUDA devices, gloo otherwise) if there are several
    ranks and it is not joined yet. Returns whether this call started it (the caller then
    calls :func:`stop`). ``timeout_minutes``: how long a collective may wait for a rank
    before the run fails (rank 0's dev evaluation and checkpoint writes must fit in it)."""
    if not ranks.distributed or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.world_size,
                            timeout=timedelta(minutes=timeout_minutes))
    return True


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- collectives


def all_sum(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """``tensor`` summed over the ranks, in place (returned); unchanged for one process.
    No value is read back to the host."""
    if ranks.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_buffers(tensors: list[torch.Tensor], ranks: Ranks) -> None:
    """Replace each tensor by its mean over the ranks (float tensors; others are left as
    they are), in place, with one all-reduce."""
    floats = [t for t in tensors if t.is_floating_point()]
    if not ranks.distributed or not floats:
        return
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in floats])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ranks.world_size
    offset = 0
    for tensor in floats:
        tensor.data.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()


def gather_objects(value, ranks: Ranks) -> list:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    if not ranks.distributed:
        return [value]
    gathered = [None] * ranks.world_size
    dist.all_gather_object(gathered, value)
    return gathered
