"""Training processes on one machine: `distill` with 1 and with N processes, examples/s and the curves (not CI).

    python -m benchmarks.distill_processes [--processes 1,2] [--steps 40] [--valid-users 100] \\
        [--backbone smollm2-135m] --out benchmarks/results/processes/distill_processes_cpu.json

Runs the real stage (dvc.yaml's command, in a subprocess, as DVC runs it) once per process count, on the
same inputs: the synthetic default data (prepared by the real prepare code), an untrained SASRec of the
default's shape as the teacher (or `--sasrec`), params.yaml's `seed`, `llm` and `distill` with a step
budget (`distill.max_steps: --steps`), no wall-clock budget, and one validation, at the end, on
`--valid-users` users. The title states are computed once before the runs (the stage's own cache), so no
run pays for them.

Records per process count: the stage's wall-clock seconds (starting the processes, loading the LLM,
training, the validation, the item table, writing); training examples/s over the rounds' training
seconds (validation excluded: the figure `distill.num_processes` is meant to raise); the validation and
item-table seconds; the validation row (loss, NDCG@10); and how far each count's row and adapters are from
one process's (the same step by construction, components/models/parallel.py). The machine's load average
is recorded before and after each run: compare figures only from a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def stage_command() -> list[str]:
    """`distill`'s command exactly as dvc.yaml declares it, with this interpreter."""
    argv = shlex.split(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["distill"]["cmd"])
    return [sys.executable, *argv[1:]]


def make_inputs(root: Path, sasrec: Path | None) -> tuple[Path, Path]:
    """(prepared data, SASRec checkpoint) under `root`: the synthetic default and the teacher."""
    from benchmarks.distill_throughput import prepared_default
    from components.data.sequences import Prepared
    from components.models.sasrec import SASRec, SASRecConfig

    prepared = prepared_default(root / "prepared")
    if sasrec is None:
        data = Prepared.load(prepared)
        sasrec = root / "sasrec"
        SASRec(SASRecConfig(), data.item_ids, data.item_mapping_hash).save(sasrec)
    return prepared, sasrec


def params_for(base: Path, backbone: str, steps: int, valid_users: int, processes: int) -> dict:
    """params.yaml's `seed`, `llm` and `distill`, with the benchmark's budget and process count."""
    params = yaml.safe_load(base.read_text())
    distill = {**params["distill"], "max_steps": steps, "max_minutes": None, "eval_every": 1,
               "valid_users": valid_users, "num_processes": processes}
    return {"seed": params["seed"], "llm": {**params["llm"], "backbone": backbone}, "distill": distill}


def warm_title_states(prepared: Path, sasrec: Path, params: dict) -> float:
    """Compute the title states the stage will read (its cache, same key), in this process; seconds taken."""
    import pandas as pd
    import torch

    from components.config import load_params
    from components.data.sequences import Prepared
    from components.llm.backbone import load_backbone
    from components.models.sasrec import SASRec
    from components.stages.distill import build_from_params

    path = prepared.parent / "warm_params.yaml"
    path.write_text(yaml.safe_dump(params))
    p = load_params(path)
    auto = "cuda" if torch.cuda.is_available() else "cpu"  # where the stage's process would load it
    t0 = time.time()
    full = load_backbone(p.llm.backbone, device=auto if p.llm.device == "auto" else p.llm.device, dtype=p.llm.dtype,
                         allow_download=p.llm.allow_download)
    data = Prepared.load(prepared)
    titles = [""] + pd.read_parquet(prepared / "items.parquet").sort_values("idx")["title"].astype(str).tolist()
    build_from_params(data, SASRec.load(sasrec), full, p.distill, titles, p.llm.num_layers)
    return round(time.time() - t0, 1)


def run(root: Path, prepared: Path, sasrec: Path, params: dict, processes: int) -> dict:
    """One run of the stage with `processes` processes in a fresh workspace; its figures."""
    ws = root / f"processes-{processes}"
    shutil.rmtree(ws, ignore_errors=True)
    shutil.copytree(prepared, ws / "data" / "prepared")
    shutil.copytree(sasrec, ws / "models" / "sasrec")
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    load_before = os.getloadavg()
    t0 = time.time()
    proc = subprocess.run(stage_command(), cwd=ws, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    load_after = os.getloadavg()
    if proc.returncode != 0:
        raise SystemExit(f"the stage failed with {processes} process(es):\n{proc.stderr[-4000:]}")
    record = json.loads((ws / "reports" / "timings" / "distill.json").read_text())
    summary = json.loads((ws / "models" / "llmsrec" / "training.json").read_text())  # the metric has no names
    curve = json.loads((ws / "reports" / "distill_curve.json").read_text())
    rounds = record["rounds"]
    batch = params["distill"]["batch_size"]
    steps = rounds[-1]["step"] if rounds else 0
    train_s = sum(r["seconds"] for r in rounds)  # the rounds' training time: validations are not in it
    out = {"processes": processes, "stage_seconds": round(wall, 1), "steps": steps,
           "train_seconds": round(train_s, 2), "examples_per_second": round(steps * batch / max(train_s, 1e-9), 2),
           "validation_and_item_table_seconds": round(record["train_seconds"] - train_s, 2),
           "final_item_table_seconds": record.get("item_table_seconds"), "device": record["device"],
           "dtype": summary["dtype"],
           "last_row": {k: curve[-1][k] for k in ("step", "loss", "valid_ndcg@10")},
           "load_average_before": [round(x, 2) for x in load_before],
           "load_average_after": [round(x, 2) for x in load_after], "workspace": str(ws)}
    print(f"{processes} process(es): {out['examples_per_second']:.2f} training examples/s, stage "
          f"{out['stage_seconds']:.0f}s, last row {out['last_row']}, load {out['load_average_before'][0]} -> "
          f"{out['load_average_after'][0]}", flush=True)
    return out


def adapters_difference(a: Path, b: Path) -> float:
    """Relative norm of the difference between two runs' adapters."""
    from safetensors.torch import load_file

    x = load_file(str(a / "models" / "llmsrec" / "adapters.safetensors"))
    y = load_file(str(b / "models" / "llmsrec" / "adapters.safetensors"))
    diff = sum(float((x[k] - y[k]).float().pow(2).sum()) for k in x) ** 0.5
    return diff / sum(float(x[k].float().pow(2).sum()) for k in x) ** 0.5


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", default="1,2", help="comma-separated process counts; the first is the reference")
    ap.add_argument("--steps", type=int, default=40, help="distill.max_steps of every run")
    ap.add_argument("--valid-users", type=int, default=100, help="distill.valid_users of the one validation")
    ap.add_argument("--backbone", default="smollm2-135m", help="llm.backbone (default: the real default LLM)")
    ap.add_argument("--sasrec", type=Path, help="a SASRec checkpoint of the synthetic default (default: untrained)")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--workdir", type=Path, help="where the workspaces go (default: a temporary folder)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    from benchmarks.distill_throughput import cpu_model

    counts = [int(n) for n in args.processes.split(",")]
    root = args.workdir or Path(tempfile.mkdtemp(prefix="distill-processes-"))
    prepared, sasrec = make_inputs(root, args.sasrec)
    title_seconds = warm_title_states(prepared, sasrec, params_for(args.params, args.backbone, args.steps,
                                                                   args.valid_users, 1))
    rows = [run(root, prepared, sasrec, params_for(args.params, args.backbone, args.steps, args.valid_users, n), n)
            for n in counts]
    ref = rows[0]
    for r in rows[1:]:
        r["examples_per_second_vs_first"] = round(r["examples_per_second"] / ref["examples_per_second"], 2)
        r["loss_relative_difference"] = abs(r["last_row"]["loss"] - ref["last_row"]["loss"]) / abs(ref["last_row"]["loss"])
        r["ndcg_difference"] = round(abs(r["last_row"]["valid_ndcg@10"] - ref["last_row"]["valid_ndcg@10"]), 6)
        r["adapters_relative_difference"] = adapters_difference(Path(ref["workspace"]), Path(r["workspace"]))
    params = params_for(args.params, args.backbone, args.steps, args.valid_users, 1)["distill"]
    result = {"backbone": args.backbone, "cpu": cpu_model(), "cpus": os.cpu_count(), "steps": args.steps,
              "batch_size": params["batch_size"], "valid_users": args.valid_users,
              "title_states_seconds_before_the_runs": title_seconds,
              "command": "python -m benchmarks.distill_processes " + " ".join(argv if argv is not None else sys.argv[1:]),
              "rows": rows}
    print(f"\n{'processes':>9}{'train ex/s':>12}{'x first':>9}{'stage s':>9}{'loss':>10}{'NDCG@10':>9}{'adapters diff':>15}")
    for r in rows:
        print(f"{r['processes']:>9}{r['examples_per_second']:>12.2f}{r.get('examples_per_second_vs_first', 1):>9.2f}"
              f"{r['stage_seconds']:>9.0f}{r['last_row']['loss']:>10.4f}{r['last_row']['valid_ndcg@10']:>9.4f}"
              f"{r.get('adapters_relative_difference', 0):>15.2e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
