"""The data version a package records is the hash `dvc.lock` holds for the prepared data, read with DVC's API.

A two-stage DVC project made here: `prep` writes a folder, `pkg` reads the data version of it while
`dvc repro` runs (as the `package` stage does, with DVC's repository lock held).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.errors import DataError
from components.stages.package import UNVERSIONED, data_version_of
from tests.conftest import REPO, venv_env

READ_VERSION = ("from pathlib import Path; from components.stages.package import data_version_of; "
                "Path('version.txt').write_text(data_version_of(Path('prep')))")


def dvc(ws: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**venv_env(), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ws, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("dvc_project")
    subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
    assert dvc(ws, "init", "-q").returncode == 0
    (ws / "source.txt").write_text("raw data\n")
    stages = {
        "prep": {"cmd": "mkdir -p prep && cp source.txt prep/a.txt && echo b > prep/b.txt",
                 "deps": ["source.txt"], "outs": ["prep"]},
        "pkg": {"cmd": f'{sys.executable} -c "{READ_VERSION}"', "deps": ["prep"], "outs": ["version.txt"]},
        "later": {"cmd": "mkdir -p later && echo c > later/c.txt", "outs": ["later"]},
    }
    (ws / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    out = dvc(ws, "repro", "pkg")
    assert out.returncode == 0, out.stdout + out.stderr
    return ws


def locked_md5(ws: Path, stage: str, path: str) -> str:
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"] == path)


def test_under_dvc_repro_the_version_is_the_lock_hash_of_the_prepared_output(project):
    recorded = (project / "version.txt").read_text()
    assert recorded.endswith(".dir") and recorded == locked_md5(project, "prep", "prep")
    assert data_version_of(project / "prep") == recorded  # run by hand in the project: the same


def test_a_folder_changed_since_the_lock_is_an_error_not_a_wrong_version(project, tmp_path):
    (project / "prep" / "b.txt").write_text("edited by hand\n")
    try:
        with pytest.raises(DataError, match=r"no longer what dvc.lock records for stage 'prep'.*dvc repro prep"):
            data_version_of(project / "prep")
    finally:
        (project / "prep" / "b.txt").write_text("b\n")
    assert data_version_of(project / "prep") == locked_md5(project, "prep", "prep")


def test_an_output_dvc_has_not_locked_yet_is_an_error(project):
    (project / "later").mkdir(exist_ok=True)
    with pytest.raises(DataError, match=r"no hash for this output of stage 'later'.*dvc repro later"):
        data_version_of(project / "later")


def test_outside_a_dvc_project_or_output_the_data_is_unversioned(project, tmp_path):
    (tmp_path / "loose").mkdir()
    assert data_version_of(tmp_path / "loose") == UNVERSIONED
    (project / "untracked").mkdir(exist_ok=True)
    assert data_version_of(project / "untracked") == UNVERSIONED
