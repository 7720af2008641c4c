"""Stage `evaluate`: score every model on the test users' fixed 1+99 candidates and the full catalogue.

Reads params `evaluate`, `seed` and `llm` (the device and dtype a model on an LLM is loaded with, as in
`gate`). Writes `--metrics` (reports/metrics.json, the contract read by benchmarks, gates and later
stages): one object per model with `ndcg@10`, `hr@10`, `ndcg@20`,
`hr@20`, `n_users` on the candidate protocol, plus a `full_catalogue` object (the user's history
excluded). For each model listed in `evaluate.shuffle`, `<name>_shuffled` holds the same metrics
with each history's order permuted (seeded), and its `shuffle_drop` the relative drop.

Adding a model is one registry entry: a checkpoint (`--checkpoint NAME=DIR`, any model that
`components.llm.checkpoints.load_checkpoint` knows) or a builder in `BUILDERS`, and its name in
`evaluate.models`. The evaluator never asks which model it holds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from components.config import EvaluateParams, LLMParams, Params, load_params
from components.data.sequences import Prepared
from components.errors import ConfigError, stage_main
from components.evaluation.metrics import per_user_metrics, relative_drop, summarize
from components.evaluation.runner import rank_split
from components.io import write_json, write_parquet
from components.llm.checkpoints import load_checkpoint
from components.models import Popularity, Recommender
from components.timings import write_timings

_DEFAULTS = EvaluateParams()
#: models built from the prepared data at evaluation time (no training stage of their own)
BUILDERS: dict[str, Callable[[Prepared], Recommender]] = {
    "popularity": lambda data: Popularity.fit(data.train_items(), data.item_ids, data.item_mapping_hash),
}


def parse_checkpoints(specs: list[str]) -> dict[str, Path]:
    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--checkpoint {spec}", "expected NAME=DIR", "e.g. --checkpoint sasrec=models/sasrec")
        out[name] = Path(path)
    return out


def load_model(name: str, data: Prepared, checkpoints: dict[str, Path], llm: LLMParams) -> Recommender:
    """Model `name` from its checkpoint or its builder; a model on an LLM loads it on `llm.device` in `llm.dtype`
    (as `gate` loads the champion, so both are scored at the same precision)."""
    if name in checkpoints:
        model = load_checkpoint(checkpoints[name], device=llm.device, dtype=llm.dtype)
        model.check_data(data.num_items, data.item_mapping_hash, data.source,
                         f"the checkpoint {checkpoints[name]} belongs to other data: retrain it on this data "
                         f"(`dvc repro`), or point --checkpoint {name}= at a checkpoint trained on it")
        return model
    if name in BUILDERS:
        return BUILDERS[name](data)
    raise ConfigError("params.yaml", f"evaluate.models names '{name}', which has no checkpoint and no builder",
                      f"pass --checkpoint {name}=DIR in dvc.yaml, or use one of {sorted(set(BUILDERS) | set(checkpoints))}")


def load_models(params: Params, data: Prepared, checkpoints: dict[str, Path]) -> dict[str, Recommender]:
    """Every model in `evaluate.models`, in order."""
    return {name: load_model(name, data, checkpoints, params.llm) for name in params.evaluate.models}


def evaluate(data: Prepared, models: dict[str, Recommender], shuffle: list[str], *, seed: int,
             full_catalogue: bool = _DEFAULTS.full_catalogue, batch_size: int = _DEFAULTS.batch_size,
             valid_split: bool = _DEFAULTS.valid_split, log=print) -> tuple[dict[str, Any], pd.DataFrame]:
    """Per model: the test split's metrics (and `NAME_shuffled`), with `valid_split` the valid split's 1+99
    metrics under `metrics[NAME]["valid"]` (every validation user: what variants are compared on; the
    training loop's early stopping sees only `distill.valid_users` of them). Returns (metrics, per-user
    test ranks)."""
    metrics: dict[str, Any] = {}
    per_user = []
    for name, model in models.items():
        runs = [(name, None)] + ([(f"{name}_shuffled", seed)] if name in shuffle else [])
        for key, shuffle_seed in runs:
            t0 = time.time()
            ranks = rank_split(model, data, "test", batch_size=batch_size, full_catalogue=full_catalogue,
                               shuffle_seed=shuffle_seed)
            m: dict[str, Any] = summarize(ranks["rank"].to_numpy())
            if full_catalogue:
                m["full_catalogue"] = summarize(ranks["full_rank"].to_numpy())
            if shuffle_seed is not None:
                m["shuffle_drop"] = relative_drop(metrics[name], m)
            metrics[key] = m
            frame = ranks.assign(model=key, **per_user_metrics(ranks["rank"].to_numpy()))
            if full_catalogue:
                frame = frame.assign(**per_user_metrics(ranks["full_rank"].to_numpy(), prefix="full_"))
            per_user.append(frame)
            drop = f" (shuffle drop {m['shuffle_drop']['ndcg@10'] or 0:.1%})" if "shuffle_drop" in m else ""
            log(f"evaluate {key}: NDCG@10 {m['ndcg@10']:.4f}, HR@10 {m['hr@10']:.4f} over {m['n_users']:,} users"
                f"{drop} in {time.time() - t0:.1f}s")
        if valid_split and len(data.candidates["valid"].user_idx):
            t0 = time.time()
            v = summarize(rank_split(model, data, "valid", batch_size=batch_size)["rank"].to_numpy())
            metrics[name]["valid"] = v
            log(f"evaluate {name} (valid split): NDCG@10 {v['ndcg@10']:.4f} over {v['n_users']:,} users "
                f"in {time.time() - t0:.1f}s")
    table = pd.concat(per_user, ignore_index=True)
    first = ["model", "user_idx"]
    return metrics, table[first + [c for c in table.columns if c not in first]]


@stage_main("evaluate")
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepared", type=Path, required=True)
    ap.add_argument("--checkpoint", action="append", default=[], metavar="NAME=DIR",
                    help="a trained model's checkpoint directory (repeatable)")
    ap.add_argument("--metrics", type=Path, required=True, help="reports/metrics.json")
    ap.add_argument("--per-user", type=Path, required=True, help="per-user ranks and metrics (Parquet)")
    ap.add_argument("--timings", type=Path, help="run record (duration, host): not a DVC output")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    cfg = params.evaluate
    seed = cfg.shuffle_seed if cfg.shuffle_seed is not None else params.seed
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    t0 = time.time()
    data = Prepared.load(args.prepared)
    models = load_models(params, data, parse_checkpoints(args.checkpoint))
    metrics, table = evaluate(data, models, cfg.shuffle, seed=seed, full_catalogue=cfg.full_catalogue,
                              batch_size=cfg.batch_size, valid_split=cfg.valid_split)
    write_parquet(table, args.per_user)
    write_json(args.metrics, metrics)
    write_timings(args.timings, "evaluate", time.time() - t0, threads=torch.get_num_threads())
    print(f"evaluate: {len(models)} models on {len(data.candidates['test'].user_idx):,} test users "
          f"in {time.time() - t0:.1f}s -> {args.metrics}")


if __name__ == "__main__":
    main()
