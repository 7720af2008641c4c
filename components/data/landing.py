"""The landing zone: new interaction batches arrive in `data/incoming/` and are moved into the raw store.

Protocol for producers (no partial reads):

1. write the batch under a name the landing zone ignores: a leading '.' or '_', or a `.part`/`.tmp`
   suffix (e.g. `.2025-06-01.csv.part`);
2. rename it to its final name (`2025-06-01.csv`). A rename within one filesystem is atomic, so a
   file with a final name is always complete;
3. optionally create the sentinel `data/incoming/_READY`: the Airflow DAG's Asset watcher deletes it
   and starts a run at once, instead of waiting for the cron schedule.

`python -m components.data.landing drop FILE...` does all three (it copies the file's bytes, and never
replaces a file of the same name that is still waiting).

What happens to each complete file (`land`), one landing run at a time (an inter-process lock,
`data/landing/landing.lock`), in arrival order:

- it is claimed by an atomic rename into `data/landing/claimed/` (a crash leaves it there, and the next
  run takes it first). The landing zone keeps only bytes it owns: a symbolic link is refused (its target
  is never read, chmod-ed or moved), and a file with other hard links is copied to a file of its own;
- a name that is not valid UTF-8 is rejected (bytes kept) and the queue goes on; so does any file that
  fails in an unexpected way: one bad file never blocks the ones behind it;
- its SHA-256 is compared with every batch seen before: the same bytes as an accepted batch are dropped
  (the first copy is kept, and checked to be intact first). The same bytes as a rejected batch are judged
  again, since the reason may have gone away (the catalogue grew, time passed, params changed), unless
  the bytes alone decided (an unreadable file under the same suffix);
- it is read in the canonical schema (`user_id`, `item_id`, `timestamp` in Unix seconds; `title` and
  optionally `description` for new items). Rows whose (user_id, item_id, timestamp) is already in the
  store (base source or an accepted batch) are dropped and counted; a batch with no new row is kept in
  `data/landing/duplicates/` and never retrains anything. The rest is validated with the pipeline's
  Great Expectations suite against the catalogue as it stands: the last ingest, plus every batch
  accepted since, including earlier batches of the same run;
- more bad rows than `validate.max_bad_fraction` (or a file that cannot be read) rejects the whole
  batch: `data/landing/rejected/<batch_id>/` holds its raw bytes (`raw/<file>`, read-only), its bad rows
  with their reasons (`quarantine.parquet`) and the reason and fix (`rejection.json`), and it never
  reaches training;
- otherwise its drift is checked against the store it joins (components/data/drift.py, thresholds in
  params `orchestration.drift`): `retrain` or `flag` and it is accepted, `hold` and it is held (below).
  The decision and its reasons go to `batch.json`, the log and the run's LandingResult;
- an accepted batch goes to `data/batches/<batch_id>/<file>` (read-only) plus `batch.json` and its
  drift report (`drift.json`, `drift.html`), renamed into place complete. Batch ids start with the UTC arrival time (microseconds), so they sort in
  arrival order. The `ingest` stage appends accepted batches; their few bad rows are quarantined by
  `validate` with their lineage, like any other row.

Placing a batch is atomic: the raw file is linked (or copied) into a hidden folder that is renamed into
place, and leaves `claimed/` only after that. When anything fails on the way (a full disk), the hidden
folder is removed, the file stays in `claimed/`, `list` shows it as pending, and the next run takes it.

`retract BATCH_ID --reason TEXT` takes an accepted batch back out of the store: it moves to
`data/landing/retracted/<batch_id>/` with `retraction.json`, so the next `ingest` runs without it.

A held batch is valid but drifted past a `hold` threshold: `data/landing/held/<batch_id>/` keeps its raw
file (read-only), `batch.json`, `held.json` (the reason, and the command that releases it) and the drift
report; it never reaches training, and the same bytes dropped again stay held (a duplicate of it).
`release BATCH_ID --reason TEXT` puts it into the store as accepted, under the lock and atomically like
any placed batch (out of `held/` first; a run that dies half-way is finished or undone by the next), its
drift decision kept and {released_at, released_by, release_reason} added to `batch.json`. `list` shows
held batches with that command.

Every event is appended to `data/landing/log.jsonl`. Raw bytes are never modified.
"""

from __future__ import annotations

import argparse
import datetime as dt
import errno
import getpass
import html
import json
import os
import re
import shutil
import stat
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import LandingParams, Params, ValidateParams, load_params
from components.data.batches import (
    BATCH_META,
    BATCH_SUFFIXES,
    ROW_KEY,
    accepted_batches,
    already_present,
    read_batch,
    row_keys,
)
from components.data.drift import DRIFT_HTML, DRIFT_JSON, Drift, judge
from components.data.sources import load_source
from components.data.validation import validate
from components.errors import DataError, PipelineError, stage_main
from components.io import JSON_DAMAGE, held_lock, read_json, sha256_of, write_json, write_parquet

INCOMPLETE_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", ".filepart")
LOCK_TIMEOUT_S = 900.0  # a second landing run waits this long for the first (the DAG retries after that)
REJECTION_META, QUARANTINE, RETRACTION_META, DUPLICATE_META, HELD_META = (
    "rejection.json", "quarantine.parquet", "retraction.json", "duplicate.json", "held.json")
BATCH_ID = re.compile(r"\d{8}T\d{6}(\.\d{6})?Z-[0-9a-z]{4,12}")
_PLACING = ".placing-"  # a folder being filled; renamed to its batch id when complete
_RETRACTING = ".retracting-"  # an accepted batch on its way out of the store
_RELEASING = ".releasing-"  # a held batch on its way into the store
RELEASE_HINT = "srec land release {batch_id} --reason 'why it may train'"
_DEFAULTS = LandingParams()


@dataclass
class Paths:
    """The landing zone's folders; defaults from params `orchestration.landing`, relative to the repository."""

    incoming: Path = Path(_DEFAULTS.incoming)
    store: Path = Path(_DEFAULTS.store)
    landing: Path = Path(_DEFAULTS.landing)  # claimed/, rejected/, duplicates/, retracted/, held/, log.jsonl
    ready_file: str = _DEFAULTS.ready_file

    @property
    def claimed(self) -> Path:
        return self.landing / "claimed"

    @property
    def rejected(self) -> Path:
        return self.landing / "rejected"

    @property
    def duplicates(self) -> Path:
        return self.landing / "duplicates"

    @property
    def retracted(self) -> Path:
        return self.landing / "retracted"

    @property
    def held(self) -> Path:
        return self.landing / "held"

    @property
    def log(self) -> Path:
        return self.landing / "log.jsonl"

    @property
    def lock(self) -> Path:
        return self.landing / "landing.lock"

    @classmethod
    def from_config(cls, cfg: LandingParams, root: Path = Path(".")) -> Paths:
        return cls(incoming=root / cfg.incoming, store=root / cfg.store, landing=root / cfg.landing,
                   ready_file=cfg.ready_file)


@dataclass
class LandingResult:
    accepted: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)  # could not be placed: still in claimed/
    waiting: list[str] = field(default_factory=list)  # complete names not yet settled (settle_seconds)
    held: list[dict[str, Any]] = field(default_factory=list)  # valid, but drifted: in held/ for review

    def as_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "rejected": self.rejected,
                "failed": self.failed, "waiting": self.waiting, "held": self.held}

    def line(self) -> str:
        failed = f", {len(self.failed)} left in claimed/ after an error" if self.failed else ""
        flagged = sum(1 for r in self.accepted if (r.get("drift") or {}).get("decision") == "flag")
        flagged_text = f" ({flagged} flagged for drift)" if flagged else ""
        held = f", {len(self.held)} held for review (drift)" if self.held else ""
        return (f"landing: {len(self.accepted)} accepted{flagged_text}{held}, {len(self.duplicates)} duplicate(s) "
                f"dropped, {len(self.rejected)} rejected{failed}")


def is_candidate(path: Path) -> bool:
    """A file the landing zone should take: not hidden, not a sentinel, not still being written.
    Symbolic links are taken too (and refused), so that none lingers in `incoming/`."""
    name = path.name
    return (path.is_symlink() or path.is_file()) and not name.startswith((".", "_")) \
        and not name.lower().endswith(INCOMPLETE_SUFFIXES)


def shown(name: str) -> str:
    """A file name as text that can always be printed or written as UTF-8: bytes that are not UTF-8
    (os.listdir returns them as surrogates) become `\\xNN`."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def landing_lock(paths: Paths, timeout: float = LOCK_TIMEOUT_S):
    """Hold the landing zone's inter-process lock (components.io.held_lock). Raises DataError naming the
    lock file after `timeout` seconds."""
    return held_lock(paths.lock, timeout, "another landing run",
                     "let it finish (the DAG's ingest_batches task, or a `landing ingest`/`retract` by hand), then "
                     "rerun; the lock is freed when its process exits")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_file(src: Path, dest: Path) -> None:
    """Copy bytes to a hidden name next to `dest`, fsync, rename: `dest` is complete or absent. On any
    error the partial copy is removed and the error raised."""
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:6]}.part")
    try:
        with src.open("rb") as fin, tmp.open("wb") as fout:
            shutil.copyfileobj(fin, fout)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _claim(src: Path, claimed: Path) -> Path:
    """Move `src` out of `incoming/` atomically; the claimed name starts with the claim time, so files
    left by a dead run are taken again in arrival order. A symbolic link moves as a link (its target is
    not followed). Across filesystems, the bytes are copied complete before the source goes."""
    claimed.mkdir(parents=True, exist_ok=True)
    dest = claimed / f"{time.time_ns():020d}.{uuid.uuid4().hex[:6]}-{src.name}"
    try:
        os.rename(src, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        if src.is_symlink():
            os.symlink(os.readlink(src), dest)
        else:
            _copy_file(src, dest)
        src.unlink()
    return dest


def _own(claimed: Path) -> None:
    """Make a claimed regular file one the landing zone alone owns: with other hard links (a producer's
    own file), its bytes are copied to a new file, so that no chmod or later edit is shared."""
    st = os.lstat(claimed)
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        _copy_file(claimed, claimed)


def _original_name(claimed_file: Path) -> str:
    return claimed_file.name.split("-", 1)[1]


def _kept_raw(rec: dict[str, Any]) -> Path | None:
    """Where a batch's raw bytes are kept, or None (a refused link keeps none)."""
    d = Path(rec["_dir"])
    for p in (d / "raw" / rec["file"], d / rec["file"]):  # raw/: rejections since metadata names could collide
        if p.is_file() and not p.is_symlink():
            return p
    return None


def _intact(rec: dict[str, Any]) -> bool:
    """The kept copy of a batch still holds the bytes it was recorded with."""
    p = _kept_raw(rec)
    return p is not None and rec.get("sha256") is not None and sha256_of(p) == rec["sha256"]


def _records(paths: Paths) -> list[dict[str, Any]]:
    """Every batch judged before (accepted, held, rejected, duplicate, retracted), with its folder (`_dir`)."""
    out = []
    for status, root, meta in (("rejected", paths.rejected, REJECTION_META),
                               ("duplicate", paths.duplicates, DUPLICATE_META),
                               ("retracted", paths.retracted, RETRACTION_META),
                               ("held", paths.held, HELD_META),
                               ("accepted", paths.store, BATCH_META)):
        if not root.is_dir():
            continue
        for d in sorted(root.iterdir()):
            if d.is_dir() and not d.name.startswith(".") and (d / meta).is_file():
                out.append({**_read_record(d / meta), "status": status, "_dir": str(d)})
    return out


def _read_record(path: Path) -> dict[str, Any]:
    """One batch record, decoded; DataError naming the file when it is damaged (truncated, overwritten, not
    an object), rather than a JSONDecodeError from deep inside a run that every later run would repeat."""
    try:
        rec = read_json(path)
    except JSON_DAMAGE as e:
        rec = e
    if not isinstance(rec, dict):
        why = f"{type(rec).__name__}: {str(rec)[:120]}" if isinstance(rec, BaseException) else f"a JSON {type(rec).__name__}"
        raise DataError(path, f"is a damaged batch record ({why}); the landing zone cannot tell which bytes it "
                        "stands for, so it judges nothing until it is repaired",
                        "restore it: `dvc checkout data/batches` for an accepted batch (the store is in DVC's "
                        "cache), or from a backup; a rejected or duplicate record may be removed with its folder "
                        "once its raw file is saved elsewhere")
    return rec


def _seen(paths: Paths) -> dict[str, dict[str, Any]]:
    """sha256 -> record of every batch judged before; an accepted batch outranks a rejection of the same bytes."""
    return {r["sha256"]: r for r in _records(paths) if r.get("sha256")}


def _store_state(params: Params, paths: Paths, ingested: Path | None) -> tuple[pd.DataFrame, pd.MultiIndex]:
    """(catalogue a batch may refer to, keys of the interactions already in the store).

    Both come from the last ingest (or the base source, before the first run), less the rows and items
    that ingest took from batches, plus every batch accepted now: a batch retracted since the last
    ingest no longer counts."""
    if ingested is not None and (ingested / "items.parquet").is_file():
        base_items = _not_from(pd.read_parquet(ingested / "items.parquet"), paths.store)
        base_inter = _not_from(_read_columns(ingested / "interactions.parquet", [*ROW_KEY, "_source"]), paths.store) \
            if (ingested / "interactions.parquet").is_file() else pd.DataFrame(columns=ROW_KEY)
    else:
        base_inter, base_items = load_source(params.data, seed=params.seed, cache_dir=Path("data/downloads"))
    cols = ["item_id", "title", "description"]
    items, keys = [base_items.reindex(columns=cols, fill_value="")], [row_keys(base_inter)]
    for f in accepted_batches(paths.store):
        b_inter, b_items = read_batch(f)
        items.append(b_items[cols])
        keys.append(row_keys(b_inter))
    catalogue = pd.concat(items, ignore_index=True).drop_duplicates(subset=["item_id"], keep="first")
    known = keys[0].append(keys[1:]).unique() if len(keys) > 1 else keys[0].unique()
    return catalogue.reset_index(drop=True), known


def _read_columns(path: Path, columns: list[str]) -> pd.DataFrame:
    """Only the columns needed (the ingested interactions can be millions of rows), those that exist."""
    import pyarrow.parquet as pq

    names = set(pq.read_schema(path).names)
    return pd.read_parquet(path, columns=[c for c in columns if c in names])


def _not_from(df: pd.DataFrame, store: Path) -> pd.DataFrame:
    """Rows whose lineage (`_source`) is not a batch file: in the store, or in a batch folder wherever
    `ingest` read it from."""
    if "_source" not in df.columns:
        return df
    root = store.resolve()
    from_store = {s for s in df["_source"].dropna().astype(str).unique()
                  if BATCH_ID.fullmatch(Path(s).parent.name) or Path(s).resolve().is_relative_to(root)}
    return df[~df["_source"].astype(str).isin(from_store)]


def known_catalogue(params: Params, paths: Paths, ingested: Path | None) -> pd.DataFrame:
    """Items a batch may refer to: the last ingest's catalogue (or the base source's, before the
    first run), plus the items of every batch accepted since."""
    return _store_state(params, paths, ingested)[0]


def check_batch(path: Path, catalogue: pd.DataFrame, validate_cfg: ValidateParams,
                known: pd.MultiIndex | None = None):
    """Validate one batch on its own against the known catalogue.

    Rows whose (user_id, item_id, timestamp) is in `known` (the store's interactions) are dropped first
    and counted. Returns (new interactions, quarantined rows, summary {rows, rows_already_in_store,
    bad_rows, new_items}, the batch's titled items); raises DataError when the batch as a whole is
    unusable: unreadable, wrong columns, or more bad rows than `validate.max_bad_fraction`. A batch
    whose rows are all in the store comes back with no interactions, unvalidated.
    """
    inter, items = read_batch(path)
    again = already_present(inter, known) if known is not None else None
    n_again = int(again.sum()) if again is not None else 0
    new_items = items[~items["item_id"].astype(str).isin(set(catalogue["item_id"].astype(str)))]
    stats = {"rows": len(inter), "rows_already_in_store": n_again, "new_items": int(len(new_items))}
    if n_again:
        inter = inter[~again].reset_index(drop=True)
        if inter.empty:
            return inter, inter.iloc[:0], {**stats, "bad_rows": 0}, items
    cat = pd.concat([catalogue.assign(_source="catalogue", _row=0), new_items], ignore_index=True)
    outcome = validate(inter, cat, validate_cfg, docs_dir=None, where=str(path))
    s = outcome.summary
    max_bad = validate_cfg.max_bad_fraction
    if s["interactions"] == 0 or s["bad_fraction"] > max_bad:
        worst = sorted(s["quarantined_by_expectation"].items(), key=lambda kv: -kv[1])[:3]
        err = DataError(path, f"{s['rows_quarantined']['interactions']} of {s['rows_checked']['interactions']} rows "
                        f"({s['bad_fraction']:.1%}) failed validation, above validate.max_bad_fraction={max_bad}; "
                        f"top failures: {dict(worst)}",
                        f"fix the rows listed in {QUARANTINE} in a copy of the raw file and drop the copy "
                        "(srec land drop FIXED_FILE); if the rows are right and "
                        "the catalogue or params have changed since, drop the same file again: it is judged anew")
        err.quarantine = outcome.quarantine_interactions  # type: ignore[attr-defined]
        raise err
    return inter, outcome.quarantine_interactions, {**stats, "bad_rows": s["rows_quarantined"]["interactions"]}, \
        items


def _log(paths: Paths, event: dict[str, Any]) -> None:
    """Append an event; a log that cannot be written (a full disk) is reported, never fatal: the
    batch's own folder, or its file left in claimed/, is the record that counts."""
    try:
        paths.log.parent.mkdir(parents=True, exist_ok=True)
        with paths.log.open("a") as f:
            f.write(json.dumps(event, default=str) + "\n")
    except OSError as e:
        print(f"landing: could not append to {paths.log} ({e}); event: {event.get('event')} "
              f"{event.get('file')}", file=sys.stderr)


def _link_or_copy(src: Path, dest: Path) -> None:
    """Same filesystem: a hard link (atomic, no extra space); else a complete copy."""
    try:
        os.link(src, dest, follow_symlinks=False)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        _copy_file(src, dest)


def _place(files: dict[str, Path | pd.DataFrame | dict | str], dest: Path) -> None:
    """Write a batch directory under a hidden name, then rename it into place: readers (the ingest
    stage, the next landing run) see a complete batch or none. A raw file (a Path) is linked or copied,
    never moved: on any error the hidden directory is removed, the error raised, and the raw file is
    still where it was."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f"{_PLACING}{dest.name}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    try:
        for name, what in files.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(what, Path):
                _link_or_copy(what, target)
                os.chmod(target, 0o444)  # raw bytes: read-only from here on
            elif isinstance(what, pd.DataFrame):
                write_parquet(what, target)
            elif isinstance(what, str):
                target.write_text(what, encoding="utf-8")
            else:
                write_json(target, what)
            _fsync(target)
        for d in {(tmp / n).parent for n in files} | {tmp}:
            _fsync(d)
        os.rename(tmp, dest)
        _fsync(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sweep(paths: Paths) -> None:
    """Undo what a dead run left half done (called under the lock, so no other run is writing): hidden
    folders being filled, partial copies, and a retraction or a release that stopped half-way."""
    for root in (paths.store, paths.rejected, paths.duplicates, paths.retracted, paths.held):
        if root.is_dir():
            for d in root.glob(f"{_PLACING}*"):
                shutil.rmtree(d, ignore_errors=True)
    if paths.claimed.is_dir():
        for p in paths.claimed.glob(".*.part"):
            p.unlink(missing_ok=True)
    if paths.store.is_dir():
        for d in paths.store.glob(f"{_RETRACTING}*"):
            batch_id = d.name[len(_RETRACTING):]
            if (paths.retracted / batch_id / RETRACTION_META).is_file():
                shutil.rmtree(d, ignore_errors=True)
            else:
                os.rename(d, paths.store / batch_id)  # the retraction never completed: still accepted
    if paths.held.is_dir():
        for d in paths.held.glob(f"{_RELEASING}*"):
            batch_id = d.name[len(_RELEASING):]
            if (paths.store / batch_id / BATCH_META).is_file():
                shutil.rmtree(d, ignore_errors=True)
            else:
                os.rename(d, paths.held / batch_id)  # the release never completed: still held


def _batch_time(name: str) -> dt.datetime | None:
    stamp = name.split("Z-", 1)[0]
    for fmt in ("%Y%m%dT%H%M%S.%f", "%Y%m%dT%H%M%S"):
        try:
            return dt.datetime.strptime(stamp, fmt).replace(tzinfo=dt.UTC)
        except ValueError:
            continue
    return None


class _Run:
    """One landing run: judges claimed files in arrival order against the store as it stands."""

    def __init__(self, paths: Paths, params: Params, ingested: Path | None, log: Callable[[str], Any]):
        self.paths, self.params, self.ingested, self.log = paths, params, ingested, log
        self.result = LandingResult()
        self.seen = _seen(paths)
        self.catalogue: pd.DataFrame | None = None
        self.known: pd.MultiIndex | None = None
        times = [t for root in (paths.store, paths.rejected, paths.duplicates, paths.retracted, paths.held)
                 if root.is_dir()
                 for t in map(_batch_time, (d.name for d in root.iterdir())) if t is not None]
        self.last = max(times, default=None)

    def stamp(self) -> dt.datetime:
        """The arrival time of the next batch: strictly after every batch id before it, so that ids sort
        in arrival order even within one second or if the clock steps back."""
        now = _utc_now()
        if self.last is not None and now <= self.last:
            now = self.last + dt.timedelta(microseconds=1)
        self.last = now
        return now

    def state(self) -> tuple[pd.DataFrame, pd.MultiIndex]:
        if self.catalogue is None:
            self.catalogue, self.known = _store_state(self.params, self.paths, self.ingested)
        return self.catalogue, self.known  # type: ignore[return-value]

    def take(self, claimed: Path) -> None:
        """Judge and place one claimed file. An error while judging rejects it, bytes kept; an error while
        placing it (a full disk) leaves it in claimed/, reported in `failed`. Either way the queue goes on."""
        name = _original_name(claimed)
        rec: dict[str, Any] = {"file": shown(name), "received_at": None}
        try:
            self._take(claimed, name, rec)
        except Exception as e:  # noqa: BLE001 - OSError (a full disk) or a bug while placing: retried next run
            self.fail(claimed, rec, e)

    def _take(self, claimed: Path, name: str, rec: dict[str, Any]) -> None:
        stamp = self.stamp()
        rec["received_at"] = stamp.isoformat(timespec="microseconds")
        if claimed.is_symlink():
            target = os.readlink(claimed)
            rec |= {"sha256": None, "link_target": shown(target), "batch_id": f"{stamp:%Y%m%dT%H%M%S.%f}Z-link"}
            self.reject(claimed, rec, DataError(shown(name), f"is a symbolic link (to {shown(target)}), not a file: "
                                                "the landing zone keeps only bytes it owns",
                                                "drop the file itself: srec land drop "
                                                "FILE copies its bytes"), kind="link", raw=False)
            return
        sha = sha256_of(claimed)
        rec |= {"sha256": sha, "bytes": claimed.stat().st_size, "batch_id": f"{stamp:%Y%m%dT%H%M%S.%f}Z-{sha[:12]}"}
        first = self.seen.get(sha)
        if first is not None and self.is_repeat(claimed, rec, first):
            return
        _own(claimed)
        if name != rec["file"]:
            self.reject(claimed, rec, DataError(rec["file"], "the file name is not valid UTF-8",
                                                "rename it to a UTF-8 (e.g. plain ASCII) name and drop it again: "
                                                "srec land drop NEW_NAME"), kind="name")
            return
        if claimed.suffix.lower() not in BATCH_SUFFIXES:
            self.reject(claimed, rec, DataError(name, f"unsupported file type '{claimed.suffix}'",
                                                f"rename or convert it to one of {', '.join(BATCH_SUFFIXES)}, "
                                                "in the canonical schema, and drop it again"), kind="name")
            return
        catalogue, known = self.state()
        try:
            inter, _, stats, items = check_batch(claimed, catalogue, self.params.validate_, known)
        except PipelineError as e:
            quarantine = getattr(e, "quarantine", None)
            self.reject(claimed, rec, e, kind="validation" if quarantine is not None else "content",
                        quarantine=quarantine)
            return
        except Exception as e:  # noqa: BLE001 - a bug or an odd file must not block the files behind it
            self.reject(claimed, rec, DataError(name, f"could not be judged ({type(e).__name__}: {e})",
                                                "report this; the raw file is kept, and dropping it again "
                                                "judges it anew"), kind="error")
            return
        rec |= stats
        if inter.empty:
            self.duplicate_rows(claimed, rec)
            return
        drift = self.drift(inter, rec)
        rec["drift"] = drift.summary()
        if drift.decision == "hold":
            self.hold(claimed, rec, drift)
            return
        dest = self.paths.store / rec["batch_id"]
        rec["status"] = "accepted"
        _place({name: claimed, BATCH_META: rec, DRIFT_JSON: drift.record, DRIFT_HTML: drift.html}, dest)
        claimed.unlink()
        self.catalogue = pd.concat([catalogue, items[["item_id", "title", "description"]]], ignore_index=True) \
            .drop_duplicates(subset=["item_id"], keep="first").reset_index(drop=True)
        self.known = known.append(row_keys(inter)).unique()
        self.seen[rec["sha256"]] = {**rec, "_dir": str(dest)}
        self.result.accepted.append({**rec, "path": str(dest / name)})
        _log(self.paths, {**rec, "event": "accepted"})
        again = f", {stats['rows_already_in_store']} already in the store dropped" if stats["rows_already_in_store"] else ""
        flagged = f"; FLAGGED: {'; '.join(drift.reasons)}" if drift.decision == "flag" else ""
        self.log(f"landing: accepted {name} as {dest / name} ({stats['rows']:,} rows{again}, "
                 f"{stats['bad_rows']} to be quarantined, {stats['new_items']} new items; drift: "
                 f"{drift.decision}{flagged}; {dest / DRIFT_HTML})")

    def drift(self, inter: pd.DataFrame, rec: dict[str, Any]) -> Drift:
        """The batch's new rows against the store as it stands (components/data/drift.py). A check that
        fails unexpectedly holds the batch for review rather than blocking the queue or training on it."""
        _, known = self.state()
        try:
            return judge(inter, known.to_frame(index=False), self.params.orchestration.drift,
                         batch_id=rec["batch_id"])
        except Exception as e:  # noqa: BLE001 - a bug or an odd batch: held, bytes kept, one command releases it
            why = f"the drift check failed ({type(e).__name__}: {e})"
            record = {"batch_id": rec["batch_id"], "decision": "hold", "reasons": [why], "error": why}
            return Drift("hold", [why], record, f"<!DOCTYPE html><p>{html.escape(why)}</p>\n")

    def hold(self, claimed: Path, rec: dict[str, Any], drift: Drift) -> None:
        """Valid but drifted: keep it whole in `held/<batch_id>/` (raw file read-only, batch.json, the drift
        report, held.json with the reason), out of the store until `release`."""
        dest = self.paths.held / rec["batch_id"]
        name = rec["file"]
        rec = rec | {"status": "held"}
        held = rec | {"reason": f"drift: {'; '.join(drift.reasons)}",
                      "fix": f"review {dest / DRIFT_HTML}; to train on it: {RELEASE_HINT.format(**rec)}"}
        _place({name: claimed, BATCH_META: rec, HELD_META: held, DRIFT_JSON: drift.record, DRIFT_HTML: drift.html},
               dest)
        claimed.unlink()
        self.seen[rec["sha256"]] = {**held, "_dir": str(dest)}
        self.result.held.append({**held, "path": str(dest / name)})
        _log(self.paths, {**held, "event": "held"})
        self.log(f"landing: HELD {name} for review in {dest}: {held['reason']}. To train on it: "
                 f"{RELEASE_HINT.format(**rec)}")

    def is_repeat(self, claimed: Path, rec: dict[str, Any], first: dict[str, Any]) -> bool:
        """Bytes seen before: drop this copy if the first copy still holds them and judging again
        cannot change the outcome. True when the file was dealt with."""
        status, kind = first["status"], first.get("kind")
        # A batch whose rows were all in the store may have new rows once a batch is retracted: judged anew.
        same_verdict = status in ("accepted", "retracted", "held") or (
            kind == "content" and Path(first["file"]).suffix.lower() == claimed.suffix.lower())
        if not same_verdict:
            return False  # a rejection whose reason may have gone away: judged anew
        if not _intact(first):
            self.log(f"landing: the kept copy of batch {first['batch_id']} is missing or changed; "
                     f"judging {rec['file']} anew")
            return False
        claimed.unlink()
        event = {**rec, "event": "duplicate", "of": first["batch_id"], "first_status": status}
        if status in ("rejected", "retracted"):
            why = first.get("reason") or first.get("retraction_reason", "")
            event |= {"status": "rejected", "reason": f"identical to {status} batch {first['batch_id']}: {why}",
                      "fix": first.get("fix") or "send a corrected file (a retracted batch is not taken back)"}
            self.result.rejected.append(event)
        else:
            self.result.duplicates.append(event)
        _log(self.paths, event)
        waits = f": it waits for review ({RELEASE_HINT.format(**first)})" if status == "held" else ""
        self.log(f"landing: {rec['file']} is a duplicate of batch {first['batch_id']} ({status}); dropped{waits}")
        return True

    def duplicate_rows(self, claimed: Path, rec: dict[str, Any]) -> None:
        """Every row is already in the store: keep the bytes aside (they differ from any kept file), train nothing."""
        dest = self.paths.duplicates / rec["batch_id"]
        rec = rec | {"status": "duplicate", "reason": f"all {rec['rows']} rows are already in the store"}
        first = self.seen.get(rec["sha256"])
        if first is not None and first["status"] == "duplicate" and _intact(first):
            claimed.unlink()
            self.result.duplicates.append({**rec, "of": first["batch_id"], "path": str(_kept_raw(first))})
            _log(self.paths, {**rec, "event": "duplicate", "of": first["batch_id"]})
            self.log(f"landing: {rec['file']}: {rec['reason']}; same bytes as {first['batch_id']}, dropped")
            return
        _place({_original_name(claimed): claimed, DUPLICATE_META: rec}, dest)
        claimed.unlink()
        self.seen[rec["sha256"]] = {**rec, "_dir": str(dest)}
        self.result.duplicates.append({**rec, "path": str(dest / rec["file"])})
        _log(self.paths, {**rec, "event": "duplicate"})
        self.log(f"landing: {rec['file']}: {rec['reason']}; kept in {dest}, nothing to ingest")

    def reject(self, claimed: Path, rec: dict[str, Any], error: PipelineError, kind: str,
               quarantine: pd.DataFrame | None = None, raw: bool = True) -> None:
        """Keep the raw bytes (`raw/<file>`: no name of ours can collide with it), the bad rows and the
        reason; a re-judged batch rejected for the same reason again keeps only its first copy."""
        dest = self.paths.rejected / rec["batch_id"]
        kept = f"raw file{' and bad rows' if quarantine is not None else ''} kept in {dest}" if raw \
            else "the link was removed; its target was not touched"
        rec = rec | {"status": "rejected", "kind": kind, "reason": error.problem, "fix": f"{error.fix} ({kept})"}
        first = self.seen.get(rec["sha256"]) if rec["sha256"] else None
        if first is not None and first["status"] == "rejected" and first.get("reason") == rec["reason"] \
                and _intact(first):
            claimed.unlink()
            event = {**rec, "event": "rejected", "of": first["batch_id"], "fix": first.get("fix", rec["fix"])}
            event["reason"] = f"still: {rec['reason']} (as batch {first['batch_id']})"
            self.result.rejected.append({**event, "path": str(_kept_raw(first))})
            _log(self.paths, event)
            self.log(f"landing: REJECTED {rec['file']} again: {rec['reason']}. Fix: {event['fix']}")
            return
        files: dict[str, Any] = {REJECTION_META: rec}
        if raw:
            files[f"raw/{rec['file']}"] = claimed
        if quarantine is not None:
            files[QUARANTINE] = quarantine.assign(_source=str(dest / "raw" / rec["file"]))
        try:
            _place(files, dest)
        except (ValueError, TypeError) as e:  # bad rows Parquet cannot hold: keep the batch, say so
            if QUARANTINE not in files:
                raise
            rec["quarantine_error"] = f"{type(e).__name__}: {e}"
            files = {REJECTION_META: rec} | {k: v for k, v in files.items() if k not in (QUARANTINE, REJECTION_META)}
            _place(files, dest)
        claimed.unlink()  # a refused link goes as a link: its target is never touched
        if rec["sha256"]:
            self.seen[rec["sha256"]] = {**rec, "_dir": str(dest)}
        self.result.rejected.append({**rec, "path": str(dest / "raw" / rec["file"]) if raw else str(dest)})
        _log(self.paths, {**rec, "event": "rejected"})
        self.log(f"landing: REJECTED {rec['file']}: {rec['reason']}. Fix: {rec['fix']}")

    def fail(self, claimed: Path, rec: dict[str, Any], e: Exception) -> None:
        error = str(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
        event = {**rec, "event": "failed", "error": error, "claimed": shown(str(claimed))}
        self.result.failed.append(event)
        _log(self.paths, event)
        self.log(f"landing: could not place {rec['file']} ({error}); it stays in {shown(str(claimed))} and the "
                 "next run takes it first")


def land(paths: Paths, params: Params, settle_seconds: float = 0.0, ingested: Path | None = None,
         log=print, lock_timeout: float = LOCK_TIMEOUT_S) -> LandingResult:
    """Move every complete file of the landing zone into the raw store (or the rejected store).

    Holds the landing lock for the whole run: a second run waits (up to `lock_timeout` seconds, then
    DataError), so two runs never take the same file."""
    with landing_lock(paths, lock_timeout):
        _sweep(paths)
        return _land(paths, params, settle_seconds, ingested, log)


def _land(paths: Paths, params: Params, settle_seconds: float, ingested: Path | None, log) -> LandingResult:
    run = _Run(paths, params, ingested, log)
    paths.incoming.mkdir(parents=True, exist_ok=True)
    now = _utc_now()
    todo = sorted(p for p in paths.claimed.iterdir() if not p.name.startswith(".")
                  and (p.is_symlink() or p.is_file())) \
        if paths.claimed.is_dir() else []  # left by a run that died: finish them first, in claim order
    arrived = []
    for src in paths.incoming.iterdir():
        try:
            mtime = src.lstat().st_mtime
        except FileNotFoundError:  # a producer's hidden copy, renamed away since the listing
            continue
        if is_candidate(src):
            arrived.append((mtime, src.name, src))
    for mtime, _, src in sorted(arrived):
        if now.timestamp() - mtime < settle_seconds:
            run.result.waiting.append(shown(src.name))  # a producer that cannot rename may still be writing
            continue
        try:
            todo.append(_claim(src, paths.claimed))
        except OSError as e:  # a full disk while copying across filesystems: it stays in incoming/
            run.result.failed.append({"file": shown(src.name), "event": "failed", "error": str(e)})
            log(f"landing: could not claim {shown(src.name)} ({e}); it stays in {paths.incoming}")
    if not todo:
        log(f"landing: nothing new in {paths.incoming}")
        return run.result
    for claimed in todo:
        run.take(claimed)
    log(run.result.line())
    return run.result


def retract(paths: Paths, batch_id: str, reason: str, log=print, lock_timeout: float = LOCK_TIMEOUT_S) -> dict:
    """Take an accepted batch back out of the raw store, recorded: it moves (bytes unchanged) to
    `retracted/<batch_id>/` with `retraction.json` {who, when, why}, and a `retracted` event is logged.
    The next `ingest` runs without it. Raises DataError when no accepted batch has that id."""
    if not reason.strip():
        raise DataError(batch_id, "a retraction needs a reason", "pass --reason 'why this batch is taken back'")
    with landing_lock(paths, lock_timeout):
        _sweep(paths)
        src = paths.store / batch_id
        if batch_id.startswith(".") or "/" in batch_id or not (src / BATCH_META).is_file():
            raise DataError(batch_id, f"is not an accepted batch in {paths.store}",
                            "pick an id from `srec land list`")
        rec = read_json(src / BATCH_META)
        # Out of the store first, atomically: `ingest` never sees half a batch. The sweep puts it back
        # if this process dies before the retracted copy is complete.
        leaving = paths.store / f"{_RETRACTING}{batch_id}"
        os.rename(src, leaving)
        raw = {f.name: f for f in leaving.iterdir() if f.name != BATCH_META}
        now = _utc_now().isoformat(timespec="seconds")
        record = {**rec, "status": "retracted", "retracted_at": now, "retracted_by": getpass.getuser(),
                  "retraction_reason": reason}
        try:
            _place({**raw, BATCH_META: rec, RETRACTION_META: record}, paths.retracted / batch_id)
        except BaseException:
            os.rename(leaving, src)
            raise
        shutil.rmtree(leaving)
        _log(paths, {**record, "event": "retracted"})
    log(f"landing: retracted batch {batch_id} ({rec['file']}): {reason}; kept in {paths.retracted / batch_id}; "
        "the next `ingest` runs without it")
    return record


def release(paths: Paths, batch_id: str, reason: str, log=print, lock_timeout: float = LOCK_TIMEOUT_S) -> dict:
    """Put a batch held for drift into the raw store as accepted, recorded: its raw file (bytes unchanged),
    its drift report and batch.json, with the drift decision kept and {released_at, released_by,
    release_reason} added, renamed into place complete (as every accepted batch is), and a `released`
    event logged. The next `ingest` trains on it. Raises DataError when no held batch has that id."""
    if not reason.strip():
        raise DataError(batch_id, "a release needs a reason", "pass --reason 'why this batch may train'")
    with landing_lock(paths, lock_timeout):
        _sweep(paths)
        src = paths.held / batch_id
        if batch_id.startswith(".") or "/" in batch_id or not (src / HELD_META).is_file():
            raise DataError(batch_id, f"is not a batch held for review in {paths.held}",
                            "pick a held id from `srec land list`")
        held = _read_record(src / HELD_META)
        rec = _read_record(src / BATCH_META)
        dest = paths.store / batch_id
        # Out of held/ first: if this process dies half-way, the sweep puts it back (no store copy) or
        # finishes the move (the store copy is complete), so it is never in both places, nor in neither.
        leaving = paths.held / f"{_RELEASING}{batch_id}"
        os.rename(src, leaving)
        now = _utc_now().isoformat(timespec="seconds")
        record = {**rec, "status": "accepted", "held_reason": held.get("reason"), "released_at": now,
                  "released_by": getpass.getuser(), "release_reason": reason}
        files: dict[str, Any] = {rec["file"]: leaving / rec["file"], BATCH_META: record}
        if (leaving / DRIFT_JSON).is_file():
            files[DRIFT_JSON] = read_json(leaving / DRIFT_JSON)
        if (leaving / DRIFT_HTML).is_file():
            files[DRIFT_HTML] = (leaving / DRIFT_HTML).read_text(encoding="utf-8")
        try:
            _place(files, dest)
        except BaseException:
            os.rename(leaving, src)
            raise
        shutil.rmtree(leaving)
        _log(paths, {**record, "event": "released"})
    log(f"landing: released held batch {batch_id} ({rec['file']}) into {dest}: {reason}; the next `ingest` "
        "trains on it")
    return record


def held_batches(paths: Paths) -> list[dict[str, Any]]:
    """The batches held for review, oldest first: their held.json records."""
    return sorted((r for r in _records(paths) if r["status"] == "held"), key=lambda r: r["batch_id"])


def pending(paths: Paths) -> list[str]:
    """Names of files claimed but not yet judged (a run died, or a disk filled): the next run takes them."""
    if not paths.claimed.is_dir():
        return []
    return [shown(_original_name(p)) for p in sorted(paths.claimed.iterdir())
            if not p.name.startswith(".") and "-" in p.name]


def drop(files: list[Path], paths: Paths, ready: bool = True) -> list[Path]:
    """Put files into the landing zone following the protocol: hidden copy, fsync, rename, sentinel.

    Copies bytes (a symbolic link's target is read, never moved). Raises DataError for a name the
    landing zone would never take, or one that is already waiting in `incoming/` (it is not replaced)."""
    files = [Path(f) for f in files]
    for f in files:  # every file checked before anything is written: a typo leaves the landing zone as it was
        if not f.is_file():
            raise DataError(shown(str(f)), "file not found",
                            "pass the path of a batch file (CSV, TSV, Parquet or JSON Lines)")
        if not is_candidate(f) or shown(f.name) != f.name:
            raise DataError(shown(str(f)), "the landing zone would never take this name (hidden, '_', an "
                            "incomplete-download suffix, or not UTF-8)", "copy it to a plain UTF-8 name ending in "
                            f"{', '.join(BATCH_SUFFIXES)} and drop that")
    paths.incoming.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        final = paths.incoming / f.name
        tmp = paths.incoming / f".{f.name}.{uuid.uuid4().hex[:6]}.part"
        try:
            with f.open("rb") as fin, tmp.open("wb") as fout:
                shutil.copyfileobj(fin, fout)
                fout.flush()
                os.fsync(fout.fileno())
            _publish(tmp, final)
        except FileExistsError:
            raise DataError(final, "a file of this name is already waiting to be landed",
                            "let the landing run take it first, or drop yours under another name") from None
        finally:
            tmp.unlink(missing_ok=True)
        out.append(final)
    if ready:
        (paths.incoming / paths.ready_file).touch()
    return out


def _publish(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final` unless `final` exists (FileExistsError): a hard link is the atomic
    no-replace rename; where the filesystem has none, check then rename."""
    try:
        os.link(tmp, final)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        if os.path.lexists(final):
            raise FileExistsError(errno.EEXIST, "exists", str(final)) from None
        os.rename(tmp, final)


def list_lines(paths: Paths) -> list[str]:
    """One line per batch: waiting (dropped in incoming/), pending (in claimed/), accepted, held, rejected,
    duplicate, retracted; oldest first."""
    waiting = sorted(f.name for f in paths.incoming.iterdir() if f.is_file() and is_candidate(f)) \
        if paths.incoming.is_dir() else []
    lines = [f"{'(incoming)':31s}  waiting   {n}  dropped: the next landing run takes it (the DAG's, or `srec run`)"
             for n in waiting]
    lines += [f"{'(claimed)':31s}  pending   {n}  not judged yet: the next landing run takes it" for n in pending(paths)]
    for rec in sorted(_records(paths), key=lambda r: r["batch_id"]):
        status = rec["status"]
        drift = rec.get("drift") or {}
        flagged = f", drift flagged: {'; '.join(drift.get('reasons', []))}" if drift.get("decision") == "flag" else ""
        released = f", released {rec['released_at']}: {rec.get('release_reason')}" if rec.get("released_at") else ""
        extra = {"accepted": f"{rec.get('rows', '?')} rows{flagged}{released}",
                 "held": f"{rec.get('reason', '')}; release: {RELEASE_HINT.format(**rec)}",
                 "retracted": f"retracted {rec.get('retracted_at')}: {rec.get('retraction_reason')}"}.get(
                     status, rec.get("reason", ""))
        lines.append(f"{rec['batch_id']}  {status:9s} {rec['file']}  {extra}")
    return lines


@stage_main("landing")
def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    # The protocol and every rule are the module's docstring, and docs/data.md; --help keeps to the verbs.
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                 epilog="How batches are judged, held and stored: docs/data.md (the landing zone).")
    ap.add_argument("--params", default="params.yaml", help="the pipeline's params (orchestration.landing: folders)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("drop", help="copy batch files into the landing zone (atomic rename + sentinel)",
                       description="Copy each file into data/incoming/ under a hidden name, rename it into place "
                       "(complete, atomically) and create the _READY sentinel that starts a DAG run.")
    d.add_argument("files", nargs="+", type=Path, help="batch files: CSV, TSV, Parquet or JSON Lines with user_id, "
                   "item_id, timestamp (Unix seconds) and title for new items")
    d.add_argument("--no-ready", action="store_true", help="do not create the sentinel that triggers the DAG")
    i = sub.add_parser("ingest", help="what the ingest_batches stage runs; use `srec run ingest_batches`, so DVC "
                       "records the store it writes")
    i.add_argument("--ingested", type=Path, default=Path("data/ingested"), help="last ingest output (catalogue)")
    i.add_argument("--record", type=Path, help="write the outcome (accepted, duplicates, rejected) to this JSON file")
    r = sub.add_parser("retract", help="take an accepted batch back out of the raw store (recorded)")
    r.add_argument("batch_id")
    r.add_argument("--reason", required=True, help="why; kept in retraction.json and log.jsonl")
    h = sub.add_parser("release", help="put a batch held for drift into the raw store as accepted (recorded)")
    h.add_argument("batch_id")
    h.add_argument("--reason", required=True, help="why it may train; kept in batch.json and log.jsonl")
    sub.add_parser("list", help="pending, accepted, held, rejected, duplicate and retracted batches")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    cfg = params.orchestration.landing
    paths = Paths.from_config(cfg)
    if args.cmd == "drop":
        for p in drop(args.files, paths, ready=not args.no_ready):
            print(f"dropped {p}")
    elif args.cmd == "ingest":
        result = land(paths, params, cfg.settle_seconds, ingested=args.ingested)
        if args.record:
            write_json(args.record, result.as_dict())
        if result.rejected:
            first = result.rejected[0]
            more = f" (and {len(result.rejected) - 1} more rejected batch(es))" if len(result.rejected) > 1 else ""
            raise DataError(paths.incoming / first["file"], first["reason"] + more, first["fix"])
        if result.failed:  # not a data problem: no "ERROR [landing]" line, so the DAG retries
            first = result.failed[0]
            print(f"landing: {len(result.failed)} batch(es) could not be placed; first: {first['file']}: "
                  f"{first['error']}. They are kept in {paths.claimed} (or {paths.incoming}) and taken first by "
                  "the next run: free space (or fix the error), then rerun", file=sys.stderr)
            raise SystemExit(3)
    elif args.cmd == "retract":
        retract(paths, args.batch_id, args.reason)
    elif args.cmd == "release":
        release(paths, args.batch_id, args.reason)
    else:
        for line in list_lines(paths) or [f"no batches in {paths.incoming} or the store yet: `srec land drop FILE` "
                                           "lands one"]:
            print(line)


if __name__ == "__main__":
    main()
