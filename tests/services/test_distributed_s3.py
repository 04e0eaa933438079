"""Two ranks under torchrun writing one store on S3 (moto): the bytes a one-process local run writes, no
manifest part left, and a killed rank's shards kept on S3 for the relaunch."""
from __future__ import annotations

import pytest
import yaml

from revelio_svc.config import replace, to_dict
from revelio_svc.features.extract import extract
from tests.distributed.launch import HERE, torchrun

from .test_s3_store import local_files, s3_files

pytestmark = pytest.mark.services


def test_two_ranks_write_an_s3_store_equal_to_a_local_one(moto_s3, tiny_cfg, tmp_path, monkeypatch):
    moto_s3.use(monkeypatch, tmp_path)  # the launched ranks inherit the endpoint and credentials
    cfg = replace(tiny_cfg, **{"extract.shard_size": 8})
    uri = f"{moto_s3.uri}/features/two"
    conf = tmp_path / "s3.yaml"
    conf.write_text(yaml.safe_dump(to_dict(replace(cfg, **{"extract.store": uri}))))

    out, _ = torchrun(2, [str(HERE / "faults.py"), "kill-after-shard", "1", "extract", "--no-mlflow",
                          "--config", str(conf)], script=True)
    assert out.returncode != 0
    assert "_parts/rank-00001.json" in s3_files(moto_s3.client(), moto_s3.bucket, "features/two")

    out, _ = torchrun(2, ["extract", "--no-mlflow", "--config", str(conf)])
    assert out.returncode == 0, out.stderr[-3000:]
    extract(replace(cfg, **{"extract.store": str(tmp_path / "local")}), progress=False)
    assert s3_files(moto_s3.client(), moto_s3.bucket, "features/two") == local_files(tmp_path / "local")
