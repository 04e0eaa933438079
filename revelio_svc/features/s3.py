"""Feature-store backend on S3 or any S3-compatible server (MinIO, Ceph, moto for tests).

Same interface as `LocalBackend`: `exists(rel)`, `read(rel)`, `write(rel, data)`, `local_path(rel)`
(always None: nothing is on local disk) and the attribute `uri`. Objects are read one at a time, so a
reader fetches the manifest and the shards it asks for, never a copy of the whole store.

Retries and multipart uploads are botocore's and s3transfer's own: the "standard" retry mode (exponential
backoff with jitter on connection errors, timeouts, 5xx and throttling; `AWS_MAX_ATTEMPTS` total attempts,
default 4) and `TransferConfig` (objects of 8 MiB or more go up in 8 MiB parts, each part retried on its
own). What this module adds: short timeouts, so a dead endpoint fails in seconds rather than minutes, and
errors that name the store, the object and what was being done (`StoreError`); a missing bucket or
missing credentials are reported at once, with what to do.

Environment: `MLFLOW_S3_ENDPOINT_URL` (else `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`) for the
endpoint, the standard boto3 credential chain (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`,
...), and botocore's `AWS_MAX_ATTEMPTS`.
"""
from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlparse

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from .errors import StoreError

T = TypeVar("T")

MiB = 1024 * 1024
S3_MIN_PART = 5 * MiB  # S3 rejects smaller parts (except the last)
MULTIPART_THRESHOLD = 8 * MiB
PART_SIZE = 8 * MiB
DEFAULT_MAX_ATTEMPTS = 4  # when AWS_MAX_ATTEMPTS is not set


def endpoint_from_env() -> str | None:
    """The S3 endpoint the project uses: MLflow's variable first, so one setting serves MLflow and stores."""
    for name in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix/` → ("bucket", "some/prefix")."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StoreError(f"{uri!r} is not an S3 URI; expected s3://BUCKET/PREFIX")
    return parsed.netloc, parsed.path.strip("/")


def _status(e: ClientError) -> tuple[str, int]:
    return (str(e.response.get("Error", {}).get("Code", "")),
            int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0))


class S3Backend:
    """Objects under `s3://bucket/prefix`; every write is a whole object, visible only once complete."""

    def __init__(self, uri: str, *, client: Any = None, endpoint_url: str | None = None,
                 max_attempts: int | None = None, multipart_threshold: int | None = None,
                 part_size: int | None = None, connect_timeout_s: float = 5.0, read_timeout_s: float = 30.0):
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        part_size = part_size if part_size is not None else PART_SIZE
        if part_size < S3_MIN_PART:
            raise StoreError(f"part_size must be >= {S3_MIN_PART} bytes (the S3 minimum), got {part_size}")
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold or MULTIPART_THRESHOLD,
                                       multipart_chunksize=part_size, use_threads=False)
        if max_attempts is None:
            raw = os.environ.get("AWS_MAX_ATTEMPTS", "").strip()
            max_attempts = int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_MAX_ATTEMPTS
        self.max_attempts = max_attempts
        if client is None:
            endpoint = endpoint_url if endpoint_url is not None else endpoint_from_env()
            client = boto3.session.Session().client("s3", endpoint_url=endpoint, config=Config(
                retries={"total_max_attempts": max_attempts, "mode": "standard"},
                connect_timeout=connect_timeout_s, read_timeout=read_timeout_s,
                # virtual-host addressing needs wildcard DNS, which self-hosted S3-compatible servers rarely have
                s3={"addressing_style": "path"} if endpoint else None))
        self.client = client
        self.endpoint = str(getattr(getattr(client, "meta", None), "endpoint_url", None) or "the default AWS endpoint")
        self._bucket_checked = False

    def __repr__(self) -> str:
        return f"S3Backend({self.uri!r}, endpoint={self.endpoint!r})"

    # ------------------------------------------------------------------ errors
    def key(self, rel: str) -> str:
        rel = str(rel)
        if rel.startswith("/") or any(p in ("", ".", "..") for p in rel.split("/")):
            raise StoreError(f"invalid path {rel!r} inside the store {self.uri}")
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key} at {self.endpoint}"

    def _missing_bucket(self) -> StoreError:
        return StoreError(
            f"the S3 bucket {self.bucket!r} does not exist at {self.endpoint} (store {self.uri}). Create it "
            f"first, e.g. `aws --endpoint-url {self.endpoint} s3 mb s3://{self.bucket}`, or fix the bucket name.")

    def _error(self, what: str, key: str, e: Exception) -> StoreError:
        """What went wrong, in words that say what to fix; botocore has already retried what was transient."""
        if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
            return StoreError(
                f"S3 {what} of {self._where(key)} failed: no usable AWS credentials ({e}). Set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for the S3 store.")
        if isinstance(e, ClientError):
            code, status = _status(e)
            if code == "NoSuchBucket":
                return self._missing_bucket()
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
                return StoreError(
                    f"S3 {what} of {self._where(key)} was refused ({code or status}): check the credentials "
                    "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and the bucket policy.")
            if code in ("NoSuchKey", "404") or status == 404:
                return StoreError(f"S3 {what} failed: no object {self._where(key)}")
            if status < 500 and status != 429:
                return StoreError(f"S3 {what} of {self._where(key)} failed: {code or status}: {e}")
        return StoreError(
            f"S3 {what} of {self._where(key)} failed after {self.max_attempts} attempt(s): {type(e).__name__}: "
            f"{str(e)[:300]}. Check that the S3 endpoint is up and reachable (MLFLOW_S3_ENDPOINT_URL / "
            "AWS_ENDPOINT_URL); AWS_MAX_ATTEMPTS sets how many attempts are made.")

    def _call(self, what: str, key: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (BotoCoreError, ClientError) as e:
            raise self._error(what, key, e) from e
        except S3UploadFailedError as e:  # s3transfer wraps the botocore error it gave up on
            cause = e.__cause__ or e.__context__
            raise self._error(what, key, cause if isinstance(cause, (BotoCoreError, ClientError)) else e) from e

    def _check_bucket(self, what: str, key: str) -> None:
        """Once per backend: a missing bucket gets its own message instead of a 404 on some object."""
        if self._bucket_checked:
            return
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            code, status = _status(e)
            if status == 404 or code in ("404", "NoSuchBucket"):
                raise self._missing_bucket() from e
            raise self._error(f"{what} (bucket check)", key, e) from e
        except BotoCoreError as e:
            raise self._error(f"{what} (bucket check)", key, e) from e
        self._bucket_checked = True

    # ------------------------------------------------------------------ interface
    def exists(self, rel: str) -> bool:
        key = self.key(rel)
        self._check_bucket("existence check", key)
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as e:
            code, status = _status(e)
            if status == 404 or code in ("404", "NoSuchKey"):
                return False
            raise self._error("existence check", key, e) from e
        except BotoCoreError as e:
            raise self._error("existence check", key, e) from e

    def read(self, rel: str) -> bytes:
        key = self.key(rel)
        self._check_bucket("read", key)
        return self._call("read", key, lambda: self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def write(self, rel: str, data: bytes) -> None:
        key = self.key(rel)
        self._check_bucket("write", key)
        # one PUT below the threshold, a multipart upload above it; the object appears only when complete
        self._call("write", key, lambda: self.client.upload_fileobj(io.BytesIO(bytes(data)), self.bucket, key,
                                                                    Config=self.transfer))

    def list(self, prefix: str) -> list[str]:
        """Objects under `prefix`, relative to the store (sorted)."""
        key = self.key(prefix)
        self._check_bucket("listing", key)
        start = len(self.prefix) + 1 if self.prefix else 0

        def names() -> list[str]:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=key + "/")
            return sorted(o["Key"][start:] for page in pages for o in page.get("Contents", ()))

        return self._call("listing", key, names)

    def delete(self, rel: str) -> None:
        key = self.key(rel)
        self._check_bucket("delete", key)
        self._call("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=key))

    def local_path(self, rel: str) -> None:
        return None
