"""Who can read the store: the pipeline's user writes it, the service may run as another user in its group.

`package` used to leave the registry pointer, package.json and the weights 0600 and the version folder
0700 (atomic writes through mkstemp, copies of 0600 checkpoints, a private staging folder), so only the
pipeline's own user could serve. Now a new file or folder of the store gets the modes any new file gets
under the writer's umask. A reader that may not read a file is told which file, its mode and owner, and
who it is, instead of "not in the model store" or "damaged".

The reader runs as another user the only way this host allows (the interpreter lives under /root, 0700):
uid 0 with every capability dropped (`setpriv`), so the kernel checks the modes as for anyone else, on a
store owned by uid 65534 (the pipeline's user) and group STORE_GID (the group the two users share).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.serving.conftest import gate, package, registry_state, stage_env

PIPELINE_UID, STORE_GID = 65534, 4242


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix() or ".": stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def version_dir(home: Path) -> Path:
    return home / "models" / registry_state(home)["production"].replace(":", "/")


@pytest.fixture(scope="module")
def group_home(pipeline_outputs, tmp_path_factory) -> Path:
    """A store packaged under umask 027, as a pipeline user would run it to share with its group only."""
    ws = tmp_path_factory.mktemp("ws") / "ws"
    shutil.copytree(pipeline_outputs, ws)
    home = tmp_path_factory.mktemp("group_home") / "bentoml"  # made by the stage, as ~/bentoml would be
    with umask(0o027):
        gate(ws, home)
        package(ws, home)
    return home


def test_a_packaged_version_is_readable_by_the_writers_group(group_home):
    """Every file of the version, the version folder and the registry pointer: group-readable, nothing for
    others (umask 027). Before: 0600 files (weights, package.json, the pointer) and a 0700 version folder."""
    version = version_dir(group_home)
    found = modes(version)
    assert {rel: oct(m) for rel, m in found.items() if m not in (0o640, 0o750)} == {}, found
    assert found["."] == 0o750 and found["package.json"] == 0o640 and found["llmsrec/adapters.safetensors"] == 0o640
    assert stat.S_IMODE((group_home / "registry" / "llmsrec.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((version.parent / "latest").stat().st_mode) == 0o640


def test_new_files_follow_the_umask(tmp_path):
    """The two writers behind the store's modes, under three umasks: what `open()` would have given."""
    from components.io import share_tree, write_json

    for mask, file_mode, dir_mode in ((0o022, 0o644, 0o755), (0o027, 0o640, 0o750), (0o077, 0o600, 0o700)):
        with umask(mask):
            write_json(tmp_path / f"{mask:o}.json", {"a": 1})
            tree = tmp_path / f"tree{mask:o}"
            (tree / "sub").mkdir(parents=True)
            (tree / "sub" / "w.bin").write_bytes(b"x")
            os.chmod(tree / "sub" / "w.bin", 0o600)  # as a checkpoint is copied in
            os.chmod(tree, 0o700)  # as mkdtemp makes it
            share_tree(tree)
        assert stat.S_IMODE((tmp_path / f"{mask:o}.json").stat().st_mode) == file_mode
        assert modes(tree) == {".": dir_mode, "sub": dir_mode, "sub/w.bin": file_mode}


def _as_service_user(home: Path, code: str, groups: list[int]) -> subprocess.CompletedProcess:
    """Run `code` as a user that is not the store's owner, in `groups`, without the capabilities that let
    root read anything."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to read the store as another user")
    membership = f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"
    cmd = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", membership, "--", sys.executable, "-c", code]
    return subprocess.run(cmd, cwd=REPO, env=stage_env(home), capture_output=True, text=True, timeout=120)


READ = ("from components.serving.registry import resolve_serving_tag, verify\n"
        "from components.errors import PipelineError\n"
        "try:\n    print('served:', verify(resolve_serving_tag()))\n"
        "except PipelineError as e:\n    print(f'{type(e).__name__}: {e}')\n")


@pytest.fixture
def owned_store(group_home, tmp_path) -> Path:
    """A copy of `group_home`, modes as packaged, owned by the pipeline's user and the shared group, in a
    folder anyone may search."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give the store to another user")
    home = tmp_path / "home"  # the folders above are root's, 0700: the reader (uid 0) may search them
    shutil.copytree(group_home, home, symlinks=True)
    for p in [home, *home.rglob("*")]:
        os.chown(p, PIPELINE_UID, STORE_GID, follow_symlinks=False)
    return home


def test_a_service_user_in_the_group_can_serve_from_the_store(owned_store):
    out = _as_service_user(owned_store, READ, [STORE_GID])
    assert out.returncode == 0 and out.stdout.startswith("served: llmsrec:"), out.stdout + out.stderr


def test_a_user_outside_the_group_is_told_the_file_and_its_mode(owned_store):
    """Outside the group even the home folder is closed (0750 under umask 027): the error says so."""
    out = _as_service_user(owned_store, READ, [])
    # the first path BentoML or the registry looks up inside the home, whichever it is
    assert out.stdout.startswith(f"StoreAccessError: {owned_store}/"), out.stdout + out.stderr
    assert f": cannot be read by this process (blocked by the directory {owned_store}: mode 0750, owner uid " \
           f"{PIPELINE_UID} gid {STORE_GID}; this process: uid 0, groups 0)" in out.stdout, out.stdout
    assert "Fix: let the service's user read the store" in out.stdout


def test_a_store_written_before_is_named_not_called_missing(owned_store):
    """A version packaged by the old code (0700 folder, 0600 files) with its pointer made readable: the error
    used to be "production is llmsrec:..., which is not in the model store"."""
    version = version_dir(owned_store)
    for p in [version, *version.rglob("*")]:
        p.chmod(0o700 if p.is_dir() else 0o600)
    (owned_store / "registry" / "llmsrec.json").chmod(0o640)  # "when that pointer is fixed" (it was 0600 too)
    out = _as_service_user(owned_store, READ, [STORE_GID])
    assert out.stdout.startswith(f"StoreAccessError: {version / 'model.yaml'}: cannot be read by this process (blocked "
                                 f"by the directory {version}: mode 0700, owner uid {PIPELINE_UID} gid {STORE_GID}; "
                                 f"this process: uid 0, groups 0, {STORE_GID})"), out.stdout
    assert "not in the model store" not in out.stdout
    # the registry's own listing says the same, instead of hiding the version
    listing = _as_service_user(owned_store, "from components.serving.registry import main; main(['list'])", [STORE_GID])
    assert f"! {registry_state(owned_store)['production']}" in listing.stdout and "NOT READABLE by this user" in \
        listing.stdout and "mode 0700" in listing.stdout, listing.stdout + listing.stderr
    json.loads((owned_store / "registry" / "llmsrec.json").read_text())  # the pointer itself is intact
