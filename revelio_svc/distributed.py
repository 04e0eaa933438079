"""torch.distributed for the stages that scale out (extract, train-sae): one process per rank, launched by
`torchrun` (single node, multi-node, SLURM, Kubernetes). Nothing here schedules anything.

A process is a rank of a group when torchrun's variables say so (`WORLD_SIZE` > 1, `RANK`, `LOCAL_RANK`,
`MASTER_ADDR`, `MASTER_PORT`); otherwise every helper is a no-op for a group of one, so the stages call
them unconditionally. The process group is created once, lazily, by `init()`.

Collectives carry a timeout (`REVELIO_DIST_TIMEOUT`, seconds, default 600): a rank whose peer died or
hangs raises instead of waiting forever. torchrun stops the other local ranks as soon as one exits
non-zero; the timeout bounds the wait of ranks on other nodes. It must exceed the longest time a rank can
legitimately wait for another: one extraction shard, one SAE evaluation.

Backend: `REVELIO_DIST_BACKEND` (gloo | nccl), else nccl when CUDA is available and gloo otherwise. The
SAE trainer computes on the CPU; with nccl its buffers are reduced on the rank's GPU and copied back.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT_ENV = "REVELIO_DIST_TIMEOUT"
BACKEND_ENV = "REVELIO_DIST_BACKEND"
DEFAULT_TIMEOUT_S = 600.0


class DistributedError(RuntimeError):
    """The process group could not be set up, or the launch environment is inconsistent."""


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""  # "" when not distributed

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> range:
        """The items of `range(n)` this rank owns: r, r + W, r + 2W, … (round robin keeps the ranks even)."""
        return range(self.rank, n, self.world_size)

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world_size}" if self.distributed else "single process"


_SINGLE = Context()
_ctx: Context | None = None
_farewell = None  # the group shutdown() meets the other ranks in (see init)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise DistributedError(f"{name}={raw!r} is not an integer (set by the launcher, e.g. torchrun)") from e


def launched() -> bool:
    """True in a rank of a group of more than one process (torchrun or an equivalent launcher)."""
    return _env_int("WORLD_SIZE", 1) > 1


def timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError as e:
        raise DistributedError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from e
    if value <= 0:
        raise DistributedError(f"{TIMEOUT_ENV} must be > 0 seconds, got {raw}")
    return value


def _backend() -> str:
    want = os.environ.get(BACKEND_ENV, "").strip().lower()
    if want and want not in ("gloo", "nccl"):
        raise DistributedError(f"{BACKEND_ENV}={want!r}: expected gloo or nccl")
    if want == "nccl" and not torch.cuda.is_available():
        raise DistributedError(f"{BACKEND_ENV}=nccl needs CUDA, and this process sees no GPU; use gloo")
    return want or ("nccl" if torch.cuda.is_available() else "gloo")


def init() -> Context:
    """Join the process group the launcher describes (once); returns this process's place in it."""
    global _ctx
    if _ctx is not None:
        return _ctx
    if not launched():
        _ctx = _SINGLE
        return _ctx
    rank, world, local = _env_int("RANK", -1), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise DistributedError(f"RANK={rank} is not in [0, WORLD_SIZE={world}); launch with torchrun")
    backend = _backend()
    if backend == "nccl":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s()), rank=rank, world_size=world)
    global _farewell
    # the ranks meet once more before leaving (shutdown): a rank that tears its group down while rank 0
    # still runs the light stages can abort inside gloo. That wait lasts as long as rank 0's probe and
    # registration, so it gets a group of its own with no practical timeout; if rank 0 fails instead,
    # torchrun stops the waiting ranks.
    _farewell = dist.new_group(backend="gloo", timeout=timedelta(days=7))
    _ctx = Context(rank, world, local, backend)
    return _ctx


def context() -> Context:
    """This process's place in the group (a group of one until `init()` joined a larger one)."""
    return _ctx if _ctx is not None else _SINGLE


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Run a block on this rank only, as a group of one (rank 0's light stages: a probe's control
    extraction must not wait for ranks that are not there)."""
    global _ctx
    saved, _ctx = _ctx, _SINGLE
    try:
        yield
    finally:
        _ctx = saved


def is_main() -> bool:
    return context().is_main


def barrier() -> None:
    """Wait for every rank; a dead or stuck peer raises after the timeout."""
    if context().distributed:
        # an all-reduce rather than dist.barrier(): it honours the timeout on every backend
        all_reduce(torch.zeros(1))


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce `t` over the ranks in place (op: sum | min | max) and return it."""
    ctx = context()
    if not ctx.distributed:
        return t
    rop = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op]
    if ctx.backend == "nccl" and t.device.type != "cuda":
        dev = t.to(f"cuda:{ctx.local_rank}")
        dist.all_reduce(dev, op=rop)
        t.copy_(dev.cpu())
    else:
        dist.all_reduce(t, op=rop)
    return t


def broadcast_(t: torch.Tensor) -> torch.Tensor:
    """Overwrite `t` with rank 0's values, in place."""
    ctx = context()
    if not ctx.distributed:
        return t
    if ctx.backend == "nccl" and t.device.type != "cuda":
        dev = t.to(f"cuda:{ctx.local_rank}")
        dist.broadcast(dev, src=0)
        t.copy_(dev.cpu())
    else:
        dist.broadcast(t, src=0)
    return t


def gather_floats(values: list[float]) -> list[list[float]]:
    """Every rank's `values` (same length on all ranks), indexed by rank; a single process gets [values]."""
    ctx = context()
    if not ctx.distributed:
        return [list(values)]
    # one sum-reduce of a (world × n) table each rank fills in its own row: no object (pickle) transfer
    table = torch.zeros(ctx.world_size, len(values), dtype=torch.float64)
    table[ctx.rank] = torch.tensor(values, dtype=torch.float64)
    all_reduce(table)
    return table.tolist()


def share_flag(value: bool) -> bool:
    """Rank 0's `value` on every rank (what rank 0 decided, e.g. to run a stage or reuse it)."""
    ctx = context()
    if not ctx.distributed:
        return value
    t = torch.tensor([1.0 if (value and ctx.is_main) else 0.0])
    return bool(all_reduce(t)[0] > 0)


def share_text(text: str) -> str:
    """Rank 0's `text` on every rank (UTF-8 bytes summed into zeros: no object pickling)."""
    ctx = context()
    if not ctx.distributed:
        return text
    data = text.encode() if ctx.is_main else b""
    size = all_reduce(torch.tensor([len(data)], dtype=torch.int64))
    buf = torch.zeros(int(size[0]), dtype=torch.int64)
    if ctx.is_main and data:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64))
    return bytes(all_reduce(buf).to(torch.uint8).tolist()).decode()


def check_same(value: str, what: str) -> None:
    """Stop when this rank sees `what` differently from rank 0 (e.g. files on a disk only one node has)."""
    ctx = context()
    if not ctx.distributed:
        return
    theirs = share_text(value)
    if theirs != value:
        raise DistributedError(f"{ctx.describe()} sees {what} as {value!r} but rank 0 sees {theirs!r}; every rank "
                               "must see the same files (put them on a file system all nodes share, or on S3)")


def failure_message(command: str, e: BaseException) -> str:
    """One line naming the rank (when distributed) and the cause."""
    ctx = context() if _ctx is not None or not launched() else Context(
        _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    where = f" (rank {ctx.rank} of {ctx.world_size})" if ctx.distributed else ""
    return f"revelio {command}{where}: {type(e).__name__}: {e}"


def shutdown() -> None:
    """Leave the process group together with every other rank (a clean exit; torchrun waits for all)."""
    global _ctx, _farewell
    if dist.is_available() and dist.is_initialized():
        if _farewell is not None:
            dist.all_reduce(torch.zeros(1), group=_farewell)
        dist.destroy_process_group()
    _ctx, _farewell = None, None
