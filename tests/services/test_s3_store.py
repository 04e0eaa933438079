"""The feature store on S3: same files as a local store, multipart for large objects, bounded retries,
clear errors, and resumption after an outage."""
from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from revelio_svc.features import s3
from revelio_svc.features.s3 import S3Backend
from revelio_svc.features.store import (
    MANIFEST,
    StoreError,
    StoreWriter,
    new_manifest,
    open_store,
    set_key,
    shard_name,
)
from revelio_svc.identity import digest as config_hash

pytestmark = pytest.mark.services

MiB = 1024 * 1024
MEAN = set_key("mid_block", 10, "mean")
TOKENS = set_key("up_blocks.1", 10, "tokens")


# --------------------------------------------------------------------------- a synthetic extraction
def make_manifest(n_images: int = 10, shard_size: int = 4, dim: int = 6, hw: int = 2) -> dict:
    """A fresh manifest (StoreWriter mutates the one it is given), the same for equal arguments."""
    config = {"backbone": {"kind": "unet2d", "id": "test-tiny"}, "dataset": {"fingerprint": "f" * 16},
              "hook_points": ["mid_block", "up_blocks.1"], "timesteps": [10], "pooling": ["mean", "tokens"],
              "dtype": "float32", "noise_seed": 0, "shard_size": shard_size, "dim": dim}
    sets = {MEAN: {"hook_point": "mid_block", "timestep": 10, "pooling": "mean", "shape": [dim], "dtype": "float32"},
            TOKENS: {"hook_point": "up_blocks.1", "timestep": 10, "pooling": "tokens", "shape": [hw, hw, dim],
                     "dtype": "float32"}}
    return new_manifest(config, config_hash(config, 16), n_images, shard_size,
                        {"shape": ["circle", "square"]}, sets)


def shard_data(manifest, i: int):
    """Rows and features of shard i, a function of (i, shapes) only, as extraction's seeded noise is."""
    n, size = manifest.n_images, manifest.shard_size
    idx = np.arange(i * size, min((i + 1) * size, n), dtype=np.int64)
    rng = np.random.default_rng(1000 + i)
    rows = {"index": idx, "split": (idx % 4 == 0).astype(np.uint8), "label.shape": idx % 2}
    sets = {k: rng.standard_normal((len(idx), *spec.shape)).astype(np.float32)
            for k, spec in sorted(manifest.feature_sets.items())}
    return rows, sets, []


def write_store(uri: str, manifest, shards=None) -> StoreWriter:
    writer = StoreWriter(uri, manifest)
    for i in range(manifest.n_shards) if shards is None else shards:
        if i not in writer.done:
            writer.write_shard(i, *shard_data(manifest, i))
    return writer


def local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def s3_files(client, bucket: str, prefix: str) -> dict[str, bytes]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            out[obj["Key"][len(prefix) + 1:]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def count_requests(client) -> list[str]:
    """Every HTTP request the client sends, as 'Operation /bucket/key': one per attempt, so botocore's
    own retries would show up here too."""
    from urllib.parse import unquote, urlsplit

    sent: list[str] = []

    def on_send(request, event_name, **_):
        sent.append(f"{event_name.rsplit('.', 1)[-1]} {unquote(urlsplit(request.url).path)}")

    client.meta.events.register("before-send.s3", on_send)
    return sent


# --------------------------------------------------------------------------- tests
def test_store_on_s3_equals_local_store(services, tmp_path, monkeypatch):
    services.use_s3(monkeypatch, tmp_path)
    prefix = f"tests/store-{uuid.uuid4().hex[:12]}"
    uri = f"s3://{services.bucket}/{prefix}"
    client = services.s3_client()
    try:
        write_store(str(tmp_path / "local"), make_manifest())
        writer = write_store(uri, make_manifest())
        assert writer.backend.uri == uri and writer.backend.local_path(MANIFEST) is None

        # the same files, byte for byte: manifest, rows and every feature shard
        remote = s3_files(client, services.bucket, prefix)
        local = local_files(tmp_path / "local")
        assert sorted(remote) == sorted(local)
        assert len(local) == 1 + 3 * 3  # manifest + 3 shards × (rows + 2 feature sets)
        assert remote == local

        store = open_store(uri, verify=True)
        ref = open_store(tmp_path / "local")
        assert store.manifest == ref.manifest and store.complete and store.n_rows == 10
        for key in (MEAN, TOKENS):
            np.testing.assert_array_equal(store.feature_set(*_parts(key)).load(), ref.feature_set(*_parts(key)).load())
        np.testing.assert_array_equal(store.labels("shape"), ref.labels("shape"))
        np.testing.assert_array_equal(store.is_test(), ref.is_test())
        store.verify_all()
    finally:
        for key in s3_files(client, services.bucket, prefix):
            client.delete_object(Bucket=services.bucket, Key=f"{prefix}/{key}")


def _parts(key: str):
    hook, t, pooling = key.rsplit("/", 2)
    return hook, int(t[1:]), pooling


def test_reader_fetches_only_the_shards_it_reads(moto_s3, tmp_path, monkeypatch):
    moto_s3.use(monkeypatch, tmp_path)
    uri = f"{moto_s3.uri}/feat"
    write_store(uri, make_manifest())
    store = open_store(uri)
    sent = count_requests(store.backend.client)
    shard = store.feature_set("up_blocks.1", 10, "tokens").shard(1)
    assert shard.shape == (4, 2, 2, 6)
    # one GET of one object: never a listing or a copy of the whole store
    assert sent == [f"GetObject /{moto_s3.bucket}/feat/{TOKENS}/{shard_name(1)}"]


def test_large_objects_go_up_in_parts(moto_s3, tmp_path, monkeypatch):
    moto_s3.use(monkeypatch, tmp_path)
    backend = S3Backend(f"{moto_s3.uri}/big", multipart_threshold=5 * MiB, part_size=5 * MiB)
    sent = count_requests(backend.client)
    big = np.random.default_rng(0).integers(0, 256, 11 * MiB + 7, dtype=np.uint8).tobytes()
    backend.write("blob.bin", big)
    backend.write("small.bin", b"x" * 1000)

    raw = moto_s3.client()
    assert raw.head_object(Bucket=moto_s3.bucket, Key="big/blob.bin")["ETag"].strip('"').endswith("-3")
    assert "-" not in raw.head_object(Bucket=moto_s3.bucket, Key="big/small.bin")["ETag"]
    ops = [s.split()[0] for s in sent]
    assert ops.count("UploadPart") == 3 and ops.count("CompleteMultipartUpload") == 1
    assert ops.count("PutObject") == 1  # the small object: one plain PUT
    assert backend.read("blob.bin") == big

    # a store whose shards cross the threshold reads back the same through the multipart path
    manifest = make_manifest(n_images=6, shard_size=3, dim=700, hw=12)  # tokens shard: 3·12·12·700·4 B ≈ 1.2 MB
    monkeypatch.setattr(s3, "MULTIPART_THRESHOLD", 1 * MiB)
    monkeypatch.setattr(s3, "PART_SIZE", 5 * MiB)
    write_store(f"{moto_s3.uri}/store", manifest)
    write_store(str(tmp_path / "local"), make_manifest(n_images=6, shard_size=3, dim=700, hw=12))
    assert raw.head_object(Bucket=moto_s3.bucket, Key=f"store/{TOKENS}/{shard_name(0)}")["ETag"].strip('"').endswith("-1")
    assert s3_files(raw, moto_s3.bucket, "store") == local_files(tmp_path / "local")


def test_outage_gives_bounded_retries_then_a_clear_error_and_resume_matches(moto_s3, tmp_path, monkeypatch):
    moto_s3.use(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    uri = f"{moto_s3.uri}/run"
    manifest = make_manifest(n_images=20, shard_size=4)  # 5 shards
    writer = write_store(uri, manifest, shards=[0, 1])
    sent = count_requests(writer.backend.client)

    moto_s3.stop()
    t0 = time.monotonic()
    with pytest.raises(StoreError) as err:
        writer.write_shard(2, *shard_data(manifest, 2))
    elapsed = time.monotonic() - t0
    msg = str(err.value)
    assert elapsed < 30, f"an outage took {elapsed:.1f} s to be reported"
    assert moto_s3.url in msg and f"s3://{moto_s3.bucket}/run/" in msg and shard_name(2) in msg
    assert "after 3 attempt(s)" in msg and "write" in msg
    # exactly the configured attempts (botocore's standard retry mode), the same request each time
    assert len(sent) == 3 and len(set(sent)) == 1

    moto_s3.start()
    resumed = StoreWriter(uri, make_manifest(n_images=20, shard_size=4))
    assert resumed.done == {0, 1}  # the shard being written when S3 went away is not in the manifest
    write_store(uri, make_manifest(n_images=20, shard_size=4))

    write_store(str(tmp_path / "uninterrupted"), make_manifest(n_images=20, shard_size=4))
    assert s3_files(moto_s3.client(), moto_s3.bucket, "run") == local_files(tmp_path / "uninterrupted")
    assert open_store(uri, verify=True).complete


def test_short_outage_is_ridden_out_by_retries(moto_s3, tmp_path, monkeypatch):
    moto_s3.use(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "8")
    backend = S3Backend(f"{moto_s3.uri}/blip")
    backend.write("a.bin", b"before")
    sent = count_requests(backend.client)
    moto_s3.stop()
    restart = threading.Timer(1.0, moto_s3.start)
    restart.start()
    try:
        backend.write("b.bin", b"during")
    finally:
        restart.join()
    assert len(sent) > 1  # it did fail at first and retried
    assert backend.read("b.bin") == b"during" and backend.read("a.bin") == b"before"


def test_hung_endpoint_fails_within_the_timeouts(moto_s3, tmp_path, monkeypatch):
    moto_s3.use(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    backend = S3Backend(f"{moto_s3.uri}/hung", read_timeout_s=1)
    assert not backend.exists("x")  # bucket checked while the endpoint still answers
    moto_s3.hang()
    t0 = time.monotonic()
    with pytest.raises(StoreError, match=r"read of .*hung/x.* after 2 attempt\(s\).*ReadTimeout"):
        backend.read("x")
    assert time.monotonic() - t0 < 10


def test_missing_bucket_is_a_clear_error_without_retries(moto_s3, tmp_path, monkeypatch):
    moto_s3.use(monkeypatch, tmp_path)
    backend = S3Backend("s3://no-such-bucket-here/feat")
    sent = count_requests(backend.client)
    with pytest.raises(StoreError, match=r"bucket 'no-such-bucket-here' does not exist at http://127\.0\.0\.1:"):
        backend.exists(MANIFEST)
    assert sent == ["HeadBucket /no-such-bucket-here"]
    with pytest.raises(StoreError, match="does not exist"):
        open_store("s3://no-such-bucket-here/feat")
    with pytest.raises(StoreError, match="does not exist"):
        StoreWriter("s3://no-such-bucket-here/feat", make_manifest())


def test_missing_credentials_and_bad_settings_are_clear_errors(moto_s3, tmp_path, monkeypatch):
    moto_s3.use(monkeypatch, tmp_path)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StoreError, match="no usable AWS credentials.*AWS_ACCESS_KEY_ID"):
        S3Backend(f"{moto_s3.uri}/x").read(MANIFEST)
    with pytest.raises(StoreError, match="part_size must be >= 5242880"):
        S3Backend(f"{moto_s3.uri}/x", part_size=1024)
    with pytest.raises(StoreError, match="not an S3 URI"):
        S3Backend("s3:///no-bucket")


def test_extract_to_s3_survives_an_outage_and_matches_a_local_run(moto_s3, tiny_cfg, tmp_path, monkeypatch):
    """The real writer: `extract` with extract.store=s3://…, S3 gone after the first shard, run again."""
    from revelio_svc.config import replace
    from revelio_svc.features.extract import extract

    moto_s3.use(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    cfg = replace(tiny_cfg, **{"data.n_images": 24, "extract.shard_size": 8, "extract.hook_points": ("mid_block",),
                               "extract.timesteps": (10,), "extract.pooling": ("mean", "tokens")})
    uri = f"{moto_s3.uri}/features/tiny"
    s3_cfg = replace(cfg, **{"extract.store": uri})

    def outage_after_first_shard(s: int) -> None:
        if s == 0:
            moto_s3.stop()

    with pytest.raises(StoreError, match=r"shard-00001.*after 2 attempt"):
        extract(s3_cfg, progress=False, on_shard=outage_after_first_shard)
    moto_s3.start()
    resumed = extract(s3_cfg, progress=False)
    assert resumed.store_uri == uri and resumed.shards_computed == 2  # shard 0 was kept, not recomputed

    ref = extract(replace(cfg, **{"extract.store": str(tmp_path / "local")}), progress=False)
    assert ref.config_hash == resumed.config_hash
    assert s3_files(moto_s3.client(), moto_s3.bucket, "features/tiny") == local_files(tmp_path / "local")
