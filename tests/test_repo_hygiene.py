"""What the repository holds: sources, not build outputs."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_build_outputs_are_ignored_and_not_committed():
    ignored = {line.strip() for line in (REPO / ".gitignore").read_text().splitlines()}
    assert "build/" in ignored or "/build/" in ignored
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: nothing committed to look at")
    tracked = subprocess.run(["git", "ls-files", "build"], cwd=REPO, capture_output=True, text=True, check=True)
    assert tracked.stdout == "", f"committed build outputs: {tracked.stdout.splitlines()[:5]}"
