"""LLM-SRec warm start against training from scratch, after a batch lands (not CI; issue 26, part 2).

    python -m benchmarks.llmsrec_warm_start --path ../shared/data/ml-1m-seqrec --max-users 1000 \\
        [--steps 600] [--eval-steps 50] [--champion-steps 600] [--valid-users 300] [--workdir DIR] \\
        --out benchmarks/results/llmsrec_warm_start.json

A `files` dataset (ML-1M: interactions.tsv, items.tsv with `movie_id`) is split by time: the first
`--base-fraction` of all interactions (by timestamp) are the base, the rest land as one batch. `--max-users`
users are drawn (seeded) from every user of the full data, before the split, so both workspaces hold the same
people (a user whose interactions all fall in the batch is a new user); `data.max_users` stays null because it
would draw from each workspace's own users.

1. Champion, on the base: the pipeline's own stage commands from dvc.yaml (ingest, validate, prepare,
   pretrain_sasrec, distill) in a scratch workspace, params.yaml's defaults but the budgets (`--set`-like
   overrides listed in the JSON).
2. Retrain, on base + batch: the data stages, then pretrain_sasrec warm-started from the champion's SASRec
   staged in `models/warm_start/sasrec`, as the DAG's prepare_warm_start does. Then LLM-SRec twice, side by
   side in this process on that one SASRec: `warm` (the champion's adapters loaded by the distill stage's
   `warm_start`, validated at step 0) and `scratch`; the same seed, data, validation users, `--steps` budget
   and validation every `--eval-steps` steps; patience is off so both spend the whole budget.

Reported: each variant's best validation NDCG@10, the steps and seconds at which `warm` first reaches the
best validation NDCG@10 of `scratch` (and their ratio to the steps and seconds `scratch` took to get there),
and test NDCG@10 of each at its best validation checkpoint (selected on validation only) with a paired
interval over the same test users (components/evaluation/paired.py). Steps are the primary measure (a step
costs the same in both variants); seconds include validation and are only as steady as the shared CPU.
Prints a table, writes the JSON and plots both validation curves (`--plot`, default beside the JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from benchmarks.quality import REPO, deep_set, run_stage

DATA_STAGES = ("ingest", "validate", "prepare")


def split_by_time(path: Path, out: Path, max_users: int | None, base_fraction: float, seed: int,
                  item_column: str) -> dict[str, Any]:
    """Write `out/base` and `out/full` (`files` datasets: interactions.tsv, items.tsv) from the dataset at
    `path`: `max_users` users drawn from all (seeded), their interactions up to the `base_fraction` quantile of
    the timestamps as the base, all of them as base + batch. Returns the split's figures."""
    inter = pd.read_csv(path / "interactions.tsv", sep="\t")
    if not {"user_id", item_column, "timestamp"} <= set(inter.columns):
        raise SystemExit(f"{path / 'interactions.tsv'}: expected columns user_id, {item_column}, timestamp "
                         f"(found {list(inter.columns)}); pass --item-column")
    users = np.sort(inter["user_id"].unique())
    if max_users and max_users < len(users):
        inter = inter[inter["user_id"].isin(np.random.default_rng(seed).choice(users, max_users, replace=False))]
    cut = int(np.quantile(inter["timestamp"].to_numpy(), base_fraction))  # Unix seconds
    base = inter[inter["timestamp"] <= cut]
    batch = inter[inter["timestamp"] > cut]
    for name, frame in (("base", base), ("full", inter)):
        (out / name).mkdir(parents=True, exist_ok=True)
        frame.to_csv(out / name / "interactions.tsv", sep="\t", index=False)
        shutil.copyfile(path / "items.tsv", out / name / "items.tsv")
    return {"users": int(inter["user_id"].nunique()), "interactions": len(inter), "base_interactions": len(base),
            "batch_interactions": len(batch), "cut_timestamp": cut,
            "cut_utc": pd.Timestamp(cut, unit="s").isoformat(),
            "batch_users": int(batch["user_id"].nunique()),
            "new_users_in_batch": int(len(set(batch["user_id"]) - set(base["user_id"]))),
            "new_items_in_batch": int(len(set(batch[item_column]) - set(base[item_column])))}


def workspace(root: Path, data: Path, overrides: dict[str, Any], item_column: str) -> Path:
    """A scratch workspace on dataset `data`: params.yaml = the repository's with the data source and `overrides`."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update({"source": "files", "path": str(data.resolve()), "columns": {"item_id": item_column},
                           "max_users": None})
    for key, value in overrides.items():
        deep_set(params, key, value)
    from components.config import parse_params

    parse_params(params, "the benchmark's params")  # a typo fails now, not after the data stages
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def run_stages(ws: Path, names: list[str], log) -> dict[str, float]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: run_stage(name, stages[name]["cmd"], ws, log)["seconds"] for name in names}


def n_batches(prepared: Path, opts, sasrec_len: int) -> int:
    """Optimizer steps in one epoch of `train_adapters` on `prepared` with params `distill` `opts`, the teacher
    reading `sasrec_len` items."""
    from components.data.examples import Examples
    from components.data.sequences import Prepared

    data = Prepared.load(prepared)
    # The window is SASRec's max_len (the teacher reads that much), as train_adapters draws its examples.
    examples = Examples(data, window=max(sasrec_len, opts.history_len), seed=0, targets=opts.targets,
                        history_len=opts.history_len)
    return math.ceil(len(examples) / opts.batch_size)


def reach(curve: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first validation of `curve` at or above `target`: its step and seconds; None when none is."""
    return next(({"step": r["step"], "seconds": r["seconds"]} for r in curve if r["valid_ndcg@10"] >= target), None)


def train_variant(name: str, ws: Path, champion: Path | None, steps: int, eval_steps: int, valid_users: int,
                  backbone, log) -> dict[str, Any]:
    """LLM-SRec on `ws`'s data and SASRec, from `champion`'s adapters (warm) or from scratch (None)."""
    import torch

    from components.config import load_params
    from components.data.sequences import Prepared
    from components.evaluation.metrics import ndcg_at
    from components.evaluation.runner import rank_split
    from components.models.sasrec import SASRec
    from components.stages.distill import build_from_params, train_adapters, warm_start

    params = load_params(ws / "params.yaml")
    seed = params.seed_of("distill")
    prepared = Prepared.load(ws / "data" / "prepared")
    per_epoch = n_batches(ws / "data" / "prepared", params.distill, params.sasrec.max_len)
    opts = params.distill.model_copy(update={
        "max_steps": steps, "max_minutes": None, "epochs": max(1, math.ceil(steps / per_epoch)),
        "eval_every": eval_steps / per_epoch, "valid_users": valid_users, "patience": 10**6})
    titles = [""] + pd.read_parquet(ws / "data" / "prepared" / "items.parquet").sort_values("idx")["title"].astype(
        str).tolist()
    t0 = time.time()
    torch.manual_seed(seed)  # the adapters' initial weights: the same in both variants (warm then replaces them)
    model = build_from_params(prepared, SASRec.load(ws / "models" / "sasrec"), backbone, opts, titles,
                              params.llm.num_layers, log=log)
    setup = time.time() - t0
    warm = warm_start(model, champion, "error") if champion is not None else None
    log(f"\n== LLM-SRec {name}: {steps} steps, validation every {eval_steps} steps on {valid_users} users"
        + (f"; warm start {warm}" if warm else ""))
    t1 = time.time()
    result = train_adapters(model, prepared, opts, seed, log=log, warm=champion is not None)
    wall = time.time() - t1
    # The loop's clock (`minutes`) counts steps and validations; what ran before its first step (the warm
    # start's step-0 validation, drawing the examples) is charged to the start.
    offset = wall - result["train_seconds"]
    curve = [{"step": r["step"], "valid_ndcg@10": r["valid_ndcg@10"], "seconds": round(offset + r["minutes"] * 60, 1)}
             for r in result["curve"] if r.get("valid_ndcg@10") is not None]
    if result["initial_valid_ndcg@10"] is not None:
        curve.insert(0, {"step": 0, "valid_ndcg@10": result["initial_valid_ndcg@10"], "seconds": round(offset, 1)})
    t2 = time.time()
    ranks = rank_split(model, prepared, "test", batch_size=64)
    ndcg = ndcg_at(ranks["rank"].to_numpy(), 10)  # [U]: the model's best-validation adapters (train_adapters)
    return {"warm_start": warm, "best_valid_ndcg@10": result["best_valid_ndcg@10"], "best_step": result["best_step"],
            "steps": result["steps"], "steps_per_epoch": per_epoch, "seconds_per_step": result["seconds_per_step"],
            "train_seconds": round(wall, 1), "setup_seconds": round(setup, 1), "test_seconds": round(time.time() - t2, 1),
            "valid_users": result["valid_users"], "curve": curve, "test_ndcg@10": round(float(ndcg.mean()), 5),
            "test_users": len(ndcg), "_per_user": pd.Series(ndcg, index=ranks["user_idx"].to_numpy())}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, style in (("warm", "o-"), ("scratch", "s-")):
        c = result["llmsrec"][name]["curve"]
        ax.plot([r["step"] for r in c], [r["valid_ndcg@10"] for r in c], style, markersize=3, label=name)
    ax.axhline(result["llmsrec"]["scratch"]["best_valid_ndcg@10"], color="grey", lw=0.8, ls="--",
               label="scratch's best")
    ax.set_xlabel("optimizer step (batch of 20)")
    ax.set_ylabel(f"valid NDCG@10 ({result['llmsrec']['warm']['valid_users']} users)")
    ax.set_title("LLM-SRec after a batch lands: warm start vs from scratch")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(result: dict[str, Any]) -> list[str]:
    """The benchmark's figures as a Markdown table (docs/benchmarks.md renders the same rows)."""
    llm, r = result["llmsrec"], result["reach"]
    lines = ["| variant | best valid NDCG@10 | at step | test NDCG@10 (best valid) | steps | s/step |",
             "|---|---:|---:|---:|---:|---:|"]
    for name in ("warm", "scratch"):
        v = llm[name]
        lines.append(f"| LLM-SRec {name} | {v['best_valid_ndcg@10']:.4f} | {v['best_step']} | {v['test_ndcg@10']:.4f} | "
                     f"{v['steps']} | {v['seconds_per_step']:.2f} |")
    w = llm["warm"]
    if w["curve"] and w["curve"][0]["step"] == 0:
        lines += ["", f"warm at step 0 (the champion's adapters on the new data, before any step): valid NDCG@10 "
                      f"{w['curve'][0]['valid_ndcg@10']:.4f}; the budget is {w['steps'] / w['steps_per_epoch']:.0%} "
                      f"of an epoch ({w['steps_per_epoch']:,} steps)"]
    p = result["paired_test"]
    ci = p["ratio_ci"]
    lines += ["", f"warm / scratch test NDCG@10: {p['ratio']:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f}, "
                  f"{p['n_users']} users, p {p['p_value']:.3g})" if ci[0] is not None else
              f"warm / scratch test NDCG@10: {p['ratio']}"]
    if r["warm"] is None:
        lines.append(f"warm never reached scratch's best valid NDCG@10 ({r['target']:.4f}) within {llm['warm']['steps']} steps")
    else:
        lines.append(f"warm reaches scratch's best valid NDCG@10 ({r['target']:.4f}) at step {r['warm']['step']} "
                     f"({r['warm']['seconds']:.0f} s); scratch got there at step {r['scratch']['step']} "
                     f"({r['scratch']['seconds']:.0f} s): {r['step_ratio']:.2f} of the steps, "
                     f"{r['seconds_ratio']:.2f} of the time (target: at most 1/3)")
    return lines


def run(args: argparse.Namespace, log=print) -> dict[str, Any]:
    from components.config import load_params
    from components.evaluation.paired import paired_comparison
    from components.llm.backbone import load_backbone

    started = time.time()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="warm-start-"))
    split = split_by_time(Path(args.path), work / "data", args.max_users, args.base_fraction, args.seed,
                          args.item_column)
    log(f"workspace {work}; split: {split}")
    budgets = {"seed": args.seed, "sasrec.max_minutes": args.sasrec_minutes,
               "distill.valid_users": args.valid_users, "distill.max_minutes": None}

    # 1. The champion, trained on the base by the pipeline's own stages.
    base = workspace(work / "base", work / "data" / "base", budgets, args.item_column)
    seconds = {f"base_{k}": v for k, v in run_stages(base, [*DATA_STAGES], log).items()}
    base_params = load_params(base / "params.yaml")
    opts = base_params.distill
    per_epoch = n_batches(base / "data" / "prepared", opts, base_params.sasrec.max_len)
    champion_params = {"distill.max_steps": args.champion_steps, "distill.epochs": max(1, math.ceil(args.champion_steps / per_epoch)),
                       "distill.eval_every": args.champion_eval_steps / per_epoch}
    workspace(base, work / "data" / "base", {**budgets, **champion_params}, args.item_column)
    seconds |= {f"base_{k}": v for k, v in run_stages(base, ["pretrain_sasrec", "distill"], log).items()}

    # 2. Base + batch: SASRec continues from the champion's, staged where the DAG stages it.
    full = workspace(work / "full", work / "data" / "full", {**budgets, "sasrec.max_minutes": args.sasrec_warm_minutes},
                     args.item_column)
    shutil.rmtree(full / "models" / "warm_start" / "sasrec", ignore_errors=True)
    shutil.copytree(base / "models" / "sasrec", full / "models" / "warm_start" / "sasrec")
    seconds |= {f"full_{k}": v for k, v in run_stages(full, [*DATA_STAGES, "pretrain_sasrec"], log).items()}

    llm = load_params(full / "params.yaml").llm
    backbone = load_backbone(llm.backbone, device=llm.device, dtype=llm.dtype, allow_download=llm.allow_download)
    variants = {name: train_variant(name, full, champ, args.steps, args.eval_steps, args.valid_users, backbone, log)
                for name, champ in (("warm", base / "models" / "llmsrec"), ("scratch", None))}
    per_user = {name: v.pop("_per_user") for name, v in variants.items()}
    target = variants["scratch"]["best_valid_ndcg@10"]
    warm_at, scratch_at = reach(variants["warm"]["curve"], target), reach(variants["scratch"]["curve"], target)
    paired = paired_comparison(per_user["warm"].to_numpy(), per_user["scratch"].loc[per_user["warm"].index].to_numpy())
    read = lambda p: json.loads(p.read_text())  # noqa: E731
    result = {
        "split": split,
        "sasrec": {"champion": read(base / "reports" / "sasrec_train.json"),
                   "warm": read(full / "reports" / "sasrec_train.json")},
        "champion_llmsrec": read(base / "reports" / "distill_train.json"),
        "llmsrec": variants,
        "reach": {"target": target, "warm": warm_at, "scratch": scratch_at,
                  "step_ratio": round(warm_at["step"] / max(scratch_at["step"], 1), 3) if warm_at else None,
                  "seconds_ratio": round(warm_at["seconds"] / max(scratch_at["seconds"], 1e-9), 3) if warm_at else None},
        "paired_test": paired,
        "seconds": {**seconds, "total": round(time.time() - started, 1)},
        "params": {"budgets": {**budgets, **champion_params}, "steps": args.steps, "eval_steps": args.eval_steps,
                   "distill": opts.model_dump(mode="json"), "llm": llm.model_dump(mode="json")},
        "command": " ".join(["python -m benchmarks.llmsrec_warm_start", *(shlex.quote(a) for a in args.argv)]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch_threads": __import__("torch").get_num_threads()},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "workspace": str(work),
    }
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", required=True, help="a `files` dataset folder (interactions.tsv, items.tsv)")
    ap.add_argument("--item-column", default="movie_id", help="the item id column of both files")
    ap.add_argument("--max-users", type=int, default=1000, help="users drawn (seeded) from the full data; 0 = all")
    ap.add_argument("--base-fraction", type=float, default=0.9, help="share of interactions, by time, in the base")
    ap.add_argument("--steps", type=int, default=600, help="LLM-SRec step budget of each variant after the batch")
    ap.add_argument("--eval-steps", type=int, default=50, help="validate every this many steps")
    ap.add_argument("--champion-steps", type=int, default=600, help="the champion's LLM-SRec step budget (base)")
    ap.add_argument("--champion-eval-steps", type=int, default=100)
    ap.add_argument("--valid-users", type=int, default=300, help="distill.valid_users (one seeded subset for all)")
    ap.add_argument("--sasrec-minutes", type=float, default=3.0, help="sasrec.max_minutes of the champion's SASRec")
    ap.add_argument("--sasrec-warm-minutes", type=float, default=1.5, help="sasrec.max_minutes of the warm retrain")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="scratch folder (default: a new temporary one)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--plot", type=Path, help="PNG of both validation curves (default: --out with .png)")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not 0 < args.base_fraction < 1:
        raise SystemExit(f"--base-fraction {args.base_fraction}: expected a share strictly between 0 and 1")
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=lambda x: x.item() if hasattr(x, "item") else str(x)))
    plot(result, args.plot or args.out.with_suffix(".png"))
    print("\n".join(["", *table(result), f"-> {args.out}"]))


if __name__ == "__main__":
    main()
