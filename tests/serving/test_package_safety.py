"""A `package` stage that dies midway, or a damaged file in a stored version, leaves the champion
serving. The real gate and package stages (dvc.yaml's command) on the fixture model (tests/serving/conftest.py)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.errors import CheckpointError
from components.serving.registry import list_models, resolve_serving_tag, rollback, set_production, verify
from tests.conftest import truncate
from tests.model.conftest import stage_argv
from tests.serving.conftest import (
    bentoml_store,
    gate,
    package,
    registry_state,
    run_stage,
    stage_env,
)

pytestmark = [pytest.mark.slow, pytest.mark.real_llm]

# `package` as dvc.yaml runs it, except that one file copy into the BentoML home (where the store is)
# dies: SIGKILL (as `kill -9`, the OOM killer or a lost machine would) or an OSError (a full disk).
# DIE=first: at the first file copied into the home; DIE=last / raise: at the last one, when every other
# file of the version is already there.
DYING_PACKAGE = r"""
import os, runpy, shutil, signal, sys
from pathlib import Path

home, die = Path(os.environ["BENTOML_HOME"]).resolve(), os.environ["DIE"]
copyfile, copies, total = shutil.copyfile, [], []

def files_to_store(src):
    # BentoML assembles the version in a temporary directory (bentoml-model-*) and copies all of it
    for parent in Path(src).resolve().parents:
        if parent.name.startswith("bentoml-model-"):
            return sum(1 for p in parent.rglob("*") if p.is_file())
    return 1

def dying_copyfile(src, dst, *args, **kwargs):
    if home in Path(dst).resolve().parents:
        copies.append(dst)
        total or total.append(files_to_store(src))
        if die == "first" or len(copies) == total[0]:
            if die == "raise":
                raise OSError(28, "No space left on device")
            os.kill(os.getpid(), signal.SIGKILL)
    return copyfile(src, dst, *args, **kwargs)

shutil.copyfile = dying_copyfile
sys.argv = ["components.stages.package", *sys.argv[1:]]
runpy.run_module("components.stages.package", run_name="__main__", alter_sys=True)
"""


def version_dir(home: Path, tag: str) -> Path:
    return home / "models" / "llmsrec" / tag.split(":")[1]


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def stores(two_versions):
    """`before_home`, `before_ws`: a home whose production is the champion, and a workspace whose challenger
    the gate has judged against it (package not yet run). `home`, `ws`: the same after that package run,
    with two versions (the challenger in production, the champion before it). Built once per session
    (tests/serving/conftest.py `two_versions`): tests copy what they change."""
    return two_versions


def champion_serves(home: Path, champion: str) -> None:
    """The scorer, built as `bentoml serve` builds it, loads `champion` and answers."""
    import asyncio

    from components.serving.schema import HistoryItem, ScoreRequest
    from components.serving.service import LLMSRecScorer

    with bentoml_store(home):
        scorer = LLMSRecScorer()
        scorer.wait_until_loaded()  # it loads in the background
        assert scorer.tag == champion
        answer = asyncio.run(scorer.score([ScoreRequest(history=[HistoryItem(
            item_id=scorer.packaged.item_ids[0])], k=3)]))[0]
        assert answer.status_code == 200 and answer.result.model == champion and len(answer.result.items) == 3


@pytest.mark.parametrize("die", ["first", "last", "raise"],
                         ids=["sigkill-at-first-file", "sigkill-at-last-file", "disk-full-at-last-file"])
def test_package_dying_midway_leaves_the_champion_serving(stores, tmp_path, clean_env, die):
    home, ws = tmp_path / "home", tmp_path / "ws"
    shutil.copytree(stores.before_home, home)
    shutil.copytree(stores.before_ws, ws)
    pointer = (home / "registry" / "llmsrec.json").read_bytes()
    champion_files = tree_digest(version_dir(home, stores.champion))

    # dvc.yaml's own command, but the model card: this fixture's workspace has no run report (stage `report`),
    # and the card is one more file, not what this test is about.
    argv = stage_argv("package")[3:]
    if "--card" in argv:
        del argv[argv.index("--card"):argv.index("--card") + 2]
    out = subprocess.run([sys.executable, "-c", DYING_PACKAGE, *argv], cwd=ws,
                         env={**stage_env(home), "DIE": die}, capture_output=True, text=True, timeout=300)
    if die == "raise":
        assert out.returncode == 1, out.stderr
        assert "ERROR [package]" in out.stderr and "No space left on device" in out.stderr
        assert "production is unchanged" in out.stderr and "Traceback" not in out.stderr
    else:
        assert out.returncode == -9, (out.returncode, out.stderr[-2000:])  # it died where it was meant to

    # Nothing changed for the champion: the pointer, its files, the store's listing, what serving picks.
    assert (home / "registry" / "llmsrec.json").read_bytes() == pointer
    assert tree_digest(version_dir(home, stores.champion)) == champion_files
    assert [str(m.tag) for m in list_models(home)] == [stores.champion]  # no half-written version is visible
    listing = run_stage(ws, home, "components.serving.registry", "list")
    assert listing.stdout.startswith(f"* {stores.champion}") and "DAMAGED" not in listing.stdout
    assert resolve_serving_tag(home) == stores.champion and verify(stores.champion, home) == stores.champion
    champion_serves(home, stores.champion)

    # Nothing lost: the same run again completes, and promotes a complete, intact challenger.
    package(ws, home)
    new = registry_state(home)["production"]
    assert new != stores.champion and verify(new, home) == new
    assert sorted(str(m.tag) for m in list_models(home)) == sorted([stores.champion, new])
    assert not [p for p in (home / ".models-staging").iterdir()]  # no leftovers of the dead run


def garble(path: Path) -> None:
    """Same size, other bytes: only the recorded sha256 can tell."""
    path.write_bytes(bytes(b ^ 0x5A for b in path.read_bytes()))


# (file in the version, damage, what the refusal says, whether the quick size check at resolve sees it)
DAMAGE = {
    "adapters truncated": ("llmsrec/adapters.safetensors", truncate, "is [0-9]+ bytes .* truncated", True),
    "adapters garbled": ("llmsrec/adapters.safetensors", garble, "other content .* than when packaged", False),
    "teacher weights garbled": ("sasrec/model.safetensors", garble, "other content", False),
    "config garbage": ("llmsrec/config.json", garble, "other content", False),
    "catalogue file deleted": ("catalogue/items.parquet", Path.unlink, "package file missing", True),
    "manifest garbage": ("package.json", garble, "package.json: is not valid JSON", True),
    "manifest nested past the parser": ("package.json", lambda p: p.write_text("[" * 5000 + "]" * 5000),
                                        "package.json: is not valid JSON", True),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_production_version_is_refused_and_the_champion_serves(stores, tmp_path, clean_env, damage):
    from components.serving.packaged import PackagedModel

    rel, spoil, says, seen_by_size = DAMAGE[damage]
    home = tmp_path / "home"
    shutil.copytree(stores.home, home)
    spoil(version_dir(home, stores.challenger) / rel)

    # Refused wherever it is read, naming the file and the fix, before any LLM is loaded
    with pytest.raises(CheckpointError, match=says) as caught:
        verify(stores.challenger, home)
    assert caught.value.subject.endswith(rel) and "promote another version" in str(caught.value)
    with pytest.raises(CheckpointError, match=says):
        PackagedModel.load(version_dir(home, stores.challenger), stores.challenger, backbone=object())
    # ... and never made production again: the pointer stays, the refusal is logged
    set_production(stores.champion, "promote", "the test", home)
    with pytest.raises(CheckpointError, match=says):
        set_production(stores.challenger, "promote", "the test", home)
    assert registry_state(home)["production"] == stores.champion
    assert registry_state(home)["events"][-1]["action"] == "refuse"
    with pytest.raises(CheckpointError, match=says):
        rollback(home)  # the champion was promoted with the challenger as its predecessor: refused as well

    # Serving, with the damaged version in production: the champion before it serves instead
    state = registry_state(home)
    state["production"] = stores.challenger  # as it was when the file got damaged
    (home / "registry" / "llmsrec.json").write_text(json.dumps(state))
    assert resolve_serving_tag(home) == (stores.champion if seen_by_size else stores.challenger)
    champion_serves(home, stores.champion)  # the content check at load catches the rest


def test_a_version_bentoml_cannot_read_is_listed_as_damaged_and_skipped(stores, tmp_path, clean_env):
    home = tmp_path / "home"
    shutil.copytree(stores.home, home)
    (version_dir(home, stores.challenger) / "model.yaml").write_text("{{ not: yaml")
    assert [str(m.tag) for m in list_models(home)] == [stores.champion]
    listing = run_stage(stores.ws, home, "components.serving.registry", "list")
    assert f"! {stores.challenger}" in listing.stdout and "DAMAGED" in listing.stdout
    assert listing.stdout.startswith(f"  {stores.champion}")
    assert resolve_serving_tag(home) == stores.champion
    out = run_stage(stores.ws, home, "components.serving.registry", "verify", check=False)
    assert out.returncode == 1 and "BentoML cannot read this version" in out.stderr and "Traceback" not in out.stderr


def test_pinned_damaged_version_is_an_error_not_a_fallback(stores, tmp_path, clean_env, monkeypatch):
    """LLMSREC_MODEL_TAG asks for one version: damaged, it is refused with the file, never swapped."""
    home = tmp_path / "home"
    shutil.copytree(stores.home, home)
    truncate(version_dir(home, stores.champion) / "llmsrec" / "item_table.safetensors")
    monkeypatch.setenv("LLMSREC_MODEL_TAG", stores.champion)
    with pytest.raises(CheckpointError, match="item_table.safetensors: is [0-9]+ bytes"):
        resolve_serving_tag(home)


def test_a_damaged_stored_version_is_packaged_afresh_not_reused(stores, tmp_path, clean_env):
    """The recovery path: roll back to the champion, re-judge, re-package. Packaging the challenger's content
    again would reuse its stored version; damaged, a fresh copy is made instead."""
    home, ws = tmp_path / "home", tmp_path / "ws"
    shutil.copytree(stores.home, home)
    shutil.copytree(stores.ws, ws)
    garble(version_dir(home, stores.challenger) / "llmsrec" / "item_table.safetensors")
    out = gate(ws, home, check=False)  # re-judging against the damaged production version: a clear refusal
    assert out.returncode == 1 and "item_table.safetensors: has other content" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    rollback(home)
    gate(ws, home)
    out = package(ws, home)
    assert "is damaged" in out.stderr and "packaging a fresh copy" in out.stderr
    fresh = registry_state(home)["production"]
    assert fresh not in (stores.champion, stores.challenger) and verify(fresh, home) == fresh
    assert os.path.isdir(version_dir(home, stores.challenger))  # the damaged one is kept for inspection


def test_a_version_packaged_before_the_sasrec_rename_still_serves_and_verifies(stores, tmp_path, clean_env):
    """Packages built before the CF model was called `sasrec` everywhere hold it in `cfsrec/`, and the
    adapters' config names it `cfsrec`: a champion in production then must still verify, be re-scored and
    serve. The old layout is rebuilt from today's package, its file record rewritten to match."""
    home = tmp_path / "home"
    shutil.copytree(stores.home, home)
    root = version_dir(home, stores.champion)
    (root / "sasrec").rename(root / "cfsrec")
    config = json.loads((root / "llmsrec" / "config.json").read_text())
    config["cfsrec"] = config.pop("sasrec")
    (root / "llmsrec" / "config.json").write_text(json.dumps(config))
    manifest = json.loads((root / "package.json").read_text())
    files = {("cfsrec" + rel[len("sasrec"):] if rel.startswith("sasrec/") else rel): rec
             for rel, rec in manifest["files"].items()}
    data = (root / "llmsrec" / "config.json").read_bytes()
    files["llmsrec/config.json"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (root / "package.json").write_text(json.dumps({**manifest, "files": files}))
    assert not (root / "sasrec").exists()

    verify(stores.champion, home)
    set_production(stores.champion, "promote", "the test", home)
    champion_serves(home, stores.champion)
    # Packaged without a run report (as every version before model cards): `show` says so.
    show = subprocess.run([sys.executable, "-m", "components.serving.registry", "--home", str(home), "show"],
                          capture_output=True, text=True, timeout=120)
    assert show.returncode == 0 and show.stderr.strip().splitlines()[-1] == \
        f"model card: none ({stores.champion} was packaged without a run report)", show.stdout[-300:] + show.stderr
    assert json.loads(show.stdout)["model_card"] is None
