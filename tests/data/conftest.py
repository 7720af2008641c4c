"""Fixtures for the data tests: a real filesystem that fills up, and one whole `dvc repro` shared by the
tests that need every stage run (tests/data/test_pipeline_dvc.py, tests/data/test_dvc_data_version.py)."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import make_workspace, venv_env

#: Small synthetic data, big enough for every stage; the data-version tests land batches on it.
SMALL_DATA = {
    "data": {"synthetic": {"num_users": 300, "num_items": 200, "num_topics": 12}},
    "candidates": {"max_users": 40},
    "orchestration": {"landing": {"settle_seconds": 0}},  # files dropped by a test are complete at once
}
#: The whole pipeline on SMALL_DATA, the real SmolLM2 backbone included: a tiny SASRec (two epochs, one
#: thread) and two distillation steps keep it quick in CI.
SMALL_PIPELINE = {
    **SMALL_DATA,
    "sasrec": {"epochs": 2, "hidden": 32, "num_blocks": 1, "threads": 1, "batch_size": 64},
    "distill": {"max_steps": 2, "batch_size": 8, "valid_users": 8, "eval_every": 1.0, "item_batch_size": 128,
                "max_minutes": None},
    "evaluate": {"threads": 1},
}


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory) -> SimpleNamespace:
    """A fresh clone on SMALL_PIPELINE after its first `srec run` (`dvc repro`), every stage run into an empty BentoML
    store, made once per session: `ws` (a test that runs DVC again copies it first, `copy_workspace`),
    `home` (that store), `env` (the run's environment: that store, one OpenMP thread) and `first` (the
    `srec run`'s CompletedProcess, its stdout naming each stage it ran, then the summary)."""
    root = tmp_path_factory.mktemp("reproduced")
    ws = make_workspace(root / "ws", SMALL_PIPELINE)
    env = {**venv_env(), "BENTOML_HOME": str(root / "bentoml"), "OMP_NUM_THREADS": "1"}
    # `srec run` (the console script beside this interpreter) is `dvc repro` plus the run's summary.
    first = subprocess.run([str(Path(sys.executable).with_name("srec")), "run"], cwd=ws, env=env, capture_output=True,
                           text=True, timeout=1200)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return SimpleNamespace(ws=ws, home=root / "bentoml", env=env, first=first)


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
