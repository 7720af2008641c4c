"""Small I/O helpers shared by the stages: atomic writes, JSON, Parquet."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock, Timeout

from components.errors import DataError


def umask() -> int:
    """This process's umask, read without changing it (Linux: /proc; elsewhere set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode() -> int:
    """The mode `open()` gives a new file here (0644 under the usual umask 022, 0640 under 027). Atomic
    writes go through mkstemp, which makes every file 0600: readable by its owner alone, so a service
    running as another user (in the writer's group) could not read what the pipeline wrote."""
    return 0o666 & ~umask()


def share_tree(root: Path) -> None:
    """Give every file and folder under `root` (itself included) the modes a new one gets under this
    process's umask (files `file_mode()`, folders 0755 under umask 022), whatever modes they were
    copied with: a tree assembled in a private temporary folder (0700) from files written 0600 would
    otherwise stay readable by its owner alone."""
    mask = umask()
    root = Path(root)
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(fd, file_mode())  # as a plain open() would: mkstemp's 0600 would hide it from the service user
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_default)
        f.write("\n")
    os.replace(tmp, path)


def _default(o: Any):
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


#: What reading a JSON file raises when the file is damaged: unreadable (OSError), truncated or garbage
#: (JSONDecodeError and UnicodeDecodeError are ValueErrors), or nested past the parser (RecursionError).
#: Every reader that turns a damaged file into an error naming it catches exactly these.
JSON_DAMAGE = (OSError, ValueError, RecursionError)


def numbers_only(tree: Any) -> Any:
    """`tree` with only its numbers and booleans (nested dicts kept, emptied ones dropped): what a DVC
    `metrics:` file holds. Names, tags, strings and lists belong in a plain output or the run record; in a
    metrics file they widen `dvc metrics show` by a column each, and DVC drops lists."""
    if isinstance(tree, dict):
        kept = {k: numbers_only(v) for k, v in tree.items()}
        return {k: v for k, v in kept.items() if v is not None and v != {}}
    return tree if isinstance(tree, int | float) else None


def read_json(path: Path) -> Any:
    """The decoded JSON file; raises one of JSON_DAMAGE when it is missing or damaged."""
    with Path(path).open() as f:
        return json.load(f)


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def fresh_dir(path: Path) -> Path:
    """An empty output directory. Stage outputs are owned by the stage (DVC declares them)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def visible_files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` whose path has no hidden part (a name starting with '.'), as
    {relative path: (bytes, mtime in ns)}; {} when `root` does not exist.

    Hidden entries are work in progress (a batch being placed is a hidden folder until it is renamed into
    place), and .dvcignore keeps DVC from hashing them too, so this is the part of a folder that DVC
    records. Comparing two calls tells whether the folder changed in between.
    """
    root = Path(root)
    if not root.is_dir():
        return {}
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                f = Path(dirpath) / name
                st = f.stat()
                out[f.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks (downloads, GGUF backbones)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def metrics_digest(path: Path) -> str:
    """The first 16 hex digits of a metrics file's SHA-256: `gate` records it, `package` refuses a gate
    report written for other metrics."""
    return sha256_of(path)[:16]


@contextmanager
def held_lock(lock_file: Path, timeout: float, holder: str, fix: str, singleton: bool = False) -> Iterator[None]:
    """Hold an inter-process lock on `lock_file` (flock through filelock: the kernel frees it when its holder
    dies, so it is never stale). `singleton`: every caller in this process shares one re-entrant lock object.

    Raises DataError naming `lock_file` when `holder` (e.g. "another landing run") has held it for more than
    `timeout` seconds; `fix` says what to do."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file, is_singleton=singleton)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise DataError(lock_file, f"{holder} has held this lock for over {timeout:.0f} s", fix) from None
    try:
        yield
    finally:
        lock.release()
