"""GPU check for LLM-SRec distillation (not CI): bf16 steps on CUDA, agreement with the CPU path.

    bash benchmarks/gpu_check.sh            # on a GPU machine; OUT=<dir> for the JSON
    python -m benchmarks.gpu_check --device cpu --steps 1 --out /tmp/gpu_check.json   # dry run on CPU

Needs only torch, transformers, numpy and pandas (no dvc/GX/bentoml), so it runs on a bare GPU
worker. On the synthetic default data it builds LLM-SRec (an untrained SASRec teacher is enough:
this checks the mechanics and the speed, not quality) and
1. computes the loss of one fixed batch on the CPU in fp32 (the reference) and on the device in fp32
   and in bf16: agreement within `--rtol-fp32` (1e-3) and `--rtol-bf16` (5e-2) relative;
2. times `--steps` training steps in bf16 on the device: seconds/step, tokens/s, users/s;
3. times the item table: items/s.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="smollm2-135m", help="llm.backbone: packaged name or a local HF dir")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--rtol-fp32", type=float, default=1e-3)
    ap.add_argument("--rtol-bf16", type=float, default=5e-2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    import pandas as pd

    from benchmarks.distill_throughput import prepared_default
    from components.config import DistillParams
    from components.data.examples import Examples
    from components.data.sequences import Prepared
    from components.llm.backbone import load_backbone
    from components.models.sasrec import SASRec, SASRecConfig
    from components.stages.distill import build_from_params

    prepared_dir = prepared_default(Path(tempfile.mkdtemp(prefix="gpu-check-")))
    data = Prepared.load(prepared_dir)
    titles = [""] + pd.read_parquet(prepared_dir / "items.parquet").sort_values("idx")["title"].astype(str).tolist()
    torch.manual_seed(0)
    teacher = SASRec(SASRecConfig(), data.item_ids, data.item_mapping_hash).eval()
    ex = Examples(data, window=128, seed=0)
    rows = np.random.default_rng(0).permutation(len(ex))
    batch = ex.batch(rows[: args.batch_size], 3, shuffle=False)

    def loss_on(device: str, dtype: str) -> tuple[float, object]:
        backbone = load_backbone(args.backbone, device=device, dtype=dtype)
        torch.manual_seed(1)  # identical adapter initialisation on every device
        model = build_from_params(data, copy.deepcopy(teacher), backbone, DistillParams(), titles, None)
        model.adapters.to(backbone.device)
        model.sasrec.to(backbone.device)
        model.eval()  # no CF dropout: its masks come from each device's own random generator
        with torch.no_grad():
            loss = sum(model.loss_terms(batch).values())
        # Where the LLM's weights really were: an exact agreement must not come from a silent CPU fallback.
        placed[f"{device}/{dtype}"] = str(next(backbone.model.parameters()).device)
        return float(loss), model

    placed: dict[str, str] = {}
    ref, _ = loss_on("cpu", "fp32")
    dev32, _ = loss_on(args.device, "fp32")
    dev16, model = loss_on(args.device, "bf16")
    rel32, rel16 = abs(dev32 - ref) / abs(ref), abs(dev16 - ref) / abs(ref)
    print(f"LLM weights on {placed}; loss on a fixed batch: cpu fp32 {ref:.8f}, {args.device} fp32 {dev32:.8f} "
          f"(rel {rel32:.1e}), "
          f"{args.device} bf16 {dev16:.5f} (rel {rel16:.1e})")

    sync = torch.cuda.synchronize if model.backbone.device.type == "cuda" else (lambda: None)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-4)
    model.train()
    batches = [ex.batch(rows[(i * args.batch_size) % len(rows):][: args.batch_size], 3, shuffle=False)
               for i in range(args.steps + 1)]
    tokens = 0
    for i, b in enumerate(batches):
        if i == 1:  # the first step warms up kernels and the allocator
            sync()
            t0 = time.perf_counter()
        loss = model.loss(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 1:
            items, ts = model._prompt_window(b.histories)
            tokens += model.prompts.users(items.cpu().numpy(), ts.cpu().numpy()).num_tokens()
    sync()
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    model.eval()
    model.build_item_table(128)
    sync()
    table_s = time.perf_counter() - t1
    result = {
        "device": str(model.backbone.device),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "backbone": model.backbone.name, "torch": torch.__version__,
        "llm_weights_on": placed, "cuda_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "loss_cpu_fp32": ref, "loss_device_fp32": dev32, "loss_device_bf16": dev16,
        "rel_diff_fp32": rel32, "rel_diff_bf16": rel16,
        "tolerance": {"fp32": args.rtol_fp32, "bf16": args.rtol_bf16},
        "agrees": rel32 <= args.rtol_fp32 and rel16 <= args.rtol_bf16,
        "steps": args.steps, "batch_size": args.batch_size,
        "seconds_per_step": round(train_s / args.steps, 4),
        "user_prompt_tokens_per_s": round(tokens / train_s, 1),
        "users_per_s": round(args.steps * args.batch_size / train_s, 2),
        "item_table_items_per_s": round(data.num_items / table_s, 1),
        "final_loss": loss.detach().item(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"bf16 training on {result['device']}: {result['seconds_per_step']:.3f}s/step, "
          f"{result['users_per_s']:.1f} users/s, {result['user_prompt_tokens_per_s']:,.0f} user-prompt tokens/s; "
          f"item table {result['item_table_items_per_s']:,.0f} items/s; agreement "
          f"{'OK' if result['agrees'] else 'FAILED'} -> {args.out}")
    if not result["agrees"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
