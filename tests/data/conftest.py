"""Fixtures for the data tests: a real filesystem that fills up."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def small_fs():
    """Mount a real tmpfs of a given size (needs root): a disk that really fills, ENOSPC from the kernel."""
    mounted: list[Path] = []

    def mount(path: Path, size: str = "4m") -> Path:
        path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs to fill ({r.stderr.strip()}); needs root")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(root: Path) -> Path:
    """Write zeros until the filesystem under `root` is full; returns the filler file (delete it to free)."""
    filler = root / "filler"
    with filler.open("wb", buffering=0) as f:
        with pytest.raises(OSError) as e:
            while True:
                f.write(b"\0" * 65536)
    assert e.value.errno == errno.ENOSPC
    return filler
