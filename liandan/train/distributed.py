"""What the loop needs from several processes, done by hand so any method works under DDP.

A method's `loss` calls its own modules, not DDP wrappers, so DDP's gradient hooks would never fire (they
need the forward to go through the wrapper). Instead the loop starts every rank from rank 0's weights and
averages the gradients itself once per optimizer step: one flat all-reduce, the same result as DDP.
With one process every function here is a no-op.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


def world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def broadcast_parameters(params: list[torch.nn.Parameter]) -> None:
    """Make every rank start from rank 0's weights."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for p in params:
            torch.distributed.broadcast(p.data, src=0)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Replace each gradient by its mean over the ranks (a missing gradient counts as zeros)."""
    world = world_size()
    if world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    if world_size() == 1:
        return value
    total = value.detach().clone()
    torch.distributed.all_reduce(total)
    return total / world_size()


@dataclass
class Vote:
    """Flags OR-ed over the ranks, on their way to the host: `count` waits only for the vote itself, which
    the device (a GPU stream) or gloo's thread makes while later work is queued behind it."""

    flags: list[bool] | torch.Tensor
    ready: Callable[[], Any] | None = None  # the CUDA event's synchronize, or gloo's Work.wait

    def count(self) -> list[bool]:
        if isinstance(self.flags, list):
            return self.flags
        if self.ready is not None:
            self.ready()
        return [bool(v) for v in self.flags.tolist()]


def cast_vote(*flags: bool, device: torch.device) -> Vote:
    """Start an all-ranks OR of `flags` without waiting for it (with one process, the flags themselves)."""
    if world_size() == 1:
        return Vote(list(flags))
    votes = torch.tensor([float(f) for f in flags], device=device)
    if device.type != "cuda":
        work = torch.distributed.all_reduce(votes, op=torch.distributed.ReduceOp.MAX, async_op=True)
        return Vote(votes, work.wait)
    torch.distributed.all_reduce(votes, op=torch.distributed.ReduceOp.MAX)  # queued on the stream
    host = votes.to("cpu", non_blocking=True)  # into pinned memory, after the all-reduce
    ready = torch.cuda.Event()
    ready.record()
    return Vote(host, ready.synchronize)


def any_rank(*flags: bool, device: torch.device) -> list[bool]:
    """True where any rank says True: a request made to one process (interrupt, save) binds all of them."""
    return cast_vote(*flags, device=device).count()


class LateVotes:
    """The loop's per-step votes (save, preview, interrupt) without a per-step wait across ranks.

    Several processes count each step's vote at the next step, so no rank's host waits for a collective (and,
    on a GPU, for the device) in the hot loop; every rank counts the same vote at the same step, so they act
    together, one step after the request. One process counts its flags at once.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pending: Vote | None = None

    def exchange(self, *flags: bool) -> list[bool]:
        vote = cast_vote(*flags, device=self.device)
        if world_size() == 1:
            return vote.count()
        earlier, self.pending = self.pending, vote
        return earlier.count() if earlier is not None else [False] * len(flags)

    def drain(self) -> None:
        """Finish the vote in flight (at the end: what it asked for, the final save and stop cover)."""
        if self.pending is not None:
            self.pending.count()
            self.pending = None


def gather_objects(value: Any) -> list[Any]:
    """One entry per rank (all ranks get the full list)."""
    if world_size() == 1:
        return [value]
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, value)
    return out


def barrier() -> None:
    if world_size() > 1:
        torch.distributed.barrier()


def to_device(value: Any, device: torch.device) -> Any:
    """A batch (tensors in nested dicts, lists and tuples) on this rank's device."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_device(v, device) for v in value)
    return value
