"""What each batcher costs a lone request: several servers up at once, c1 requests sent round-robin.

    python -m benchmarks.batchers_c1 --tiny-llm --requests 400 [--on-loop 0|1] \\
        --out benchmarks/results/batchers_c1_tiny_loop.json

A difference of a few tenths of a millisecond is below the noise between two `benchmarks.serving` runs
on a shared 2-core VM (about ±2 ms). So here every server is started at once, and request i goes to each
server in turn. Every server then sees the same machine state, and the medians compare like for like.
Servers are named as in `benchmarks.serving` (SERVERS): `batching` is the scorer's own batcher,
`batching_bentoml` BentoML's, `no_batching` none. Not CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.serving import (
    REPO,
    SERVERS,
    Server,
    payloads_from,
    percentiles,
    post,
    server_env,
    server_names,
    with_served_model,
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", help="BentoML home holding the production model (default: $BENTOML_HOME)")
    ap.add_argument("--tiny-llm", action="store_true", help="serve a fixture model on a 2-layer random LLM")
    ap.add_argument("--servers", default="batching,batching_bentoml,no_batching")
    ap.add_argument("--requests", type=int, default=400, help="timed requests per server (after 20 untimed)")
    ap.add_argument("--on-loop", choices=("auto", "0", "1"), default="auto",
                    help="LLMSREC_SCORE_ON_LOOP for every server (1: the CUDA default, 0: the CPU default)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "batchers_c1.json")
    args = ap.parse_args(argv)
    servers = server_names(ap, args.servers)
    with_served_model(ap, args, lambda: run(args, servers, argv))


def run(args: argparse.Namespace, servers: list[str], argv: list[str] | None) -> None:
    import httpx
    import torch

    from components.serving.packaged import PackagedModel
    from components.serving.registry import get_model, resolve_serving_tag

    torch.set_num_threads(args.threads)
    tag = resolve_serving_tag()
    model = PackagedModel.load(Path(get_model(tag).path), tag, device="cpu")
    payloads = payloads_from(model, 50, seed=2)
    env = server_env(args.threads, args.on_loop)
    up = {name: Server({**env, **SERVERS[name]}, Path(tempfile.gettempdir()) / f"batchers_c1_{name}.log")
          for name in servers}
    try:
        for name, server in up.items():
            print(f"{name}: ready after {server.wait_ready():.1f}s", flush=True)
        latencies: dict[str, list[float]] = {name: [] for name in servers}
        errors: list[str] = []
        t0 = time.perf_counter()
        with httpx.Client() as client:
            for i in range(args.requests + 20):  # the first 20 rounds warm every server alike
                for name, server in up.items():
                    dt = post(client, server.url, payloads[i % len(payloads)], errors)
                    if i >= 20:
                        latencies[name].append(dt)
                if i % 100 == 99:
                    print(f"  round {i + 1}/{args.requests + 20} ({time.perf_counter() - t0:.0f}s)", flush=True)
    finally:
        for server in up.values():
            server.stop()
    base = float(np.median(latencies[servers[-1]])) * 1000
    report = {"model": tag, "tiny_llm": args.tiny_llm, "on_loop": args.on_loop, "threads": args.threads,
              "servers": {name: {"env": SERVERS[name], "c1": percentiles(v),
                                 f"p50_minus_{servers[-1]}_ms": round(float(np.median(v)) * 1000 - base, 2)}
                          for name, v in latencies.items()},
              "errors": len(errors), "error_samples": errors[:3],
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
              "command": "python -m benchmarks.batchers_c1 " + " ".join(argv if argv is not None else sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, r in report["servers"].items():
        print(f"{name}: c1 p50 {r['c1']['p50_ms']} ms, p95 {r['c1']['p95_ms']} ms "
              f"({r[f'p50_minus_{servers[-1]}_ms']:+} ms against {servers[-1]})")
    print(f"errors {len(errors)} -> {args.out}")


if __name__ == "__main__":
    main()
