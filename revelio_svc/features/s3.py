"""Feature-store backend on S3 or any S3-compatible server (MinIO, Ceph, moto for tests).

Same interface as `LocalBackend`: `exists(rel)`, `read(rel)`, `write(rel, data)`, `local_path(rel)`
(always None: nothing is on local disk) and the attribute `uri`. Objects are read one at a time, so a
reader fetches the manifest and the shards it asks for, never a copy of the whole store.

Failure policy (why it is here and not left to botocore): botocore's default retries plus its 60 s
timeouts make a dead endpoint hang for minutes, and its final error names neither the store nor what
was being done. botocore's own retries are therefore switched off and its timeouts kept short; this
module retries transient failures (connection refused/reset, timeouts, HTTP 5xx, throttling) a bounded
number of times with exponential backoff, then raises `StoreError` naming the endpoint, the object
and the operation. Permanent failures (missing bucket, access denied, missing credentials) are raised
at once.

Environment variables (read when a backend is created):

| variable | default | meaning |
|---|---|---|
| `MLFLOW_S3_ENDPOINT_URL`, else `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL` | AWS | S3 endpoint |
| `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_PROFILE`, `AWS_DEFAULT_REGION` | | the standard boto3 credential chain |
| `REVELIO_S3_MAX_ATTEMPTS` | 4 | attempts per request, the first included |
| `REVELIO_S3_BACKOFF_S` | 0.5 | first retry delay; doubles on each retry (with jitter) |
| `REVELIO_S3_CONNECT_TIMEOUT_S` | 5 | TCP connect timeout of one attempt |
| `REVELIO_S3_READ_TIMEOUT_S` | 30 | socket read timeout of one attempt |
| `REVELIO_S3_MULTIPART_THRESHOLD` | 8388608 (8 MiB) | objects this large or larger go up in parts |
| `REVELIO_S3_PART_SIZE` | 8388608 (8 MiB) | part size of a multipart upload (S3 minimum: 5 MiB) |
"""
from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlparse

from .store import StoreError

T = TypeVar("T")

MiB = 1024 * 1024
S3_MIN_PART = 5 * MiB  # S3 rejects smaller parts (except the last) when the upload is completed
S3_MAX_PARTS = 10_000
MAX_DELAY_S = 20.0  # one backoff sleep never exceeds this, however many attempts are configured

# Error codes S3 and compatible stores use for "try again later" (besides any HTTP 5xx / 429).
TRANSIENT_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled", "SlowDown",
    "TooManyRequestsException", "RequestLimitExceeded", "RequestTimeout", "RequestTimeoutException",
    "InternalError", "ServiceUnavailable", "PriorRequestNotComplete", "BandwidthLimitExceeded",
})


def _env_num(name: str, default: float, kind: type, minimum: float) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return kind(default)
    try:
        value = kind(raw)
    except ValueError:
        raise StoreError(f"{name}={raw!r} is not a valid {'integer' if kind is int else 'number'}") from None
    if value < minimum:
        raise StoreError(f"{name}={raw!r} must be >= {minimum}")
    return value


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


class S3Backend:
    """Objects under `s3://bucket/prefix`; every write is a whole object, visible only once complete."""

    def __init__(self, uri: str, *, client: Any = None, endpoint_url: str | None = None,
                 max_attempts: int | None = None, backoff_s: float | None = None,
                 multipart_threshold: int | None = None, part_size: int | None = None,
                 connect_timeout_s: float | None = None, read_timeout_s: float | None = None):
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.max_attempts = max_attempts if max_attempts is not None else _env_num(
            "REVELIO_S3_MAX_ATTEMPTS", 4, int, 1)
        self.backoff_s = backoff_s if backoff_s is not None else _env_num("REVELIO_S3_BACKOFF_S", 0.5, float, 0)
        self.multipart_threshold = multipart_threshold if multipart_threshold is not None else _env_num(
            "REVELIO_S3_MULTIPART_THRESHOLD", 8 * MiB, int, 1)
        self.part_size = part_size if part_size is not None else _env_num(
            "REVELIO_S3_PART_SIZE", 8 * MiB, int, S3_MIN_PART)
        if self.max_attempts < 1:
            raise StoreError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.part_size < S3_MIN_PART:
            raise StoreError(f"part_size must be >= {S3_MIN_PART} bytes (the S3 minimum), got {self.part_size}")
        if client is None:
            client = self._make_client(
                endpoint_url if endpoint_url is not None else endpoint_from_env(),
                connect_timeout_s if connect_timeout_s is not None else _env_num(
                    "REVELIO_S3_CONNECT_TIMEOUT_S", 5, float, 0.1),
                read_timeout_s if read_timeout_s is not None else _env_num(
                    "REVELIO_S3_READ_TIMEOUT_S", 30, float, 0.1))
        self.client = client
        self.endpoint = str(getattr(getattr(client, "meta", None), "endpoint_url", None) or "the default AWS endpoint")
        self._bucket_checked = False

    @staticmethod
    def _make_client(endpoint_url: str | None, connect_timeout_s: float, read_timeout_s: float):
        import boto3
        from botocore.config import Config

        config = Config(
            # one attempt per botocore call: the bounded retry loop below owns retrying
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            # virtual-host addressing needs wildcard DNS, which self-hosted S3-compatible servers rarely have
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)

    def __repr__(self) -> str:
        return f"S3Backend({self.uri!r}, endpoint={self.endpoint!r})"

    # ------------------------------------------------------------------ helpers
    def key(self, rel: str) -> str:
        rel = str(rel)
        if rel.startswith("/") or any(p in ("", ".", "..") for p in rel.split("/")):
            raise StoreError(f"invalid path {rel!r} inside the store {self.uri}")
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key} at {self.endpoint}"

    @staticmethod
    def _is_transient(e: BaseException) -> bool:
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            HTTPClientError,
            IncompleteReadError,
            NoCredentialsError,
        )

        if isinstance(e, NoCredentialsError):
            return False
        if isinstance(e, (ConnectionError, HTTPClientError, IncompleteReadError)):
            return True
        if isinstance(e, ClientError):
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            code = str(e.response.get("Error", {}).get("Code", ""))
            return status >= 500 or status == 429 or code in TRANSIENT_CODES
        return False

    def _permanent_error(self, what: str, key: str, e: BaseException) -> StoreError | None:
        """A StoreError that says what to fix, for failures that retrying cannot cure; None otherwise."""
        from botocore.exceptions import (
            ClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
            return StoreError(
                f"S3 {what} of {self._where(key)} failed: no usable AWS credentials ({e}). Set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for the S3 store.")
        if isinstance(e, ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code == "NoSuchBucket":
                return self._missing_bucket()
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
                return StoreError(
                    f"S3 {what} of {self._where(key)} was refused ({code or status}): check the credentials "
                    "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and the bucket policy.")
            if code in ("NoSuchKey", "404") or status == 404:
                return StoreError(f"S3 {what} failed: no object {self._where(key)}")
            return StoreError(f"S3 {what} of {self._where(key)} failed: {code or status}: {e}")
        return None

    def _missing_bucket(self) -> StoreError:
        return StoreError(
            f"the S3 bucket {self.bucket!r} does not exist at {self.endpoint} (store {self.uri}). Create it "
            f"first, e.g. `aws --endpoint-url {self.endpoint} s3 mb s3://{self.bucket}`, or fix the bucket name.")

    def _call(self, what: str, key: str, fn: Callable[[], T]) -> T:
        """Run one S3 request with bounded retries on transient failures."""
        t0 = time.monotonic()
        for attempt in range(1, self.max_attempts + 1):
            try:
                return fn()
            except Exception as e:  # classified below; anything unrecognised is re-raised as it is
                if not self._is_transient(e):
                    err = self._permanent_error(what, key, e)
                    if err is None:
                        raise
                    raise err from e
                if attempt == self.max_attempts:
                    raise StoreError(
                        f"S3 {what} of {self._where(key)} failed after {attempt} attempt(s) in "
                        f"{time.monotonic() - t0:.1f} s: {type(e).__name__}: {str(e)[:300]}. Check that the "
                        "S3 endpoint is up and reachable (MLFLOW_S3_ENDPOINT_URL / AWS_ENDPOINT_URL); "
                        "REVELIO_S3_MAX_ATTEMPTS and REVELIO_S3_BACKOFF_S set how long to keep trying.") from e
                # exponential backoff with jitter, so many workers hitting one store do not retry in lockstep
                delay = min(MAX_DELAY_S, self.backoff_s * 2 ** (attempt - 1))
                time.sleep(delay * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    def _check_bucket(self, what: str, key: str) -> None:
        """Once per backend: a missing bucket gets its own message instead of a 404 on some object."""
        if self._bucket_checked:
            return
        from botocore.exceptions import ClientError

        try:
            self._call(f"{what} (bucket check)", key, lambda: self.client.head_bucket(Bucket=self.bucket))
        except StoreError as e:
            cause = e.__cause__
            if isinstance(cause, ClientError):
                status = int(cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
                if status == 404 or cause.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket"):
                    raise self._missing_bucket() from cause
            raise
        self._bucket_checked = True

    # ------------------------------------------------------------------ interface
    def exists(self, rel: str) -> bool:
        from botocore.exceptions import ClientError

        key = self.key(rel)
        self._check_bucket("existence check", key)

        def head() -> bool:
            try:
                self.client.head_object(Bucket=self.bucket, Key=key)
                return True
            except ClientError as e:
                status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
                if status == 404 or e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                    return False
                raise

        return self._call("existence check", key, head)

    def read(self, rel: str) -> bytes:
        key = self.key(rel)
        self._check_bucket("read", key)

        def get() -> bytes:
            # the body is read inside the retried call: a connection dropped mid-body is retried too
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

        return self._call("read", key, get)

    def write(self, rel: str, data: bytes) -> None:
        key = self.key(rel)
        self._check_bucket("write", key)
        data = bytes(data)
        if len(data) >= self.multipart_threshold:
            self._write_multipart(key, data)
        else:
            self._call("write", key, lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data))

    def _write_multipart(self, key: str, data: bytes) -> None:
        # parts are retried one by one, so a blip costs one part, not the whole object; the object
        # appears only on completion, which keeps the store's "uploaded whole" rule
        part_size = max(self.part_size, -(-len(data) // S3_MAX_PARTS))
        upload_id = self._call("multipart upload start", key, lambda: self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key)["UploadId"])
        try:
            parts = []
            for number, offset in enumerate(range(0, len(data), part_size), start=1):
                chunk = data[offset:offset + part_size]
                resp = self._call(f"multipart upload (part {number})", key,
                                  lambda n=number, body=chunk: self.client.upload_part(
                                      Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=n, Body=body))
                parts.append({"PartNumber": number, "ETag": resp["ETag"]})
            self._call("multipart upload completion", key, lambda: self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}))
        except BaseException:
            # best effort, one try: uploaded parts are billed until aborted; if the endpoint is down this
            # fails too, and a bucket lifecycle rule (AbortIncompleteMultipartUpload) is the backstop
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception:  # noqa: BLE001, S110 - the original error is the one worth reporting
                pass
            raise

    def local_path(self, rel: str) -> None:
        return None
