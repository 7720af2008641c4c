"""Stage `pretrain_sasrec`: train SASRec (the paper's CF-SRec) on the prepared training sequences.

Reads params `sasrec` and `seed`. Writes the best checkpoint by validation NDCG@10 (safetensors
weights, config.json, item_ids.json), the training curve (JSON for `dvc plots`, and a PNG) and a
training summary (a DVC metric).

Resume: after every epoch the run's state goes to `--state-dir/<hash of config + data>`, which is
outside the stage's declared outputs because DVC deletes those before it re-runs a stage. A run
killed and restarted with the same config and data continues after its last completed epoch; the
state is removed once the run finishes. The hash leaves out `epochs`, `eval_every` and `patience`
(they decide when to validate and stop, not the weights), so a run can also be extended.

Warm start: `sasrec.warm_start_from: <checkpoint dir>` starts from a previous SASRec checkpoint.
Items are matched by item_id through the two index mappings: known items keep their embeddings,
new items start fresh. An incompatible checkpoint (other architecture, no shared items) fails with
the fix, or trains from scratch when `sasrec.warm_start_mismatch: fresh`.

Staged warm start: `--warm-start-staged DIR` names where an orchestrator (the Airflow DAG) puts the
checkpoint to continue from, normally the production model's SASRec. It is used only when
`sasrec.warm_start_from` is null and DIR holds a checkpoint (`config.json`), and an incompatible one is
skipped (training starts fresh, and the summary says why) because nobody asked for it by name. DIR is
one of the stage's deps in dvc.yaml, so dvc.lock records it; it always exists, holding only a README
when nothing is staged (components/orchestration/release.py).

Durations, threads and where a run resumed go to `--timings` (components/timings.py), not into the
checkpoint's `training.json`, the summary metric or the curve: a re-run on the same data must leave those
as they were, or `distill`, `evaluate` and `package` would go stale for nothing.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from components.config import Params, load_params
from components.data.examples import TrainingSet
from components.data.sequences import Prepared
from components.errors import ConfigError, stage_main
from components.evaluation.metrics import ndcg_at
from components.evaluation.runner import rank_split
from components.io import fresh_dir, numbers_only, sha256_of, write_json
from components.models.base import WEIGHTS, Recommender, match_items, read_checkpoint_meta, read_weights
from components.models.sasrec import SASRec, SASRecConfig
from components.models.training import FitResult, ResumeState, TrainOptions, fit, run_key
from components.timings import split, split_curve, write_timings

ARCHITECTURE = ("hidden", "num_blocks", "num_heads", "max_len")  # what must agree for weights to fit
#: summary entries two runs on the same inputs may disagree on: the run record's, not the outputs'
RUN_FACTS = ("seconds_per_epoch", "train_seconds", "resumed_after_epoch", "threads")


def warm_start(model: SASRec, directory: Path, mismatch: str = "error") -> dict[str, Any]:
    """Copy a previous checkpoint's weights into `model`, item embeddings matched by item_id."""
    directory = Path(directory)
    meta, old_ids = read_checkpoint_meta(directory)

    def refuse(problem: str) -> dict[str, Any]:
        if mismatch == "fresh":
            return {"from": str(directory), "skipped": problem}
        raise ConfigError(f"sasrec.warm_start_from={directory}", problem,
                          "point it at a compatible SASRec checkpoint, set it to null, or set "
                          "sasrec.warm_start_mismatch: fresh to train from scratch instead")

    if meta["model"] != SASRec.name:
        return refuse(f"holds a '{meta['model']}' checkpoint, not sasrec")
    differs = {k: (meta["config"].get(k), getattr(model.config, k)) for k in ARCHITECTURE
               if meta["config"].get(k) != getattr(model.config, k)}
    if differs:
        return refuse("architecture differs from sasrec (checkpoint vs params: "
                      + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in differs.items()) + ")")
    new_idx, old_idx = match_items(old_ids, model.item_ids)
    if len(new_idx) == 0:
        return refuse(f"shares no item_id with this data ({len(old_ids)} old items, {model.num_items} new)")
    weights = read_weights(directory / WEIGHTS)
    old_emb = weights.pop("item_emb.weight")  # [N_old+1, H]
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or set(missing) != {"item_emb.weight"}:
        return refuse(f"weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    with torch.no_grad():
        model.item_emb.weight[new_idx] = old_emb[old_idx]  # [M, H]: known items keep their embedding
    return {"from": str(directory), "matched_items": int(len(new_idx)),
            "new_items": model.num_items - int(len(new_idx)), "dropped_items": len(old_ids) - int(len(new_idx))}


def file_digest(path: Path) -> str:
    return sha256_of(path)[:16]


def plot_curve(curve: list[dict[str, Any]], path: Path) -> None:
    import matplotlib  # ~0.4 s to import (with pyplot), for the one figure a finished run draws

    matplotlib.use("Agg")  # no display on a pipeline worker
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in curve]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, [r["loss"] for r in curve], color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color="tab:blue")
    evaluated = [r for r in curve if r["valid_ndcg@10"] is not None]
    ax2 = ax.twinx()
    ax2.plot([r["epoch"] for r in evaluated], [r["valid_ndcg@10"] for r in evaluated], "o-", color="tab:orange",
             markersize=3, label="valid NDCG@10")
    ax2.set_ylabel("valid NDCG@10", color="tab:orange")
    ax.set_title("SASRec (CF-SRec) pretraining")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def validation_ndcg(model: Recommender, data: Prepared, batch_size: int) -> float:
    """Mean NDCG@10 of every valid-split user on their fixed 1+99 candidates: what early stopping watches."""
    ranks = rank_split(model, data, "valid", batch_size=batch_size)["rank"].to_numpy()
    return float(ndcg_at(ranks, 10).mean())


def sasrec_fit(model: Recommender, data: Prepared, opts: TrainOptions, *, state_root: Path | None, key: str,
               log: Callable[[str], None] = print) -> FitResult:
    """The shared loop's `fit` for a model trained on every position of each training sequence (SASRec)."""
    train = TrainingSet(data, model.max_history)
    return fit(model, opts, batches=lambda rng: train.batches(opts.batch_size, model.num_negatives, rng),
               n_batches=-(-len(train) // opts.batch_size),
               validate=lambda: validation_ndcg(model, data, opts.eval_batch_size), state_root=state_root, key=key,
               log=log)


def train(params: Params, prepared: Path, state_dir: Path | None, log=print,
          staged: Path | None = None) -> tuple[SASRec, FitResult, dict[str, Any]]:
    cfg = params.sasrec
    model_cfg = SASRecConfig.from_params(cfg)
    opts = TrainOptions.from_params(cfg, params.seed_of("sasrec"), section="sasrec", betas=SASRec.adam_betas,
                                    validate_at_start=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    threads = torch.get_num_threads()
    data = Prepared.load(prepared)

    torch.manual_seed(opts.seed)  # initial weights
    model = SASRec(model_cfg, data.item_ids, data.item_mapping_hash)
    warm: dict[str, Any] = {}
    if cfg.warm_start_from:
        warm = warm_start(model, Path(cfg.warm_start_from), cfg.warm_start_mismatch)
        log(f"warm start: {warm}")
    elif staged is not None and (Path(staged) / "config.json").is_file():
        warm = warm_start(model, Path(staged), "fresh") | {"staged": True}
        log(f"warm start (staged by the orchestrator): {warm}")
    # The key covers what determines the weights epoch by epoch (params `sasrec` but its RUN_ONLY knobs), so
    # a run can be extended or cut short and still resume.
    key = run_key(cfg.weight_knobs(), opts.seed, opts.betas, data.fingerprint(),
                  file_digest(Path(warm["from"]) / WEIGHTS) if warm and "skipped" not in warm else None)
    log(f"pretrain_sasrec: {len(data.user_idx):,} users, {data.num_items:,} items, loss {model_cfg.loss}, "
        f"{threads} threads, run {key}")
    result = sasrec_fit(model, data, opts, state_root=state_dir, key=key, log=log)
    model.load_state_dict(result.best_state)
    summary = {
        "loss": model_cfg.loss, "epochs": result.progress.epoch, "best_epoch": result.progress.best_epoch,
        "best_valid_ndcg@10": result.progress.best_ndcg, "initial_valid_ndcg@10": result.progress.initial_ndcg,
        "seconds_per_epoch": round(result.seconds_per_epoch, 3), "train_seconds": round(result.progress.train_seconds, 1),
        "stopped": result.progress.stopped,
        "resumed_after_epoch": result.resumed_from, "warm_start": warm or None, "run": key, "threads": threads,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return model, result, summary


@stage_main("pretrain_sasrec")
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepared", type=Path, required=True, help="the prepare stage's output directory")
    ap.add_argument("--out", type=Path, required=True, help="checkpoint directory (best weights)")
    ap.add_argument("--curve", type=Path, required=True, help="training curve, JSON (a DVC plot)")
    ap.add_argument("--plot", type=Path, help="training curve, PNG")
    ap.add_argument("--summary", type=Path, required=True, help="training summary JSON (a DVC metric)")
    ap.add_argument("--state-dir", type=Path, help="resume state root; must not be a declared output")
    ap.add_argument("--warm-start-staged", type=Path,
                    help="checkpoint an orchestrator staged to continue from, used when sasrec.warm_start_from is null")
    ap.add_argument("--timings", type=Path, help="run record (durations, threads, resume point): not a DVC output")
    args = ap.parse_args(argv)

    t0 = time.time()
    model, result, summary = train(load_params(args.params), args.prepared, args.state_dir,
                                   staged=args.warm_start_staged)
    out = fresh_dir(args.out)
    model.save(out)
    kept, facts = split(summary, RUN_FACTS)
    curve, rounds = split_curve(result.progress.curve)
    write_json(out / "training.json", kept)
    write_json(args.curve, curve)
    if args.plot:
        plot_curve(curve, args.plot)
    write_json(args.summary, numbers_only(kept))  # a DVC metric; training.json above keeps the rest
    seconds = time.time() - t0
    write_timings(args.timings, "pretrain_sasrec", seconds, **facts, rounds=rounds)
    if args.state_dir:
        ResumeState(args.state_dir, summary["run"]).clear()  # finished: nothing left to resume
    print(f"pretrain_sasrec: best valid NDCG@10 {summary['best_valid_ndcg@10']:.4f} at epoch {summary['best_epoch']} "
          f"of {summary['epochs']} ({summary['stopped']}), {summary['seconds_per_epoch']:.2f}s/epoch, "
          f"{seconds:.1f}s in all")


if __name__ == "__main__":
    main()
