"""Where a store's files live: a local directory or an S3 prefix, behind one small interface
(exists, read, write, list, delete, local_path)."""
from __future__ import annotations

import os
import re
from pathlib import Path

from .s3 import S3Backend


class LocalBackend:
    """Files under a directory; writes are atomic (temp file + rename) so a kill never leaves half a file."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.uri = str(self.root)

    def exists(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def read(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()

    def write(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def list(self, prefix: str) -> list[str]:
        """Files under `prefix` (relative names, sorted); temp files are not part of the store."""
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*")
                      if p.is_file() and not p.name.endswith(".tmp"))

    def delete(self, rel: str) -> None:
        """Remove a file, and its folders up to the root once they are empty (no trace left in the layout)."""
        path = self.root / rel
        path.unlink(missing_ok=True)
        for parent in path.parents:
            if parent == self.root or self.root not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:  # not empty (or gone): stop climbing
                break

    def local_path(self, rel: str) -> Path | None:
        return self.root / rel

    def remove_stale_temp(self) -> int:
        """Delete temp files a killed writer left behind (`<name>.<pid>.tmp`); returns how many."""
        n = 0
        if self.root.is_dir():
            for p in self.root.rglob("*.tmp"):
                if re.fullmatch(r".+\.\d+\.tmp", p.name):
                    p.unlink(missing_ok=True)
                    n += 1
        return n


def backend_for(uri: str | Path):
    s = str(uri)
    if s.startswith("s3://"):
        return S3Backend(s)
    if s.startswith("file://"):
        s = s[len("file://"):]
    return LocalBackend(s)
