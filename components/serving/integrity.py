"""A packaged model's layout and its integrity check: is every file there, whole and unchanged?

The `package` stage records every file of a package in its `package.json` (`files`: relative path ->
`{bytes, sha256}`), and `verify_package` checks a stored version against that record before anything
loads it or points production at it. So a package damaged after packaging (a truncated weights file,
garbage bytes in a JSON file, a file deleted by hand, a copy cut short) is refused with the file's name
and the fix, instead of failing deep inside torch, safetensors or pyarrow, or worse, loading.

Light on purpose (no torch, no pandas): the registry CLI and the service's import-time model resolution
use it. Packages from before the record (no `files`) get the structural check only: the files exist and
the JSON ones parse; the loaders then give their own clear errors (components/models/base.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from components.errors import CheckpointError, DataError
from components.io import JSON_DAMAGE

SASREC_DIR, LLMSREC_DIR, CATALOGUE_DIR, BACKBONE_DIR = "sasrec", "llmsrec", "catalogue", "backbone"
MANIFEST = "package.json"
#: the run report (components/stages/report.py) stored with the model; packages before it have none
MODEL_CARD = "model_card.html"
CATALOGUE_FILES = ("items.parquet", "users.parquet", "sequences.parquet")
FIX = "re-package the model (`dvc repro -f -s package`) or promote another version"
#: files every package holds (relative to its root)
REQUIRED = (MANIFEST, f"{LLMSREC_DIR}/config.json", f"{LLMSREC_DIR}/adapters.safetensors",
            f"{LLMSREC_DIR}/item_table.safetensors", f"{LLMSREC_DIR}/titles.json", f"{LLMSREC_DIR}/item_ids.json",
            f"{SASREC_DIR}/config.json", f"{SASREC_DIR}/model.safetensors", f"{SASREC_DIR}/item_ids.json",
            *(f"{CATALOGUE_DIR}/{name}" for name in CATALOGUE_FILES))
#: written by BentoML around our files (model.yaml) or the manifest itself: not in the record
UNRECORDED = {MANIFEST, "model.yaml"}
#: the SASRec folder's name in packages built before the CF model had one name everywhere
LEGACY_SASREC_DIR = "cfsrec"


#: what to do when the service's user cannot read the store (docs/release.md: "Who can read the store")
ACCESS_FIX = ("let the service's user read the store: put it in the group of the user that runs the pipeline, and "
              "make the store group-readable (`chmod g+rX \"$BENTOML_HOME\"; chmod -R g+rX \"$BENTOML_HOME\"/models "
              "\"$BENTOML_HOME\"/registry`); versions packaged from now on are, under the usual umask (docs/release.md: Who "
              "can read the store)")


class StoreAccessError(DataError):
    """A file of the store (or the registry's pointer) that this process is not allowed to read. Not damage:
    nothing is wrong with the file, so serving does not fall back to another version over it."""

    def __init__(self, path: str | Path, fix: str = ACCESS_FIX):
        super().__init__(path, f"cannot be read by this process ({describe_access(Path(path))})", fix)


def describe_access(path: Path) -> str:
    """Who may read `path` and who is asking, for an error message: `mode 0600, owner uid 1001 gid 1001;
    this process: uid 1002, groups 1002`. When a directory above it cannot be searched, that directory
    is the one described (`blocked by /store/models/llmsrec/v1: mode 0700, ...`)."""
    path = Path(path)
    effective = os.access in os.supports_effective_ids
    culprit = next((d for d in reversed(path.parents) if not os.access(d, os.X_OK, effective_ids=effective)), None)
    shown = path if culprit is None else culprit
    try:
        st = shown.stat()
        what = f"mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid} gid {st.st_gid}"
    except OSError as e:
        what = f"cannot be looked up ({e.strerror})"
    groups = ", ".join(map(str, sorted({os.getegid(), *os.getgroups()})))
    return (f"{'' if culprit is None else f'blocked by the directory {culprit}: '}{what}; "
            f"this process: uid {os.geteuid()}, groups {groups}")


def sasrec_dir(path: Path) -> Path:
    """The package's SASRec folder: `sasrec/`, or `cfsrec/` in a package built before the rename."""
    path = Path(path)
    if not (path / SASREC_DIR).exists() and (path / LEGACY_SASREC_DIR).is_dir():
        return path / LEGACY_SASREC_DIR
    return path / SASREC_DIR


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_record(root: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {bytes, sha256}} of every file under `root` except UNRECORDED, in path order."""
    root = Path(root)
    return {f.relative_to(root).as_posix(): {"bytes": f.stat().st_size, "sha256": _sha256(f)}
            for f in sorted(p for p in root.rglob("*") if p.is_file())
            if f.relative_to(root).as_posix() not in UNRECORDED}


def read_manifest(path: Path, tag: str) -> dict[str, Any]:
    """A package's package.json, or CheckpointError when it is missing or not a JSON object."""
    file = Path(path) / MANIFEST
    try:
        manifest = json.loads(file.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(file, f"package file missing in {tag}", FIX) from None
    except PermissionError:  # an OSError, but the file is not damaged: say who may read it
        raise StoreAccessError(file) from None
    except JSON_DAMAGE as e:
        raise CheckpointError(file, f"is not valid JSON in {tag} ({type(e).__name__}); the file is damaged", FIX) from None
    if not isinstance(manifest, dict):
        raise CheckpointError(file, f"is not a package manifest in {tag} (a JSON {type(manifest).__name__})", FIX)
    return manifest


def verify_package(path: Path, tag: str, deep: bool = True) -> dict[str, Any]:
    """Check a package directory against its own record; return its manifest.

    Raises CheckpointError naming the first bad file: missing, of another size than recorded, with other
    content than recorded (`deep`: sha256 of every file, ~0.1 s for the default package, seconds for one
    that includes a large backbone), or, in a package without a record, a JSON file that does not parse.
    `deep=False` (sizes only) is for hot paths that load nothing, like choosing which version to serve.
    A file or folder this process may not read is a StoreAccessError naming it, its mode and owner, not
    damage (nor "missing": a file in a folder that cannot be searched looks absent).
    """
    try:
        return _verify(Path(path), tag, deep)
    except PermissionError as e:
        raise StoreAccessError(e.filename or path) from None


def _verify(path: Path, tag: str, deep: bool) -> dict[str, Any]:
    if path.is_dir() and not os.access(path, os.R_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        raise StoreAccessError(path)
    manifest = read_manifest(path, tag)
    teacher = sasrec_dir(path).name
    required = [teacher + rel[len(SASREC_DIR):] if rel.startswith(SASREC_DIR + "/") else rel for rel in REQUIRED]
    for rel in required:
        if not (path / rel).is_file():
            raise CheckpointError(path / rel, f"package file missing in {tag}", FIX)
    record = manifest.get("files")
    if not isinstance(record, dict):  # packaged before files were recorded: what can be checked without one
        for rel in required:
            if rel.endswith(".json") and rel != MANIFEST:
                try:
                    json.loads((path / rel).read_bytes())
                except JSON_DAMAGE as e:
                    raise CheckpointError(path / rel, f"is not valid JSON in {tag} ({type(e).__name__}); the file is "
                                                      "damaged", FIX) from None
        return manifest
    for rel, want in record.items():
        file = path / rel
        if not file.is_file():
            raise CheckpointError(file, f"package file missing in {tag}", FIX)
        size = file.stat().st_size
        if size != want.get("bytes"):
            raise CheckpointError(file, f"is {size} bytes in {tag}, {want.get('bytes')} when packaged: the file is "
                                        f"{'truncated' if size < int(want.get('bytes') or 0) else 'damaged'}", FIX)
        if deep and _sha256(file) != want.get("sha256"):
            raise CheckpointError(file, f"has other content in {tag} than when packaged (sha256 differs): the file "
                                        "is damaged", FIX)
    return manifest
