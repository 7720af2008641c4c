"""The landing zone: new interaction batches arrive in `data/incoming/` and are moved into the raw store.

Protocol for producers (no partial reads):

1. write the batch under a name the landing zone ignores: a leading '.' or '_', or a `.part`/`.tmp`
   suffix (e.g. `.2025-06-01.csv.part`);
2. rename it to its final name (`2025-06-01.csv`). A rename within one filesystem is atomic, so a
   file with a final name is always complete;
3. optionally create the sentinel `data/incoming/_READY`: the Airflow DAG's Asset watcher deletes it
   and starts a run at once, instead of waiting for the cron schedule.

`python -m components.data.landing drop FILE...` does all three.

What happens to each complete file (`land`), in arrival order:

- it is claimed by an atomic rename into `data/landing/claimed/` (two workers never take the same file,
  and a crash leaves it there to be picked up by the next run);
- its SHA-256 is compared with every batch seen before: the same bytes arriving twice are dropped
  (the first copy is kept) and logged;
- it is read in the canonical schema (`user_id`, `item_id`, `timestamp` in Unix seconds; `title` and
  optionally `description` for new items) and validated with the same Great Expectations suite as
  the pipeline, against the known catalogue;
- more bad rows than `validate.max_bad_fraction` (or a file that cannot be read) rejects the whole
  batch: its raw bytes, its bad rows with their reasons (`quarantine.parquet`) and the reason
  (`rejection.json`) go to `data/landing/rejected/<batch_id>/`, and it never reaches training;
- otherwise it is accepted: `data/batches/<batch_id>/<file>` (read-only) plus `batch.json`, renamed
  into place complete. The `ingest` stage appends accepted batches; its few bad rows are quarantined
  by `validate` with their lineage, like any other row.

Every event is appended to `data/landing/log.jsonl`. Raw bytes are never modified.
"""

from __future__ import annotations

import argparse
import datetime as dt
import errno
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import LandingParams, Params, ValidateParams, load_params
from components.data.batches import BATCH_META, BATCH_SUFFIXES, accepted_batches, read_batch
from components.errors import DataError, PipelineError, stage_main
from components.io import read_json, sha256_of, write_json, write_parquet

INCOMPLETE_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", ".filepart")
_DEFAULTS = LandingParams()


@dataclass
class Paths:
    """The landing zone's folders; defaults from params `orchestration.landing`, relative to the repository."""

    incoming: Path = Path(_DEFAULTS.incoming)
    store: Path = Path(_DEFAULTS.store)
    landing: Path = Path(_DEFAULTS.landing)  # claimed/, rejected/, log.jsonl
    ready_file: str = _DEFAULTS.ready_file

    @property
    def claimed(self) -> Path:
        return self.landing / "claimed"

    @property
    def rejected(self) -> Path:
        return self.landing / "rejected"

    @property
    def log(self) -> Path:
        return self.landing / "log.jsonl"

    @classmethod
    def from_config(cls, cfg: LandingParams, root: Path = Path(".")) -> Paths:
        return cls(incoming=root / cfg.incoming, store=root / cfg.store, landing=root / cfg.landing,
                   ready_file=cfg.ready_file)


@dataclass
class LandingResult:
    accepted: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # complete names not yet settled (settle_seconds)

    def as_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "rejected": self.rejected,
                "waiting": self.waiting}

    def line(self) -> str:
        return (f"landing: {len(self.accepted)} accepted, {len(self.duplicates)} duplicate(s) dropped, "
                f"{len(self.rejected)} rejected")


def is_candidate(path: Path) -> bool:
    """A file the landing zone should take: not hidden, not a sentinel, not still being written."""
    name = path.name
    return path.is_file() and not name.startswith((".", "_")) and not name.lower().endswith(INCOMPLETE_SUFFIXES)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _claim(src: Path, claimed: Path) -> Path:
    """Move `src` out of the landing zone atomically. Across filesystems, copy to a hidden name,
    fsync, rename, and only then remove the source, so no reader ever sees a partial file."""
    claimed.mkdir(parents=True, exist_ok=True)
    dest = claimed / f"{uuid.uuid4().hex[:8]}-{src.name}"
    try:
        os.rename(src, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        tmp = claimed / f".{dest.name}.part"
        with src.open("rb") as fin, tmp.open("wb") as fout:
            shutil.copyfileobj(fin, fout)
            fout.flush()
            os.fsync(fout.fileno())
        os.rename(tmp, dest)
        src.unlink()
    return dest


def _original_name(claimed_file: Path) -> str:
    return claimed_file.name.split("-", 1)[1]


def _seen(paths: Paths) -> dict[str, dict[str, Any]]:
    """sha256 -> record of every batch accepted or rejected before."""
    seen: dict[str, dict[str, Any]] = {}
    for kind, root, meta in (("accepted", paths.store, BATCH_META), ("rejected", paths.rejected, "rejection.json")):
        if not root.is_dir():
            continue
        for d in sorted(root.iterdir()):
            if d.is_dir() and not d.name.startswith(".") and (d / meta).is_file():
                rec = read_json(d / meta)
                seen[rec["sha256"]] = {"status": kind, **rec}
    return seen


def known_catalogue(params: Params, paths: Paths, ingested: Path | None) -> pd.DataFrame:
    """Items a batch may refer to: the last ingest's catalogue (or the base source's, before the
    first run), plus the items of every batch accepted since."""
    if ingested is not None and (ingested / "items.parquet").is_file():
        items = pd.read_parquet(ingested / "items.parquet", columns=["item_id", "title", "description"])
    else:
        from components.data.sources import load_source

        _, items = load_source(params.data, seed=params.seed, cache_dir=Path("data/downloads"))
        items = items[["item_id", "title", "description"]]
    extra = [read_batch(f)[1][["item_id", "title", "description"]] for f in accepted_batches(paths.store)]
    items = pd.concat([items, *extra], ignore_index=True)
    return items.drop_duplicates(subset=["item_id"], keep="first").reset_index(drop=True)


def check_batch(path: Path, catalogue: pd.DataFrame, validate_cfg: ValidateParams):
    """Validate one batch on its own against the known catalogue.

    Returns (interactions, quarantined rows, summary); raises DataError when the batch as a whole is
    unusable: unreadable, wrong columns, or more bad rows than `validate.max_bad_fraction`.
    """
    from components.data.validation import validate

    inter, items = read_batch(path)
    new_items = items[~items["item_id"].astype(str).isin(set(catalogue["item_id"].astype(str)))]
    cat = pd.concat([catalogue.assign(_source="catalogue", _row=0), new_items], ignore_index=True)
    outcome = validate(inter, cat, validate_cfg, docs_dir=None, where=str(path))
    s = outcome.summary
    max_bad = validate_cfg.max_bad_fraction
    if s["interactions"] == 0 or s["bad_fraction"] > max_bad:
        worst = sorted(s["quarantined_by_expectation"].items(), key=lambda kv: -kv[1])[:3]
        err = DataError(path, f"{s['rows_quarantined']['interactions']} of {s['rows_checked']['interactions']} rows "
                        f"({s['bad_fraction']:.1%}) failed validation, above validate.max_bad_fraction={max_bad}; "
                        f"top failures: {dict(worst)}",
                        "fix the rows listed in quarantine.parquet next to the rejected file and drop the "
                        "corrected batch again")
        err.quarantine = outcome.quarantine_interactions  # type: ignore[attr-defined]
        raise err
    return inter, outcome.quarantine_interactions, {"rows": s["rows_checked"]["interactions"],
                                                   "bad_rows": s["rows_quarantined"]["interactions"],
                                                   "new_items": int(len(new_items))}


def _log(paths: Paths, event: dict[str, Any]) -> None:
    paths.log.parent.mkdir(parents=True, exist_ok=True)
    with paths.log.open("a") as f:
        f.write(json.dumps(event, default=str) + "\n")


def _place(files: dict[str, Path | pd.DataFrame | dict], dest: Path) -> None:
    """Write a batch directory under a hidden name, then rename it into place: readers (the ingest
    stage, the next landing run) see a complete batch or none."""
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True)
    for name, what in files.items():
        if isinstance(what, Path):
            os.rename(what, tmp / name)
            os.chmod(tmp / name, 0o444)  # raw bytes: read-only from here on
        elif isinstance(what, pd.DataFrame):
            write_parquet(what, tmp / name)
        else:
            write_json(tmp / name, what)
    os.rename(tmp, dest)


def land(paths: Paths, params: Params, settle_seconds: float = 0.0, ingested: Path | None = None,
         log=print) -> LandingResult:
    """Move every complete file of the landing zone into the raw store (or the rejected store)."""
    result = LandingResult()
    paths.incoming.mkdir(parents=True, exist_ok=True)
    now = _utc_now()
    todo = sorted(p for p in paths.claimed.glob("*") if p.is_file() and not p.name.startswith(".")) \
        if paths.claimed.is_dir() else []  # left by a run that died: finish them first
    for src in sorted(paths.incoming.iterdir(), key=lambda p: (p.stat().st_mtime, p.name)):
        if not is_candidate(src):
            continue
        if now.timestamp() - src.stat().st_mtime < settle_seconds:
            result.waiting.append(src.name)  # a producer that cannot rename may still be writing
            continue
        todo.append(_claim(src, paths.claimed))
    if not todo:
        log(f"landing: nothing new in {paths.incoming}")
        return result

    seen = _seen(paths)
    catalogue = None
    validate_cfg = params.validate_
    for claimed in todo:
        name = _original_name(claimed)
        sha = sha256_of(claimed)
        stamp = _utc_now()
        rec: dict[str, Any] = {"file": name, "sha256": sha, "bytes": claimed.stat().st_size,
                               "received_at": stamp.isoformat(timespec="seconds")}
        if sha in seen:
            first = seen[sha]
            claimed.unlink()  # the identical bytes are already kept under the first copy
            event = {**rec, "event": "duplicate", "of": first["batch_id"], "first_status": first["status"]}
            if first["status"] == "rejected":
                event["reason"] = f"identical to rejected batch {first['batch_id']}: {first['reason']}"
                event["fix"] = first.get("fix", "send a corrected file")
                result.rejected.append(event)
            else:
                result.duplicates.append(event)
            _log(paths, event)
            log(f"landing: {name} is a duplicate of batch {first['batch_id']} ({first['status']}); dropped")
            continue

        batch_id = f"{stamp:%Y%m%dT%H%M%S}Z-{sha[:12]}"
        rec["batch_id"] = batch_id
        if claimed.suffix.lower() not in BATCH_SUFFIXES:
            problem = DataError(name, f"unsupported file type '{claimed.suffix}'",
                                f"send {', '.join(BATCH_SUFFIXES)} in the canonical schema")
            _reject(paths, claimed, rec, problem, None, result, seen, log)
            continue
        if catalogue is None:
            catalogue = known_catalogue(params, paths, ingested)
        final = paths.store / batch_id / name
        try:
            inter, quarantined, stats = check_batch(claimed, catalogue, validate_cfg)
        except PipelineError as e:
            _reject(paths, claimed, rec, e, getattr(e, "quarantine", None), result, seen, log)
            continue
        rec |= stats | {"status": "accepted"}
        _place({name: claimed, BATCH_META: rec}, paths.store / batch_id)
        seen[sha] = {"status": "accepted", **rec}
        result.accepted.append({**rec, "path": str(final)})
        _log(paths, {**rec, "event": "accepted"})
        log(f"landing: accepted {name} as {final} ({stats['rows']:,} rows, {stats['bad_rows']} to be quarantined, "
            f"{stats['new_items']} new items)")
    log(result.line())
    return result


def _reject(paths: Paths, claimed: Path, rec: dict[str, Any], error: PipelineError,
            quarantine: pd.DataFrame | None, result: LandingResult, seen: dict, log) -> None:
    name, batch_id = rec["file"], rec["batch_id"]
    dest = paths.rejected / batch_id
    rec = rec | {"status": "rejected", "reason": error.problem, "fix": error.fix}
    files: dict[str, Any] = {name: claimed, "rejection.json": rec}
    if quarantine is not None:
        files["quarantine.parquet"] = quarantine.assign(_source=str(dest / name))
    _place(files, dest)
    seen[rec["sha256"]] = {"status": "rejected", **rec}
    result.rejected.append({**rec, "path": str(dest / name)})
    _log(paths, {**rec, "event": "rejected"})
    log(f"landing: REJECTED {name}: {rec['reason']}. Fix: {rec['fix']} (raw file and bad rows kept in {dest})")


def drop(files: list[Path], paths: Paths, ready: bool = True) -> list[Path]:
    """Put files into the landing zone following the protocol: hidden copy, fsync, rename, sentinel."""
    paths.incoming.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        f = Path(f)
        if not f.is_file():
            raise DataError(f, "file not found", "pass the path of a batch file (CSV, TSV, Parquet or JSON Lines)")
        tmp = paths.incoming / f".{f.name}.part"
        with f.open("rb") as fin, tmp.open("wb") as fout:
            shutil.copyfileobj(fin, fout)
            fout.flush()
            os.fsync(fout.fileno())
        os.rename(tmp, paths.incoming / f.name)
        out.append(paths.incoming / f.name)
    if ready:
        (paths.incoming / paths.ready_file).touch()
    return out


@stage_main("landing")
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("drop", help="copy batch files into the landing zone (atomic rename + sentinel)")
    d.add_argument("files", nargs="+", type=Path)
    d.add_argument("--no-ready", action="store_true", help="do not create the sentinel that triggers the DAG")
    i = sub.add_parser("ingest", help="move the landing zone's complete files into the raw store now")
    i.add_argument("--ingested", type=Path, default=Path("data/ingested"), help="last ingest output (catalogue)")
    i.add_argument("--record", type=Path, help="write the outcome (accepted, duplicates, rejected) to this JSON file")
    sub.add_parser("list", help="accepted and rejected batches")
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
            raise DataError(paths.incoming / first["file"], first["reason"] + more,
                            f"{first['fix']} (the raw file and its bad rows are kept next to "
                            f"{first.get('path', paths.rejected)})")
    else:
        for status, rec in sorted(((r["status"], r) for r in _seen(paths).values()), key=lambda t: t[1]["batch_id"]):
            extra = rec.get("reason", "") if status == "rejected" else f"{rec.get('rows', '?')} rows"
            print(f"{rec['batch_id']}  {status:8s}  {rec['file']}  {extra}")


if __name__ == "__main__":
    main()
