"""Gradient averaging and rank votes in a real 2-process gloo group (the full loop: test_multiprocess.py)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from liandan.train import distributed


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        p = torch.nn.Parameter(torch.full((3,), float(rank)))
        distributed.broadcast_parameters([p])
        q = torch.nn.Parameter(torch.zeros(2))
        p.grad = torch.full((3,), 2.0 * (rank + 1))  # ranks: 2 and 4 -> mean 3
        q.grad = None if rank == 0 else torch.ones(2)  # a missing gradient counts as zeros -> 0.5
        distributed.average_gradients([p, q])
        votes = distributed.any_rank(rank == 1, False, device=torch.device("cpu"))
        late = distributed.LateVotes(torch.device("cpu"))
        late_votes = [
            late.exchange(rank == 1, False),
            late.exchange(False, rank == 0),
            late.exchange(False, False),
        ]
        late.drain()
        gathered = distributed.gather_objects({"rank": rank})
        loss = distributed.mean_over_ranks(torch.tensor(float(rank)))
        torch.save(
            {
                "p": p.data,
                "pg": p.grad,
                "qg": q.grad,
                "votes": votes,
                "late_votes": late_votes,
                "gathered": gathered,
                "loss": loss,
            },
            Path(out) / f"{rank}.pt",
        )
        distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def test_two_ranks(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        r = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert torch.equal(r["p"], torch.zeros(3))  # rank 0's weights everywhere
        assert torch.equal(r["pg"], torch.full((3,), 3.0))
        assert torch.equal(r["qg"], torch.full((2,), 0.5))
        assert r["votes"] == [True, False]
        assert r["late_votes"] == [[False, False], [True, False], [False, True]]  # each counted a step later
        assert r["gathered"] == [{"rank": 0}, {"rank": 1}]
        assert float(r["loss"]) == 0.5


def test_one_process_is_a_no_op() -> None:
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    distributed.average_gradients([p])
    assert distributed.world_size() == 1 and torch.equal(p.grad, torch.full((2,), 3.0))
    assert distributed.any_rank(True, False, device=torch.device("cpu")) == [True, False]
    assert distributed.LateVotes(torch.device("cpu")).exchange(False, True) == [False, True]  # at once
