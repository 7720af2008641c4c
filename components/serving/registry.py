"""The model registry: LLM-SRec packages in BentoML's model store, and which one is in production.

BentoML's store (under `$BENTOML_HOME`, default `~/bentoml`) keeps every packaged version as
`llmsrec:<version>`; it has no notion of "production". That lives in one small JSON file next to it,
`$BENTOML_HOME/registry/llmsrec.json`:

    {"production": "llmsrec:abc", "events": [{"action": "promote", "tag": ..., "at": ..., "reason": ...}, ...]}

A pointer file rather than a label because BentoML labels are fixed when a model is created, and
promotion must be one atomic write: the file is replaced with `os.replace`, so a reader sees the old
or the new production tag, never a half-written one. Every change (promote, rollback, a logged event) is a
read-modify-write of that file, done under an inter-process lock (`llmsrec.json.lock` beside it, a
`flock` through the filelock library), so two promotions at once are both recorded, one after the other,
instead of the second overwriting the first. The OS releases the lock when its holder exits, even on
`kill -9`. Readers take no lock. Versions are never deleted here, so a rollback always has something to
return to.

Damage never takes the champion down with it (components/serving/integrity.py):
- a version whose files are not what was packaged (truncated, garbled, missing) is refused as production:
  `promote`, `rollback` and the `package` stage verify it first, and the pointer stays where it was;
- a version BentoML cannot read at all (no or a broken `model.yaml`, e.g. a copy cut short) is left out of
  `list_models` and shown as damaged by `list`, instead of failing every listing;
- serving (`serving_candidates`, `resolve_serving_tag`) falls back from a damaged production version to
  the versions that were production before it, newest first, and says so in its log.

Who may read it: the pipeline's user writes the store, the service may run as another user in its group.
Every file written here or by `package` gets the modes a plain `open()` gives under the writer's umask
(components/io.py `file_mode`, `share_tree`), not mkstemp's owner-only 0600. A file this process may not
read is a StoreAccessError naming it, its mode and owner (components/serving/integrity.py): it is neither
damaged nor absent, so it is never skipped over, listed as damaged or fallen back from.

CLI (`python -m components.serving.registry ...`):
    list                 every packaged version, newest first, production marked
    show [TAG]           one version's metadata and where its model card is (default: production)
    promote TAG          make TAG production (any packaged version, e.g. an older one)
    rollback             production goes back to the version promoted before the current one
    verify [TAG]         check a version's files against what was packaged (default: production)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.errors import CheckpointError, ConfigError, DataError, PipelineError
from components.io import JSON_DAMAGE, held_lock, read_json, write_json
from components.serving.integrity import MODEL_CARD, StoreAccessError, verify_package
from components.serving.settings import ServingSettings, env_name

MODEL_NAME = "llmsrec"
#: the variable that pins the version to serve (the `model_tag` serving setting, read in settings.py)
TAG_ENV = env_name("model_tag")
#: how long a registry write waits for another one to finish, in seconds (a write takes milliseconds;
#: a rollback also verifies the version it returns to)
LOCK_TIMEOUT_S = 120.0


def bentoml_home(home: str | Path | None = None) -> Path:
    """The store root: `home`, else BentoML's own (`$BENTOML_HOME`, default `~/bentoml`)."""
    if home is not None:
        return Path(home)
    from bentoml._internal.configuration.containers import BentoMLContainer

    try:  # BentoML checks (and makes) its folders there on first use
        return Path(BentoMLContainer.bentoml_home.get())
    except PermissionError as e:
        raise StoreAccessError(e.filename or os.environ.get("BENTOML_HOME", "~/bentoml")) from None


def model_store(home: str | Path | None = None):
    """The model store at `home`, else the one BentoML is using: `$BENTOML_HOME/models`, or inside a
    built Bento, the Bento's own models. An explicit `home` lets one process (a test) address several."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models.model import ModelStore

    if home is None:
        try:
            return BentoMLContainer.model_store.get()
        except PermissionError as e:
            raise StoreAccessError(e.filename or bentoml_home()) from None
    path = Path(home) / "models"
    path.mkdir(parents=True, exist_ok=True)
    return ModelStore(str(path))


def pointer_path(home: str | Path | None = None) -> Path:
    return bentoml_home(home) / "registry" / f"{MODEL_NAME}.json"


def _locked(home: str | Path | None):
    """Hold the registry's inter-process lock for one read-modify-write of the pointer file.

    Re-entrant within a thread (`rollback` holds it while `set_production` takes it again): filelock's
    singleton gives every caller in this process the same lock object for the path. Raises DataError
    naming the lock file when another writer holds it for more than `LOCK_TIMEOUT_S` seconds."""
    path = pointer_path(home)
    return held_lock(path.with_name(path.name + ".lock"), LOCK_TIMEOUT_S, "another registry write",
                     "let the other promotion (a `package` stage or a registry command) finish, then retry; "
                     "the lock is freed when its process exits", singleton=True)


def _state(home: str | Path | None) -> dict[str, Any]:
    path = pointer_path(home)
    try:
        if not path.is_file():
            return {"production": None, "events": []}
        state = read_json(path)
    except PermissionError:  # the file, or a folder above it (the home itself): named, with its mode
        raise StoreAccessError(path) from None
    except JSON_DAMAGE as e:
        raise DataError(path, f"unreadable registry file ({e})",
                        "restore it, or promote a version again: srec promote TAG") from None
    state.setdefault("production", None)
    state.setdefault("events", [])
    return state


def production_tag(home: str | Path | None = None) -> str | None:
    """The production tag, or None when nothing has been promoted yet."""
    return _state(home)["production"]


def _scan(home: str | Path | None) -> tuple[list, list[tuple[str, str]], dict[str, StoreAccessError]]:
    """(readable versions, newest first; [(tag, why)] of version directories BentoML cannot read; {tag: error}
    of version directories this process is not allowed to read).

    BentoML's own `list` reads every version's model.yaml and fails as a whole on the first it cannot
    read, so one version left half-written would hide all the others (and the champion from serving).
    A version the process may not read is neither damaged nor absent: it is kept apart, so the error
    that reaches the operator names its file and mode."""
    store = model_store(home)
    root = Path(store._path) / MODEL_NAME  # BentoML 1.4: <store>/<name>/<version>/model.yaml
    try:
        if not root.is_dir():
            return [], [], {}
        versions = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    except PermissionError as e:
        raise StoreAccessError(e.filename or root) from None
    models, damaged, unreadable = [], [], {}
    for d in versions:
        tag = f"{MODEL_NAME}:{d.name}"
        if (denied := _access_denied(d)) is not None:
            unreadable[tag] = denied
            continue
        try:
            models.append(store.get(tag))
        except Exception as e:  # BentoMLException (no/invalid model.yaml), YAML or attrs errors from a garbled one
            damaged.append((tag, f"{type(e).__name__}: {str(e)[:200]}"))
    return sorted(models, key=lambda m: m.info.creation_time, reverse=True), damaged, unreadable


def _access_denied(version_dir: Path) -> StoreAccessError | None:
    """The StoreAccessError for a version directory whose model.yaml this process may not read, else None
    (BentoML reports that as an unreadable version, which would pass for damage)."""
    try:
        (version_dir / "model.yaml").open("rb").close()
    except PermissionError as e:
        return StoreAccessError(e.filename or version_dir)
    except OSError:  # missing or worse: damage, which BentoML's own read reports
        pass
    return None


def list_models(home: str | Path | None = None) -> list:
    """Every packaged LLM-SRec version BentoML can read, newest first (`_scan` also lists the others)."""
    return _scan(home)[0]


def tag_or_production(tag: str | None, home: str | Path | None = None) -> str:
    """`tag`, or the production tag when it is None (what `show`, `verify` and `srec card` default to).
    Raises DataError when neither is set: nothing is in production yet."""
    tag = tag or production_tag(home)
    if tag is None:
        raise DataError(pointer_path(home), "nothing is in production yet", "pass a TAG (`srec models` lists them)")
    return tag


def get_model(tag: str, home: str | Path | None = None):
    from bentoml.exceptions import NotFound

    if ":" not in tag:
        tag = f"{MODEL_NAME}:{tag}"
    if not tag.startswith(f"{MODEL_NAME}:"):
        raise ConfigError(tag, f"is not an {MODEL_NAME} package", "use a tag from `srec models`")
    store = model_store(home)
    if (denied := _access_denied(Path(store._path) / tag.replace(":", "/", 1))) is not None:
        raise denied
    try:
        return store.get(tag)
    except NotFound:
        raise DataError(tag, f"no such model in the store at {bentoml_home(home)}",
                        "pick a tag from `srec models` (is BENTOML_HOME the same?)") from None
    except Exception as e:  # BentoMLException (no/invalid model.yaml), YAML or attrs errors from a garbled one
        raise CheckpointError(Path(model_store(home)._path) / tag.replace(":", "/"),
                              f"BentoML cannot read this version ({type(e).__name__}: {str(e)[:200]})",
                              "re-package the model (`dvc repro -f -s package`) or promote another version") from None


def verify(tag: str, home: str | Path | None = None, deep: bool = True) -> str:
    """Check a stored version's files against what was packaged (components/serving/integrity.py); return
    its full tag. Raises CheckpointError naming the bad file, DataError when the tag is not in the store."""
    model = get_model(tag, home)
    verify_package(Path(model.path), str(model.tag), deep=deep)
    return str(model.tag)


def set_production(tag: str, action: str, reason: str = "", home: str | Path | None = None) -> str:
    """Point production at `tag` (which must be in the store, with its files intact) and log the event.
    Returns the full tag. A damaged version is refused (CheckpointError naming the file), the refusal is
    logged, and production stays where it was."""
    try:
        full = verify(tag, home)
    except CheckpointError as e:
        log_event("refuse", tag, f"{action} refused: {e}", home)
        raise
    # The version's files are checked outside the lock (they do not change with the pointer); the pointer
    # is read, changed and written under it, so a concurrent promotion is recorded after this one.
    with _locked(home):
        state = _state(home)
        state["events"].append({"action": action, "tag": full, "previous": state["production"],
                                "at": datetime.now(UTC).isoformat(timespec="seconds"), "reason": reason})
        state["production"] = full
        write_json(pointer_path(home), state)  # atomic: readers see the old or the new pointer
    return full


def log_event(action: str, tag: str | None, reason: str, home: str | Path | None = None) -> None:
    """Record an outcome that changes nothing (e.g. a rejected run) in the registry's history."""
    with _locked(home):
        state = _state(home)
        state["events"].append({"action": action, "tag": tag, "previous": state["production"],
                                "at": datetime.now(UTC).isoformat(timespec="seconds"), "reason": reason})
        write_json(pointer_path(home), state)


def rollback(home: str | Path | None = None) -> str:
    """Production returns to the version that was production before the current one."""
    with _locked(home):  # the version to return to is chosen from the same state the rollback writes
        state = _state(home)
        current = state["production"]
        if current is None:
            raise DataError(pointer_path(home), "nothing is in production", "package a model first (`dvc repro`)")
        # The promotion that made `current` production names its predecessor. Rollback events are skipped,
        # so two rollbacks in a row walk further back instead of toggling between two versions.
        for event in reversed(state["events"]):
            if event["action"] in ("promote", "provisional") and event["tag"] == current:
                previous = event.get("previous")
                if previous:
                    return set_production(previous, "rollback", f"rolled back from {current}", home)
                break
        raise DataError(pointer_path(home), f"{current} has no earlier production version to roll back to",
                        "promote a version explicitly: srec promote TAG")


def serving_candidates(home: str | Path | None = None) -> list[str]:
    """The versions serving may use, in order of preference: `$LLMSREC_MODEL_TAG` alone (pinned: no
    fallback); else production, then the versions that were production before it, newest first (what
    serving falls back to when production turns out damaged); else, inside a built Bento (whose store holds
    exactly the model it was built with), that one model. Only versions BentoML can read are listed.
    Raises DataError when there is nothing to serve, ConfigError for a bad serving setting (the pin is
    read with the others, components/serving/settings.py)."""
    if tag := ServingSettings.from_env().model_tag:
        try:
            return [str(get_model(tag, home).tag)]
        except StoreAccessError:
            raise
        except PipelineError as e:  # the variable is the input to fix, not the tag alone
            raise type(e)(f"{TAG_ENV}={tag!r}", f"{e.subject}: {e.problem}" if e.subject != tag else e.problem,
                          f"{e.fix}, or unset {TAG_ENV} to serve production") from None
    state = _state(home)
    models, _, unreadable = _scan(home)
    stored = {str(m.tag) for m in models}
    prod = state["production"]
    if prod in unreadable:  # not damage: falling back would serve an older model for a permissions mistake
        raise unreadable[prod]
    history = [prod] + [t for e in reversed(state["events"]) if e.get("action") in ("promote", "provisional", "rollback")
                        for t in (e.get("tag"), e.get("previous"))]
    candidates = list(dict.fromkeys(t for t in history if t in stored))
    if prod in stored:
        return candidates
    if len(models) == 1:  # a Bento's own store: the model it was built with, whatever the pointer says now
        return [str(models[0].tag)]
    if prod and candidates:  # production's directory is gone or unreadable: the champions before it
        return candidates
    if prod:
        raise DataError(pointer_path(home), f"production is {prod}, which is not in the model store",
                        "promote an existing version: srec promote TAG")
    raise DataError(bentoml_home(home), "no production LLM-SRec model in this BentoML store",
                    "run the pipeline (`make run`), or promote a version: srec promote TAG "
                    f"(or set {TAG_ENV}=llmsrec:VERSION)")


def resolve_serving_tag(home: str | Path | None = None) -> str:
    """Which version to serve: the first of `serving_candidates` whose files pass the quick integrity check
    (present, sizes as packaged; the service checks the content when it loads, and falls back further if
    that fails). Production damaged -> the previous production version, with a warning on stderr; a pinned
    `$LLMSREC_MODEL_TAG` that is damaged, or no intact version at all -> CheckpointError naming the file."""
    refused: list[CheckpointError] = []
    for tag in serving_candidates(home):
        try:
            verify_package(Path(get_model(tag, home).path), tag, deep=False)
        except CheckpointError as e:
            refused.append(e)
            continue
        for e in refused:
            print(f"WARNING [registry] not serving a damaged version: {e}; serving {tag} instead", file=sys.stderr)
        return tag
    raise refused[0]


def model_card(model) -> Path | None:
    """The run report stored with a packaged version (open it in a browser), None when it has none."""
    card = Path(model.path) / MODEL_CARD
    return card if card.is_file() else None


def describe(model, production: str | None) -> dict[str, Any]:
    meta = model.info.metadata
    metrics = (meta.get("metrics") or {}).get(meta.get("model", MODEL_NAME), {})
    return {
        "tag": str(model.tag),
        "production": str(model.tag) == production,
        "created": model.info.creation_time.isoformat(timespec="seconds"),
        "status": model.info.labels.get("status", "?"),
        "ndcg@10": metrics.get("ndcg@10"),
        "data_version": meta.get("data_version"),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", help="BentoML home (default: $BENTOML_HOME or ~/bentoml)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="packaged versions, newest first")
    show = sub.add_parser("show", help="one version's metadata")
    show.add_argument("tag", nargs="?")
    promote = sub.add_parser("promote", help="make a version production")
    promote.add_argument("tag")
    promote.add_argument("--reason", default="manual promotion")
    sub.add_parser("rollback", help="back to the previous production version")
    check = sub.add_parser("verify", help="check a version's files against what was packaged")
    check.add_argument("tag", nargs="?")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "list":
            prod = production_tag(args.home)
            models, damaged, unreadable = _scan(args.home)
            rows = [describe(m, prod) for m in models]
            if not rows and not damaged and not unreadable:
                print(f"no {MODEL_NAME} models in {bentoml_home(args.home)}")
            for r in rows:
                ndcg = f"{r['ndcg@10']:.4f}" if isinstance(r["ndcg@10"], float) else "-"
                print(f"{'*' if r['production'] else ' '} {r['tag']:<32} {r['created']}  {r['status']:<11} "
                      f"NDCG@10 {ndcg}  data {r['data_version'] or '-'}")
            for tag, why in damaged:
                print(f"! {tag:<32} DAMAGED, BentoML cannot read it ({why}); never served. Fix: remove its "
                      "directory from the store, or re-package")
            for tag, denied in unreadable.items():
                print(f"! {tag:<32} NOT READABLE by this user: {denied.problem}. Fix: {denied.fix}")
        elif args.cmd == "show":
            model = get_model(tag_or_production(args.tag, args.home), args.home)
            card = model_card(model)
            print(json.dumps({"tag": str(model.tag), "labels": model.info.labels, "metadata": model.info.metadata,
                              "model_card": None if card is None else str(card)}, indent=2, default=str))
            # stdout stays one JSON document (`srec show | jq`); the line for a person goes beside it
            print(f"model card: {card}" if card is not None else
                  f"model card: none ({model.tag} was packaged without a run report)", file=sys.stderr)
        elif args.cmd == "promote":
            print(f"production: {set_production(args.tag, 'promote', args.reason, args.home)}")
        elif args.cmd == "rollback":
            print(f"production: {rollback(args.home)}")
        elif args.cmd == "verify":
            print(f"{verify(tag_or_production(args.tag, args.home), args.home)}: every file as packaged")
    except PipelineError as e:
        print(f"ERROR [registry] {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
