"""Distillation throughput, efficient vs naive, in one run (not CI).

    python -m benchmarks.distill_throughput [--prepared DIR] [--steps 3] [--batch-size 20] \\
        [--backbone smollm2-135m] [--dtype auto] --out benchmarks/results/throughput/distill_throughput.json

Measures, on the same batches:
- training: LLM-SRec's own path (one masked scatter for the whole batch, the base model only,
  hidden states read at [UserOut]/[ItemOut] only): tokens/s and users/s;
- the same math done the naive per-sample way, as in the reference code: a Python loop over
  samples, each prompt's embedding built with torch.cat around the injected vectors, one full
  causal-LM call per prompt with `output_hidden_states=True` (vocabulary-wide logits included);
  the losses of both paths are compared, so the speed-up is for identical math;
- the item table (f_item for the catalogue): items/s, with and without the cached item-prompt prefix.
Prints the figures and writes them to JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def prepared_default(workdir: Path) -> Path:
    """The synthetic default data, prepared by the real prepare code."""
    from components.data.sources.synthetic import SyntheticConfig, generate
    from components.io import write_json, write_parquet
    from components.prepare import prepare

    inter, items = generate(SyntheticConfig(), seed=42)
    res = prepare(inter, items, {}, {}, seed=42)
    for name in ("items", "users", "sequences", "candidates"):
        write_parquet(res[name], workdir / f"{name}.parquet")
    write_json(workdir / "meta.json", res["summary"])
    return workdir


def naive_states(model, causal_lm, ids: torch.Tensor, mask: torch.Tensor, hist_items: torch.Tensor,
                 hist_valid: torch.Tensor, out_id: int, out_vec: torch.Tensor) -> torch.Tensor:
    """Per sample: split the prompt at its placeholders, torch.cat the pieces, run the full causal LM."""
    emb = causal_lm.get_input_embeddings()
    dev, dtype = emb.weight.device, emb.weight.dtype
    states = []
    for b in range(ids.shape[0]):
        row = ids[b][mask[b].bool()].to(dev)
        items = hist_items[b][hist_valid[b]]
        pieces, start, k = [], 0, 0
        for t in range(len(row)):
            if row[t] == model.prompts.history_id or row[t] == out_id:
                if t > start:
                    pieces.append(emb(row[start:t]))
                if row[t] == out_id:
                    pieces.append(out_vec.to(dev, dtype)[None])
                else:
                    vec = model.adapters.f_I(model.cfsrec.item_embeddings[items[k].to(model.device)][None])
                    pieces.append(vec.to(dev, dtype))
                    k += 1
                start = t + 1
        if start < len(row):
            pieces.append(emb(row[start:]))
        x = torch.cat(pieces)[None]  # [1, T, H]
        out = causal_lm(inputs_embeds=x, output_hidden_states=True)
        pos = int((row == out_id).nonzero()[0, 0])
        states.append(out.hidden_states[-1][0, pos].float())
    return torch.stack(states).to(model.device)  # [B, H]


def naive_loss_terms(model, causal_lm, batch) -> dict[str, torch.Tensor]:
    """LLMSRec.loss_terms, computed the naive way (same prompts, same formulas)."""
    from components.llm.model import uniformity

    items, ts = model._prompt_window(batch.histories)
    ids, mask = model.prompts.users(items.numpy(), ts.numpy())
    u = model.adapters.f_user(naive_states(model, causal_lm, ids, mask, items, items != 0,
                                           model.prompts.user_out_id, model.adapters.user_token))
    cands = torch.cat([batch.targets[:, -1:], batch.negatives[:, -1, : model.num_negatives]], 1)  # [B, 1+K]
    flat = cands.reshape(-1)
    iids, imask = model.prompts.items(flat.numpy())
    iv = model.adapters.f_item(naive_states(model, causal_lm, iids, imask, flat[:, None],
                                            torch.ones(len(flat), 1, dtype=torch.bool),
                                            model.prompts.item_out_id, model.adapters.item_token))
    logits = torch.einsum("bd,bcd->bc", u, iv.view(*cands.shape, -1))
    terms = {"retrieval": F.cross_entropy(logits, torch.zeros(len(u), dtype=torch.long))}
    with torch.no_grad():
        o_u = model.cfsrec.user_representation(batch.histories)
    cf_n, u_n = F.normalize(model.adapters.f_cf_user(o_u), dim=-1), F.normalize(u, dim=-1)
    terms["distill"] = F.mse_loss(cf_n, u_n)
    terms["uniform"] = uniformity(cf_n) + uniformity(u_n)
    return terms


def timed_steps(model, batches, loss_fn) -> tuple[float, list[float]]:
    opt = torch.optim.Adam(model.trainable_parameters(), lr=0.0)  # lr 0: both paths see the same weights
    losses, t0 = [], time.perf_counter()
    for batch in batches:
        loss = sum(loss_fn(batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return time.perf_counter() - t0, losses


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", type=Path, help="a prepare-stage output (default: the synthetic default)")
    ap.add_argument("--cfsrec", type=Path, help="a SASRec checkpoint (default: an untrained SASRec, same shapes)")
    ap.add_argument("--backbone", default="smollm2-135m")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--items", type=int, default=256, help="items in the item-table measurement")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import pandas as pd
    from transformers import AutoModelForCausalLM

    from components.distill import DistillOptions, Examples, build_model
    from components.llm.backbone import dense_from_gguf, load_backbone, packaged_gguf
    from components.models.base import load_checkpoint
    from components.models.sasrec import SASRec, SASRecConfig
    from components.sequences import Prepared

    prepared_dir = args.prepared or prepared_default(Path(tempfile.mkdtemp(prefix="throughput-")))
    data = Prepared.load(prepared_dir)
    teacher = load_checkpoint(args.cfsrec) if args.cfsrec else SASRec(SASRecConfig(), data.item_ids,
                                                                        data.item_mapping_hash)
    backbone = load_backbone(args.backbone, device=args.device, dtype=args.dtype)
    titles = [""] + pd.read_parquet(prepared_dir / "items.parquet").sort_values("idx")["title"].astype(str).tolist()
    torch.manual_seed(0)
    model = build_model(data, teacher, backbone, DistillOptions(), titles)
    model.train()
    source = dense_from_gguf(packaged_gguf(args.backbone))[0] if args.backbone == "smollm2-135m" else args.backbone
    causal_lm = AutoModelForCausalLM.from_pretrained(source, dtype=backbone.dtype).to(backbone.device).eval()
    causal_lm.requires_grad_(False)

    ex = Examples(data, window=128, seed=0)
    rows = np.random.default_rng(0).permutation(len(ex))
    batches = [ex.batch(rows[i * args.batch_size:(i + 1) * args.batch_size], 3, shuffle=False)
               for i in range(args.steps)]
    user_tokens = sum(int(model.prompts.users(*[t.numpy() for t in model._prompt_window(b.histories)])[1].sum())
                      for b in batches)
    item_tokens = sum(int(model.prompts.items(torch.cat([b.targets[:, -1:], b.negatives[:, -1]], 1)
                                              .reshape(-1).numpy())[1].sum()) for b in batches)
    tokens = user_tokens + item_tokens
    users = args.steps * args.batch_size

    timed_steps(model, batches[:1], model.loss_terms)  # warm-up (allocator, kernels)
    eff_s, eff_loss = timed_steps(model, batches, model.loss_terms)
    print(f"efficient: {eff_s / args.steps:.2f}s/step, {tokens / eff_s:,.0f} tokens/s, {users / eff_s:.2f} users/s")
    model.config.item_prefix_cache = True
    pre_s, pre_loss = timed_steps(model, batches, model.loss_terms)
    print(f"efficient + item prefix cache: {pre_s / args.steps:.2f}s/step")
    model.config.item_prefix_cache = False
    naive_s, naive_loss = timed_steps(model, batches, lambda b: naive_loss_terms(model, causal_lm, b))
    print(f"naive per-sample: {naive_s / args.steps:.2f}s/step, {tokens / naive_s:,.0f} tokens/s")

    idx = torch.arange(1, min(args.items, data.num_items) + 1)
    table = {}
    for cached in (False, True):
        model.config.item_prefix_cache = cached
        model._prefix_kv = None
        with torch.no_grad():
            model.item_vectors(idx[:8])  # warm-up (and the prefix's one-off computation)
            t0 = time.perf_counter()
            for chunk in idx.split(64):
                model.item_vectors(chunk)
        table["with_prefix_cache" if cached else "plain"] = round(len(idx) / (time.perf_counter() - t0), 2)
    print(f"item table: {table['plain']:.1f} items/s plain, {table['with_prefix_cache']:.1f} items/s with the "
          f"cached prefix ({model.prompts.item_prefix_len} of each item prompt's tokens)")

    diffs = [abs(a - b) / max(abs(b), 1e-9) for a, b in zip(eff_loss, naive_loss, strict=True)]
    result = {
        "backbone": backbone.name, "dtype": str(backbone.dtype).replace("torch.", ""), "device": str(backbone.device),
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "steps": args.steps, "batch_size": args.batch_size, "tokens_per_step": round(tokens / args.steps),
        "user_prompt_tokens_per_step": round(user_tokens / args.steps),
        "item_prompt_tokens_per_step": round(item_tokens / args.steps),
        "efficient": {"seconds_per_step": round(eff_s / args.steps, 3), "tokens_per_s": round(tokens / eff_s, 1),
                      "users_per_s": round(users / eff_s, 3), "losses": eff_loss},
        "efficient_item_prefix_cache": {"seconds_per_step": round(pre_s / args.steps, 3),
                                        "tokens_per_s": round(tokens / pre_s, 1), "losses": pre_loss},
        "naive_per_sample": {"seconds_per_step": round(naive_s / args.steps, 3),
                             "tokens_per_s": round(tokens / naive_s, 1), "users_per_s": round(users / naive_s, 3),
                             "losses": naive_loss},
        "speedup_vs_naive": round(naive_s / eff_s, 2),
        "max_relative_loss_difference": round(max(diffs), 6),
        "item_table_items_per_s": table,
        "item_prefix_tokens": model.prompts.item_prefix_len,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"speed-up vs naive: {result['speedup_vs_naive']:.2f}x (losses agree within "
          f"{result['max_relative_loss_difference']:.2e} relative) -> {args.out}")


if __name__ == "__main__":
    main()
