"""Why LLM-SRec learns slowly, and what helps: variants side by side at one wall-clock budget (not CI).

    python -m benchmarks.distill_learning --prepared data/prepared --sasrec models/sasrec --minutes 4 \\
        --variant base: --variant lr1e-3:lr=0.001 --variant bn:lr=0.001,center=batchnorm \\
        [--base key=value,...] [--valid-users 600] --out benchmarks/results/learning/synthetic.json

Each `--variant NAME:key=value,...` overrides `distill` options (and `num_layers`, the `llm` one) on top of
`--base`, which starts from params `distill`'s defaults (components.config.DistillParams: params.yaml's
values). The probes in benchmarks/results/learning/ started from the paper's settings instead, so what
their `base` does not list is the paper's (`readout: token` among them); a base without title states needs
`text_layer=null,cf_dropout=0` today (CF dropout came later and needs them). For each variant, on the same
data, teacher, seed and budget (`distill.max_minutes`):
- the spread of the LLM states the adapters read, before and after training: the mean pairwise cosine
  similarity of the last hidden states at `[UserOut]` (64 validation users) and `[ItemOut]` (64 items),
  raw and centred (the batch mean subtracted), and of what f_user/f_item actually receive (after
  `center`); near 1 means every input gives nearly the same state;
- the training curve, validation NDCG@10 over time, the best one, steps and seconds per step.
Prints a table, writes JSON and plots validation NDCG@10 against minutes (`--plot`).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch


def parse_overrides(text: str) -> dict:
    import yaml

    out = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        out[key.strip()] = yaml.safe_load(value)
    return out


def mean_cosine(x: torch.Tensor) -> float:
    """Mean cosine similarity over pairs of distinct rows of x [N, H]."""
    x = torch.nn.functional.normalize(x.float(), dim=-1)
    sim = x @ x.T
    n = len(x)
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


@torch.no_grad()
def state_spread(model, prepared, n: int = 64) -> dict[str, float]:
    """Mean pairwise cosine of the states at [UserOut] / [ItemOut], raw, centred, and as the MLPs see them."""
    model.eval()
    hist = prepared.histories("valid", np.arange(min(n, len(prepared.user_idx))), model.max_history)
    hu = model.user_states(hist)
    idx = torch.arange(1, min(n, model.num_items) + 1)
    hi = model.llm_states("item", model.prompts.items(idx.numpy()), model.inject(idx), model.adapters.item_token)
    model.train()
    return {"user_raw": mean_cosine(hu), "user_centred": mean_cosine(hu - hu.mean(0)),
            "user_seen_by_f_user": mean_cosine(model.adapters.norm_user.eval()(hu)),
            "item_raw": mean_cosine(hi), "item_centred": mean_cosine(hi - hi.mean(0)),
            "item_seen_by_f_item": mean_cosine(model.adapters.norm_item.eval()(hi)),
            "inject_norm": float(model.inject(idx).norm(dim=-1).mean()), "token_norm": model.token_norm}


def run_variant(name: str, overrides: dict, args, prepared, teacher, titles, backbones: dict) -> dict:
    from components.config import DistillParams, parse
    from components.llm.backbone import load_backbone
    from components.stages.distill import build_from_params, train_adapters

    overrides = dict(overrides)
    layers = overrides.pop("num_layers", None)
    if "full" not in backbones:
        backbones["full"] = load_backbone(args.backbone, dtype=args.dtype)
    opts = parse(DistillParams, {"max_minutes": args.minutes, "max_steps": None, "epochs": 100,
                                 "valid_users": args.valid_users, "patience": 1000, **overrides},
                 f"--variant {name}", at="distill")
    torch.manual_seed(args.seed)
    model = build_from_params(prepared, copy.deepcopy(teacher), backbones["full"], opts, titles,
                              None if layers is None else int(layers))
    backbone = model.backbone
    before = state_spread(model, prepared)
    print(f"[{name}] {overrides} layers={backbone.num_layers}: state cosine before {before}", flush=True)
    t0 = time.time()
    result = train_adapters(model, prepared, opts, args.seed, log=lambda m: print(f"[{name}] {m}", flush=True))
    after = state_spread(model, prepared)
    from components.stages.distill import validate_ndcg

    valid_n = len(prepared.candidates["valid"].user_idx)
    rows = np.sort(np.random.default_rng(args.seed).choice(valid_n, min(valid_n, opts.valid_users or valid_n),
                                                           replace=False))  # the rows train_adapters validated on
    shuffled = validate_ndcg(model, prepared, rows, opts.eval_batch_size, opts.item_batch_size, shuffle_seed=args.seed)
    ev = [p for p in result["curve"] if p.get("valid_ndcg@10") is not None]
    if layers is not None:
        overrides["num_layers"] = int(layers)  # recorded with the other changes
    return {"name": name, "overrides": overrides, "num_layers": backbone.num_layers,
            "options": {k: v for k, v in vars(opts).items()}, "spread_before": before, "spread_after": after,
            "best_valid_ndcg@10": result["best_valid_ndcg@10"], "best_step": result["best_step"],
            "valid_ndcg@10_shuffled": round(shuffled, 5),
            "valid_shuffle_drop": round(1 - shuffled / max(result["best_valid_ndcg@10"], 1e-9), 4),
            "steps": result["steps"], "seconds_per_step": result["seconds_per_step"],
            "examples_per_second": round(result["steps"] * opts.batch_size / result["train_seconds"], 2),
            "epochs": result["epochs"], "minutes": round((time.time() - t0) / 60, 2),
            "valid_curve": [{"step": p["step"], "minutes": p.get("minutes"), "ndcg@10": p["valid_ndcg@10"]} for p in ev],
            "loss_curve": [{k: p[k] for k in p if k != "valid_ndcg@10"} for p in result["curve"]]}


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        pts = [p for p in r["valid_curve"] if p["minutes"] is not None]
        ax.plot([p["minutes"] for p in pts], [p["ndcg@10"] for p in pts], marker="o", ms=3, label=r["name"])
    ax.set_xlabel("training minutes (2-core CPU)")
    ax.set_ylabel("valid NDCG@10")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", type=Path, required=True)
    ap.add_argument("--sasrec", type=Path, required=True)
    ap.add_argument("--backbone", default="smollm2-135m")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--minutes", type=float, default=4.0, help="training budget per variant (distill.max_minutes)")
    ap.add_argument("--valid-users", type=int, default=None, help="validation users (default: all)")
    ap.add_argument("--base", default="", help="overrides every variant starts from, key=value,...")
    ap.add_argument("--variant", action="append", required=True, help="NAME:key=value,...")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args(argv)

    import pandas as pd

    from components.data.sequences import Prepared
    from components.llm.checkpoints import load_checkpoint

    prepared = Prepared.load(args.prepared)
    teacher = load_checkpoint(args.sasrec)
    titles = [""] + pd.read_parquet(args.prepared / "items.parquet").sort_values("idx")["title"].astype(str).tolist()
    base = parse_overrides(args.base)
    results, backbones = [], {}
    for spec in args.variant:
        name, _, text = spec.partition(":")
        results.append(run_variant(name, {**base, **parse_overrides(text)}, args, prepared, teacher, titles, backbones))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"prepared": str(args.prepared), "minutes": args.minutes, "base": base,
                                        "threads": torch.get_num_threads(), "variants": results}, indent=2) + "\n")
    print(f"\n{'variant':<22}{'best valid NDCG@10':>20}{'shuffle drop':>13}{'steps':>7}{'s/step':>8}{'ex/s':>7}"
          f"{'cos user raw→after':>22}{'cos item raw→after':>22}")
    for r in results:
        b, a = r["spread_before"], r["spread_after"]
        print(f"{r['name']:<22}{r['best_valid_ndcg@10']:>20.4f}{r['valid_shuffle_drop']:>13.1%}{r['steps']:>7}"
              f"{r['seconds_per_step']:>8.2f}"
              f"{r['examples_per_second']:>7.1f}{b['user_raw']:>11.3f}→{a['user_raw']:<10.3f}"
              f"{b['item_raw']:>11.3f}→{a['item_raw']:<10.3f}")
    if args.plot:
        plot(results, args.plot, f"LLM-SRec variants, {args.minutes:g} min each ({args.prepared})")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
