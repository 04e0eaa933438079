"""The helpers in one process (a group of one) and the refusals that need no second process."""
from __future__ import annotations

import pytest
import torch

from revelio_svc import distributed


def test_one_process_is_a_group_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = distributed.init()
    assert not ctx.distributed and ctx.is_main and list(ctx.shard(3)) == [0, 1, 2]
    t = torch.ones(2)
    assert distributed.all_reduce(t) is t and t.tolist() == [1.0, 1.0]
    assert distributed.gather_floats([1.5]) == [[1.5]]
    assert distributed.share_text("é/x") == "é/x" and distributed.share_flag(True)
    distributed.barrier()
    distributed.check_same("a", "anything")


def test_ranks_take_shards_round_robin():
    assert [list(distributed.Context(r, 3, r, "gloo").shard(8)) for r in range(3)] == [[0, 3, 6], [1, 4, 7], [2, 5]]


def test_bad_launch_settings_are_named(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(distributed.DistributedError, match="REVELIO_DIST_TIMEOUT"):
        distributed.timeout_s()
    monkeypatch.setenv(distributed.BACKEND_ENV, "mpi")
    with pytest.raises(distributed.DistributedError, match="gloo or nccl"):
        distributed._backend()


def test_commands_that_do_not_scale_out_refuse_torchrun(monkeypatch, capsys):
    from revelio_svc.cli.main import dispatch

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert dispatch(["train-probe"]) == 2
    err = capsys.readouterr().err
    assert "does not run under torchrun" in err and "extract, train-sae, run" in err


def test_only_rank_0_may_set_up_tracking(monkeypatch):
    from revelio_svc.config import TrackingConfig
    from revelio_svc.tracking import setup

    monkeypatch.setattr(distributed, "_ctx", distributed.Context(1, 2, 1, "gloo"))
    with pytest.raises(RuntimeError, match="only rank 0 talks to the tracking server"):
        setup(TrackingConfig())
