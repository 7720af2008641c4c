"""Shared test fixtures. Tests are split by what they protect: code/, data/, model/."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# MovieLens may not be redistributed, so it is never in the repo: tests read it from ../shared/data.
SHARED_DATA = Path(os.environ.get("LLMSREC_SHARED_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# `dvc repro` now ends with `package`, which writes to BentoML's model store: tests never touch a real one
# (not ~/bentoml, not a BENTOML_HOME set in the shell). Tests that need their own store set it per process.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="llmsrec-test-bentoml-")


@pytest.fixture(scope="session")
def pipeline_outputs(tmp_path_factory) -> Path:
    """A small but real pipeline output before `gate` (see tests/serving/conftest.py), made once per session."""
    from benchmarks.small_package import build_outputs
    from components.llm.backbone import load_backbone
    from tests.serving.conftest import SMALL_PARAMS

    return build_outputs(tmp_path_factory.mktemp("pipeline"), load_backbone("smollm2-135m", device="cpu"),
                         num_users=60, num_items=40, num_topics=4, max_length=30, num_negatives=9, max_users=16,
                         params=SMALL_PARAMS)


@pytest.fixture(scope="session")
def promoted_home(pipeline_outputs, tmp_path_factory) -> Path:
    """A BentoML home whose production model is the fixture model (gate passed, packaged): shared by the
    serving tests and the bad-input corpus, which only read it."""
    from tests.serving.conftest import gate, package

    home = tmp_path_factory.mktemp("bentoml_home")
    gate(pipeline_outputs, home)
    package(pipeline_outputs, home)
    return home


def truncate(path: Path) -> None:
    """Cut a file to half its bytes, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garble(path: Path) -> None:
    """Random bytes of the same length: only the content is wrong."""
    path.write_bytes(os.urandom(path.stat().st_size))


def edit_config(change):
    """A damage that rewrites a JSON file through `change(meta)` (a callable editing the dict in place)."""
    def edit(path: Path) -> None:
        import json

        meta = json.loads(path.read_text())
        change(meta)
        path.write_text(json.dumps(meta))
    return edit


@pytest.fixture
def repo_root() -> Path:
    return REPO


def shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"shared dataset {path} is absent (MovieLens is read from ../shared/data, never committed)")
    return path


def deep_update(base: dict, overrides: dict) -> dict:
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_update(base[k], v)
        else:
            base[k] = v
    return base


def make_workspace(dest: Path, params_overrides: dict | None = None) -> Path:
    """A temporary clone of the working tree (tracked and new files, not ignored ones) as a fresh git repo.

    Copying rather than `git clone` lets the tests see uncommitted work; a committed dvc.lock is
    dropped so no test depends on one.
    """
    import shutil
    import subprocess

    import yaml

    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if not src.is_file() or rel == "dvc.lock" or rel.startswith("reports/"):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    if params_overrides:
        params = yaml.safe_load((dest / "params.yaml").read_text())
        (dest / "params.yaml").write_text(yaml.safe_dump(deep_update(params, params_overrides), sort_keys=False))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(git + ["add", "-A"], cwd=dest, check=True)
    subprocess.run(git + ["commit", "-qm", "workspace"], cwd=dest, check=True)
    return dest


def copy_workspace(src: Path, dest: Path) -> Path:
    """A private copy of a workspace a fixture shares (made by `make_workspace`, git repository and DVC
    cache included), for a test that changes it: one pipeline run serves several tests, none sees another's
    changes. DVC hashes the copied files again on first use (new inodes), so the copy is as good as a clone
    that ran the same stages itself. Returns `dest`."""
    import shutil

    shutil.copytree(src, dest, symlinks=True)
    return dest


def venv_env() -> dict:
    """Environment for subprocesses: the project's interpreter first on PATH (dvc.yaml calls `python`)."""
    import sys

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env
