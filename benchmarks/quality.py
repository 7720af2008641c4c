"""Quality benchmark: the real pipeline stages on a dataset, in a scratch workspace, timed.

    python -m benchmarks.quality --models popularity,sasrec --source files --path DIR \\
        [--column item_id=movie_id] [--max-users N] [--set sasrec.loss=ce ...] --out results.json

It writes a params.yaml (the repository's, with the data source and any `--set` overrides) into a
scratch workspace and runs there, as subprocesses, exactly the commands `dvc.yaml` declares for
the stages the models need (ingest, validate, prepare, the models' training stages, evaluate). The
paper's protocol comes from the stages themselves: leave-last-out, 1 positive + 99 negatives, at
most 10,000 evaluated users. The results JSON holds the keys of reports/metrics.json for the
chosen models, `seconds` per stage, `epochs`, `seconds_per_epoch`, `peak_rss_mb` (the largest
resident set of any stage), and the data and params it ran with. Not part of CI.

A model is one entry in `MODEL_STAGES` (the training stages it needs, in dvc.yaml order).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from components.config import parse_params

REPO = Path(__file__).resolve().parents[1]
DATA_STAGES = ["ingest", "validate", "prepare"]
#: the training stages each model needs; `evaluate` always runs last
MODEL_STAGES: dict[str, list[str]] = {
    "popularity": [],
    "sasrec": ["pretrain_sasrec"],
    "llmsrec": ["pretrain_sasrec", "distill"],
}


def deep_set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def build_params(base: dict[str, Any], args: argparse.Namespace, models: list[str]) -> dict[str, Any]:
    params = json.loads(json.dumps(base))  # a deep copy of plain YAML data
    data = params.setdefault("data", {})
    data["source"] = args.source
    if args.path:
        data["path"] = str(Path(args.path).expanduser().resolve())
    if args.column:
        data["columns"] = dict(spec.split("=", 1) for spec in args.column)
    if args.timestamp_unit:
        data["timestamp_unit"] = args.timestamp_unit
    data["max_users"] = args.max_users
    ev = params.setdefault("evaluate", {})
    ev["models"] = models
    ev["shuffle"] = [m for m in ev.get("shuffle") or [] if m in models]
    for spec in args.set:
        key, sep, raw = spec.partition("=")
        if not sep:
            raise SystemExit(f"--set {spec}: expected KEY=VALUE, e.g. --set sasrec.loss=ce")
        deep_set(params, key, yaml.safe_load(raw))  # YAML scalars: 0.2, null, [a, b]; never evaluated as code
    return params


def stage_plan(dvc: dict[str, Any], models: list[str]) -> list[str]:
    wanted = set(DATA_STAGES) | {"evaluate"}
    for m in models:
        if m not in MODEL_STAGES:
            raise SystemExit(f"unknown model '{m}': choose from {sorted(MODEL_STAGES)}")
        wanted |= set(MODEL_STAGES[m])
    return [name for name in dvc["stages"] if name in wanted]  # dvc.yaml order is dependency order


def run_stage(name: str, cmd: str, workspace: Path, log) -> dict[str, float]:
    argv = shlex.split(cmd)
    if argv[0] == "python":
        argv[0] = sys.executable
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "False"}
    log(f"\n== {name}: {cmd}")
    t0 = time.time()
    proc = subprocess.Popen(argv, cwd=workspace, env=env)
    _, status, usage = os.wait4(proc.pid, 0)  # the stage's own peak RSS, not the benchmark's
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"stage {name} failed with exit code {proc.returncode} (workspace {workspace})")
    rss_mb = usage.ru_maxrss / 1024 if sys.platform != "darwin" else usage.ru_maxrss / 2**20
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(rss_mb, 1)}


def machine() -> str:
    """Where a stage ran: the host and, when there is one, the GPU (a resumed run mixes machines)."""
    try:
        import torch
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        gpu = None
    return f"{platform.node()} ({os.cpu_count()} CPUs{', ' + gpu if gpu else ''})"


def stage_key(stage: dict[str, Any], params: dict[str, Any]) -> str:
    """What a finished stage depends on besides code and upstream data: its command and its params."""
    def get(dotted: str) -> Any:
        node: Any = params
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node
    used = {p: get(p) for p in stage.get("params", [])}
    return hashlib.sha256(json.dumps([stage["cmd"], used], sort_keys=True, default=str).encode()).hexdigest()


def median_epoch(workspace: Path, dvc: dict[str, Any], models: list[str]) -> dict[str, float]:
    """SASRec's median epoch time from its run record's rounds: the mean (seconds_per_epoch) also counts any
    time the process was paused or starved, which a run resumed across sessions on a shared machine has."""
    if "sasrec" not in models:
        return {}
    rounds = run_record(workspace, dvc["stages"]["pretrain_sasrec"]).get("rounds") or []
    seconds = [row["seconds"] for row in rounds if row.get("seconds") is not None]
    return {"median_seconds_per_epoch": round(statistics.median(seconds), 2)} if seconds else {}


def stage_metrics_file(stage: dict[str, Any]) -> str | None:
    """The training stage's summary (its `--summary` file: a plain output since DVC's one metric is the
    report stage's headline)."""
    words = shlex.split(stage["cmd"])
    return words[words.index("--summary") + 1] if "--summary" in words[:-1] else None


def run_record(workspace: Path, stage: dict[str, Any]) -> dict[str, Any]:
    """The stage's run record (its `--timings` file: durations, threads, device; components/timings.py)."""
    words = shlex.split(stage["cmd"])
    path = words[words.index("--timings") + 1] if "--timings" in words[:-1] else None
    return json.loads((workspace / path).read_text()) if path and (workspace / path).is_file() else {}


#: a run record's entries that describe the record or the machine, not the training (kept elsewhere here)
RECORD_ONLY = ("stage", "seconds", "finished_at", "host", "cpus", "python", "rounds", "landing")


def run(args: argparse.Namespace, log=print) -> dict[str, Any]:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    plan = stage_plan(dvc, models)
    params = build_params(yaml.safe_load((REPO / "params.yaml").read_text()), args, models)
    parse_params(params, "params.yaml with the --set overrides")  # a typo fails now, not after an hour of stages
    workspace = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="quality-"))
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log(f"workspace {workspace}; stages {' -> '.join(plan)}")

    # A stage finished earlier in this workspace with the same command and params is kept when
    # resuming, so a run can continue on another machine (data and SASRec on a CPU, distill on a
    # GPU worker). Anything after a stage that reruns reruns too.
    record_path = workspace / "quality_stages.json"
    record = json.loads(record_path.read_text()) if args.resume and record_path.exists() else {}
    stages: dict[str, dict[str, Any]] = {}
    rerun = False
    for name in plan:
        stage = dvc["stages"][name]
        key = stage_key(stage, params)
        outs_exist = all((workspace / out).exists() for out in stage.get("outs", []) if isinstance(out, str))
        if not rerun and record.get(name, {}).get("key") == key and outs_exist:
            log(f"\n== {name}: kept from {record[name]['machine']} ({record[name]['seconds']}s)")
            stages[name] = record[name]
            continue
        rerun = True
        stages[name] = {**run_stage(name, stage["cmd"], workspace, log), "machine": machine(), "key": key}
        record[name] = stages[name]
        record_path.write_text(json.dumps(record, indent=2))
    metrics = json.loads((workspace / "reports" / "metrics.json").read_text())
    result: dict[str, Any] = {k: v for k, v in metrics.items() if k in models or k.removesuffix("_shuffled") in models}
    training = {}
    for m in models:
        if MODEL_STAGES[m]:
            stage = dvc["stages"][MODEL_STAGES[m][-1]]
            path = stage_metrics_file(stage)
            # The summary metric holds what the data decides; durations and threads are in the run record.
            facts = {k: v for k, v in run_record(workspace, stage).items() if k not in RECORD_ONLY}
            training[m] = {**(json.loads((workspace / path).read_text()) if path else {}), **facts}
    if "sasrec" in models and len(models) > 1:
        result["paired_vs_sasrec"] = paired_vs(workspace / "reports" / "per_user.parquet", "sasrec",
                                               [m for m in models if m != "sasrec"])
    main_model = next((m for m in reversed(models) if m in training), None)
    result |= {
        "seconds": {name: s["seconds"] for name, s in stages.items()},
        "epochs": training[main_model]["epochs"] if main_model else 0,
        "seconds_per_epoch": training[main_model]["seconds_per_epoch"] if main_model else 0.0,
        **median_epoch(workspace, dvc, models),
        "peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values()),
        "peak_rss_mb_per_stage": {name: s["peak_rss_mb"] for name, s in stages.items()},
        "machine_per_stage": {name: s["machine"] for name, s in stages.items()},
        "training": training,
        "data": json.loads((workspace / "reports" / "data_summary.json").read_text()),
        "params": {k: params[k] for k in ("seed", "data", "candidates", *(p for p in ("sasrec", "distill", "llm", "evaluate") if p in params))},
        "command": " ".join(["python -m benchmarks.quality", *(shlex.quote(a) for a in args.argv)]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "workspace": str(workspace),
    }
    return result


def paired_vs(per_user: Path, reference: str, others: list[str]) -> dict[str, dict[str, Any]]:
    """Each model of `others` against `reference` over the same test users and candidates: the paired
    bootstrap of NDCG@10 on 1+99 and, where evaluated, on the full catalogue (components/evaluation/paired.py)."""
    import pandas as pd

    from components.evaluation.paired import paired_by_user

    table = pd.read_parquet(per_user)
    ref = table[table["model"] == reference].set_index("user_idx")
    out: dict[str, dict[str, Any]] = {}
    for name in others:
        mine = table[table["model"] == name].set_index("user_idx")
        out[name] = {"ndcg@10": paired_by_user(mine["ndcg@10"], ref["ndcg@10"])}
        if "full_ndcg@10" in table.columns:
            out[name]["full_catalogue_ndcg@10"] = paired_by_user(mine["full_ndcg@10"], ref["full_ndcg@10"])
    return out


def ranks_path(result: Path) -> Path:
    """Where a result file's per-user ranks live: `<name>.ranks.parquet` beside it."""
    return result.with_name(result.stem + ".ranks.parquet")


def save_ranks(per_user: Path, out: Path) -> None:
    """Keep only (model, user_idx, rank, full_rank) of evaluate's per-user table: the metrics follow from them."""
    import pandas as pd

    if not per_user.is_file():
        return
    table = pd.read_parquet(per_user)
    table[[c for c in ("model", "user_idx", "rank", "full_rank") if c in table.columns]].to_parquet(out, index=False)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="popularity,sasrec", help=f"comma-separated, from {sorted(MODEL_STAGES)}")
    ap.add_argument("--source", default="files", help="data.source: files | movielens | amazon2023 | synthetic")
    ap.add_argument("--path", help="data.path")
    ap.add_argument("--column", action="append", default=[], metavar="CANONICAL=YOURS",
                    help="data.columns entry, e.g. item_id=movie_id (repeatable)")
    ap.add_argument("--timestamp-unit", choices=["s", "ms"])
    ap.add_argument("--max-users", type=int, help="seeded user subsample (data.max_users)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any params.yaml override, e.g. sasrec.loss=ce (repeatable)")
    ap.add_argument("--workdir", help="scratch workspace (default: a new temporary directory, kept)")
    ap.add_argument("--resume", action="store_true",
                    help="keep stages this --workdir already finished with the same command and params")
    ap.add_argument("--out", type=Path, required=True, help="results JSON")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)

    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    # Per-user ranks beside the results, for paired comparisons between runs on the same splits (the
    # workspace's copy is replaced by the next run there).
    save_ranks(Path(result["workspace"]) / "reports" / "per_user.parquet", ranks_path(args.out))
    print(f"\n{'model':<22}{'NDCG@10':>9}{'HR@10':>8}{'NDCG@20':>9}{'HR@20':>8}{'users':>8}")
    for key, m in result.items():
        if isinstance(m, dict) and "ndcg@10" in m:
            print(f"{key:<22}{m['ndcg@10']:>9.4f}{m['hr@10']:>8.4f}{m['ndcg@20']:>9.4f}{m['hr@20']:>8.4f}"
                  f"{m['n_users']:>8,}")
    print(f"stages: {result['seconds']}; epochs {result['epochs']} at {result['seconds_per_epoch']:.2f}s; "
          f"peak RSS {result['peak_rss_mb']:.0f} MB -> {args.out}")


if __name__ == "__main__":
    main()
