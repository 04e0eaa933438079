"""Out-of-memory backoff: halve the batch, say so, retry; results as if nothing had happened."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from revelio_svc.backbones.memory import (
    BatchTooLargeError,
    OOMBackoff,
    is_oom,
    merge_results,
    run_with_oom_backoff,
)


class FakeDevice:
    """A forward that runs out of memory above `limit` items, the way CUDA or the CPU allocator do."""

    def __init__(self, limit: int, error=torch.cuda.OutOfMemoryError):
        self.limit = limit
        self.error = error
        self.sizes: list[int] = []

    def __call__(self, batch):
        x = batch[0] if isinstance(batch, tuple) else batch
        self.sizes.append(len(x))
        if len(x) > self.limit:
            if self.error is torch.cuda.OutOfMemoryError:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: not enough memory: "
                               "you tried to allocate 1073741824 bytes.")
        return x * 2


def test_cuda_oom_halves_the_batch_until_it_fits_and_keeps_the_order(capsys):
    x = torch.arange(10.0)
    dev = FakeDevice(limit=3)
    out = run_with_oom_backoff(dev, x)
    assert torch.equal(out, x * 2)
    assert dev.sizes[:3] == [10, 5, 2]  # 10 → 5 → 2 fits; then the rest at 2
    assert all(s <= 3 for s in dev.sizes[3:])
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == ["out of memory at batch size 10; retrying with batch size 5",
                       "out of memory at batch size 5; retrying with batch size 2"]


def test_cpu_not_enough_memory_is_handled_too(capsys):
    x = np.arange(8)
    out = run_with_oom_backoff(FakeDevice(limit=4, error=RuntimeError), x)
    assert np.array_equal(out, x * 2)
    assert "retrying with batch size 4" in capsys.readouterr().out


def test_other_errors_are_not_swallowed():
    def broken(_):
        raise ValueError("a real bug")

    with pytest.raises(ValueError, match="a real bug"):
        run_with_oom_backoff(broken, list(range(4)))
    assert not is_oom(RuntimeError("shape mismatch"))
    assert is_oom(torch.cuda.OutOfMemoryError("x")) and is_oom(RuntimeError("MPS backend out of memory"))


def test_out_of_memory_at_the_minimum_batch_says_what_to_do():
    with pytest.raises(BatchTooLargeError, match=r"even at batch size 2 .*minimum is 2.*resolution"):
        run_with_oom_backoff(FakeDevice(limit=0), torch.arange(8.0), min_batch=2, log=lambda _m: None)


def test_the_backoff_remembers_the_size_that_worked():
    backoff = OOMBackoff(8, log=lambda _m: None)
    dev = FakeDevice(limit=4)
    backoff.run(dev, torch.arange(8.0))
    assert backoff.batch_size == 4
    dev.sizes.clear()
    backoff.run(dev, torch.arange(8.0))
    assert dev.sizes == [4, 4]  # the next batch does not fail again at 8


def test_batches_of_several_parts_are_sliced_alike_and_dict_results_merged():
    images = np.arange(6 * 2).reshape(6, 2)
    ids = [f"i{k}" for k in range(6)]

    def fn(sub):
        imgs, sub_ids = sub
        if len(sub_ids) > 2:
            raise torch.cuda.OutOfMemoryError("out of memory")
        return {"ids": list(sub_ids), "sum": torch.from_numpy(imgs.sum(1))}

    out = run_with_oom_backoff(fn, (images, ids), log=lambda _m: None)
    assert out["ids"] == ids
    assert out["sum"].tolist() == images.sum(1).tolist()
    with pytest.raises(TypeError, match="cannot merge"):
        merge_results([object(), object()])


def test_split_extraction_gives_the_same_features(tmp_path_factory):
    """Per-(image, t) noise makes features independent of where an OOM split the batch."""
    from revelio_svc.backbones import load_backbone
    from revelio_svc.config import BackboneConfig
    from tests.backbones import tiny_models as tm

    a = load_backbone(BackboneConfig(kind="sd", id=str(tm.pipeline_dir(tmp_path_factory, "sd")), device="cpu"))
    imgs, ids = tm.images(4, seed=2), ["p", "q", "r", "s"]

    def step(sub):
        sub_imgs, sub_ids = sub
        if len(sub_ids) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return tm.features(a, sub_imgs, sub_ids, 100, ["mid_block"])

    split = run_with_oom_backoff(step, (imgs, ids), log=lambda _m: None)
    whole = tm.features(a, imgs, ids, 100, ["mid_block"])
    torch.testing.assert_close(split["mid_block"], whole["mid_block"], atol=1e-5, rtol=1e-4)
