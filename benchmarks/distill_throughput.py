"""LLM-SRec training and evaluation throughput: today's path, each change alone, and the chosen default (not CI).

    python -m benchmarks.distill_throughput [--prepared DIR] [--sasrec DIR] [--steps 2] [--eval-users 32] \\
        [--threads N] --out benchmarks/results/throughput/distill_throughput_cpu.json

On the same data, seed and batches, for each configuration:
- training: examples per second over `--steps` optimizer steps of `distill.batch_size` (one warm-up step
  first), and where the time goes: user prompts, item prompts, backward (profiled once per row);
- evaluation: users per second scoring fresh validation users against 100 candidates (an empty
  frozen-text cache, as in the `evaluate` stage), and item-table items per second.

Rows: `today` is the default before these changes (the paper's prompt, all layers, 3 sampled negatives,
only the opening sentence's keys/values reused); each `+ change` row is today with one change; `chosen`
is `params.yaml`'s default. The exact change (`kv_reuse: frozen`) also reports its loss next to
today's on the same batch. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TODAY = {"prompt": "paper", "kv_reuse": "opening", "negatives": "sampled", "num_negatives": 3, "num_layers": None,
         "readout": "token", "text_layer": None, "cf_dropout": 0.0}
CHANGES = {
    "+ kv_reuse: frozen (exact)": {"kv_reuse": "frozen"},
    "+ negatives: in_batch, K=1": {"negatives": "in_batch", "num_negatives": 1},
    "+ num_layers: 4": {"num_layers": 4},
    "+ prompt: compact": {"prompt": "compact"},
    "+ prompt: text_first": {"prompt": "text_first", "kv_reuse": "frozen"},
    "+ readout: slot": {"readout": "slot"},
}


def prepared_default(workdir: Path) -> Path:
    """The synthetic default data, prepared by the real prepare code."""
    from components.config import Params
    from components.data.sources.synthetic import generate
    from components.io import write_json, write_parquet
    from components.stages.prepare import prepare

    params = Params()  # params.yaml's defaults: the synthetic default data, its k-core and candidates
    inter, items = generate(params.data.synthetic, seed=params.seed)
    res = prepare(inter, items, params.data, params.candidates, seed=params.seed)
    for name in ("items", "users", "sequences", "candidates"):
        write_parquet(res[name], workdir / f"{name}.parquet")
    write_json(workdir / "meta.json", res["summary"])
    return workdir


def cpu_model() -> str:
    """The CPU's model name and whether it has native bf16 (AMX / AVX512-BF16): it decides llm.dtype auto."""
    from components.llm.backbone import cpu_has_bf16

    try:
        name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, {'native bf16' if cpu_has_bf16() else 'no native bf16'}"


def chosen_config(params_path: Path) -> dict:
    from components.config import load_params

    params = load_params(params_path)
    return {**params.distill.model_dump(include={"prompt", "kv_reuse", "negatives", "num_negatives", "readout"}),
            "num_layers": params.llm.num_layers}


def profile_step(model, batch) -> dict[str, float]:
    """Seconds of one training step spent in user prompts (tokenization included; also timed alone), item
    prompts and backward, and the share of the user prompts' padded tokens that are padding."""
    items, ts = model._prompt_window(batch.histories)
    t = time.perf_counter()
    p = model.prompts.users(items.numpy(), ts.numpy())
    tokenize_s = time.perf_counter() - t
    lengths = [len(f) + len(v) for f, v in zip(p.frozen, p.live, strict=True)]
    t0 = time.perf_counter()
    u = model.user_vectors(batch.histories)
    t1 = time.perf_counter()
    cands = torch.cat([batch.targets[:, -1:], batch.negatives[:, -1, : model.num_negatives]], 1)
    iv = model.item_vectors(torch.unique(cands))
    t2 = time.perf_counter()
    (u.sum() + iv.sum()).backward()
    t3 = time.perf_counter()
    model.adapters.zero_grad()
    return {"tokenize_s": round(tokenize_s, 4), "user_prompts_s": round(t1 - t0, 3), "item_prompts_s": round(t2 - t1, 3),
            "backward_s": round(t3 - t2, 3), "user_padding_share": round(1 - sum(lengths) / (len(lengths) * max(lengths)), 3)}


def measure(name: str, cfg: dict, args, data, teacher, titles, full_backbone) -> dict:
    from components.config import DistillParams, parse
    from components.data.examples import Examples
    from components.evaluation.metrics import candidate_ranks
    from components.stages.distill import build_from_params

    # min(): the tests' tiny model has fewer layers than a row asks for
    layers = None if cfg["num_layers"] is None else min(cfg["num_layers"], full_backbone.num_layers)
    opts = parse(DistillParams, {k: v for k, v in cfg.items() if k != "num_layers"}, f"row {name!r}", at="distill")
    torch.manual_seed(0)
    model = build_from_params(data, copy.deepcopy(teacher), full_backbone, opts, titles, layers)
    backbone = model.backbone
    model.train()
    ex = Examples(data, window=128, seed=0)
    rows = np.random.default_rng(0).permutation(len(ex))
    batches = [ex.batch(rows[i * opts.batch_size:(i + 1) * opts.batch_size], opts.num_negatives, shuffle=False)
               for i in range(args.steps + 1)]  # the same examples in every row (the model's own K negatives)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=0.0)  # lr 0: every row sees the same weights
    losses = []
    for i, batch in enumerate(batches):
        if i == 1:  # the first step warms up kernels, the allocator and the opening's keys/values
            t0 = time.perf_counter()
        loss = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    train_s = time.perf_counter() - t0
    model.kv_cache.clear()
    profile = profile_step(model, batches[1]) if name in args.profile else None
    p = model.prompts.users(*[t.numpy() for t in model._prompt_window(batches[-1].histories)])
    tokens = {"user_prompt_tokens": round(p.num_tokens() / len(p), 1),
              "user_live_tokens": round(sum(len(v) for v in p.live) / len(p), 1)}

    model.eval()
    model.kv_cache.clear()
    with torch.no_grad():
        idx = torch.arange(1, min(args.items, model.num_items) + 1)
        t0 = time.perf_counter()
        for chunk in idx.split(opts.item_batch_size):
            model.item_vectors(chunk)
        items_per_s = len(idx) / (time.perf_counter() - t0)
        model.build_item_table(opts.item_batch_size)
        model.kv_cache.clear()  # a fresh evaluate stage: no user text seen before
        cand = data.candidates["valid"]
        sel = np.arange(min(args.eval_users, len(cand.user_idx)))
        hist = data.histories("valid", data.rows(cand.user_idx[sel]), model.max_history)
        t0 = time.perf_counter()
        ranks = candidate_ranks(model.score_candidates(hist, torch.from_numpy(cand.items[sel])).cpu())
        eval_s = time.perf_counter() - t0
    out = {"name": name, "config": cfg, "layers": backbone.num_layers,
           "examples_per_s": round(args.steps * opts.batch_size / train_s, 3),
           "seconds_per_step": round(train_s / args.steps, 3), "profile": profile, **tokens,
           "eval_users_per_s": round(len(sel) / eval_s, 3), "item_table_items_per_s": round(items_per_s, 2),
           "first_loss": losses[0], "eval_ranks_checksum": int(ranks.sum())}
    print(f"{name:<32} {out['examples_per_s']:>8.2f} ex/s  {out['eval_users_per_s']:>7.2f} eval users/s  "
          f"{out['item_table_items_per_s']:>7.1f} items/s  {profile or ''}", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", type=Path, help="a prepare-stage output (default: the synthetic default)")
    ap.add_argument("--sasrec", type=Path, help="a SASRec checkpoint (default: an untrained SASRec, same shapes)")
    ap.add_argument("--params", type=Path, default=Path(__file__).resolve().parents[1] / "params.yaml",
                    help="where the chosen default is read (default: the repository's)")
    ap.add_argument("--backbone", default="smollm2-135m")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--eval-users", type=int, default=32)
    ap.add_argument("--items", type=int, default=128, help="items in the item-table measurement")
    ap.add_argument("--only", help="comma-separated row names to run (default: all)")
    ap.add_argument("--profile", default="today,chosen (params.yaml)",
                    help="comma-separated rows whose step is profiled (one more step each)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    args.profile = set(args.profile.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)

    import pandas as pd

    from components.data.sequences import Prepared
    from components.llm.backbone import load_backbone
    from components.llm.checkpoints import load_checkpoint
    from components.models.sasrec import SASRec, SASRecConfig

    prepared_dir = args.prepared or prepared_default(Path(tempfile.mkdtemp(prefix="throughput-")))
    data = Prepared.load(prepared_dir)
    teacher = load_checkpoint(args.sasrec) if args.sasrec else SASRec(SASRecConfig(), data.item_ids,
                                                                        data.item_mapping_hash)
    backbone = load_backbone(args.backbone, dtype=args.dtype)
    titles = [""] + pd.read_parquet(prepared_dir / "items.parquet").sort_values("idx")["title"].astype(str).tolist()
    configs = {"today": TODAY, **{k: {**TODAY, **v} for k, v in CHANGES.items()},
               "chosen (params.yaml)": {**TODAY, **chosen_config(args.params)}}
    if args.only:
        wanted = args.only.split(",")
        configs = {k: v for k, v in configs.items() if any(k.startswith(w) for w in wanted)}
    rows = [measure(name, cfg, args, data, teacher, titles, backbone) for name, cfg in configs.items()]
    base = next((r for r in rows if r["name"] == "today"), None)
    for r in rows:
        if base:
            r["train_speedup"] = round(r["examples_per_s"] / base["examples_per_s"], 2)
            r["eval_speedup"] = round(r["eval_users_per_s"] / base["eval_users_per_s"], 2)
            if r["name"].endswith("(exact)"):  # same math: the loss on the same batch must agree
                r["loss_vs_today_relative_difference"] = abs(r["first_loss"] - base["first_loss"]) / abs(base["first_loss"])
    result = {"batch_size": 20, "backbone": backbone.name, "dtype": str(backbone.dtype).replace("torch.", ""),
              "device": str(backbone.device),
              "threads": torch.get_num_threads(), "cpu": cpu_model(),
              "steps": args.steps, "eval_users": args.eval_users, "prepared": str(prepared_dir), "rows": rows}
    print(f"\n{'configuration':<32}{'train ex/s':>11}{'x today':>8}{'eval users/s':>14}{'x today':>8}{'layers':>7}"
          f"{'user tokens (live)':>20}")
    for r in rows:
        print(f"{r['name']:<32}{r['examples_per_s']:>11.2f}{r.get('train_speedup', float('nan')):>8.2f}"
              f"{r['eval_users_per_s']:>14.2f}{r.get('eval_speedup', float('nan')):>8.2f}{r['layers']:>7}"
              f"{r['user_prompt_tokens']:>13.0f} ({r['user_live_tokens']:.0f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
