"""The retraining cycle, timed at ML-1M scale on this machine (issue 26; not CI).

    python -m benchmarks.retrain_cycle [--data ../shared/data/ml-1m-seqrec] [--max-users N]
                                       [--out benchmarks/results/cycle/retrain_cycle.json]

What it runs, all real, from a `git clone` of HEAD (commit first):
- ML-1M (`ml-1m-seqrec`) split by time: the first 90% of interactions are the base (the `files` source, with
  only the items the base has in its catalogue), the last 10% one batch in the canonical schema (user_id,
  item_id, timestamp, title): what would land after the model was trained.
- An Airflow deployment (components/orchestration/stack.py, LocalExecutor) with the triggerer, which runs the
  landing zone's Asset watcher, and a BentoML home of its own. `bentoml serve` runs beside it under a
  supervisor that restarts it when it exits, as a service manager does; `orchestration.serving_reload_command`
  stops it, so a promotion is served once the new process is up.
- First training: a manual DAG run on the base (nothing in production: SASRec and LLM-SRec from scratch, with
  the budgets of `--first-minutes`), promoted, then served.
- The cycle: the batch is dropped (`landing drop`, with the `_READY` sentinel) at t0. The watcher starts a
  run: landing (Great Expectations checks, drift) -> ingest -> validate -> prepare -> warm start from the
  champion (orchestration.warm_start: champion) -> SASRec -> LLM-SRec -> evaluate -> gate -> package ->
  reload. The cycle ends when `POST /recommend` answers with the new model's tag.

Both trainings use the same params but the two training budgets: the retrain's are `--cycle-minutes`
(docs/benchmarks.md, "LLM-SRec warm start": a warm start reaches the from-scratch quality in a fraction of the
steps). The gate decides whether the cheaper retrain is good enough: it is re-scored against the champion
on the same candidates, and a regression beyond gate.max_regression is rejected, and so is not served.

Prints each step's seconds (task instances as Airflow's metadata DB records them) and the total; writes JSON.
Target (issue 26): the cycle in at most 15 minutes, with the served model answering from the new version.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import yaml

from benchmarks.serving import Server, free_port
from components.orchestration.stack import AirflowStack

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "ml-1m-seqrec"
TARGET_MINUTES = 15.0
# Task order of one DAG run, for the table (a task that did not run is left out).
ORDER = ("ingest_batches", "ingest", "validate", "prepare", "prepare_warm_start", "pretrain_sasrec", "distill",
         "evaluate", "gate", "report", "check_gate", "package", "mark_rejected", "reload_serving", "run_summary")


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout


def split_by_time(data: Path, out: Path, max_users: int | None, seed: int, base_share: float = 0.9) -> dict:
    """Write `out/base/{interactions,items}.tsv` (the `files` source) and `out/batch.csv` from ML-1M.

    The base is the first `base_share` of the interactions by timestamp (ties broken by the file's order), the
    batch the rest. The base's catalogue holds only the items the base has, so the batch brings new items with
    their titles, as a real one does. `max_users`: a seeded sample of users, with their whole histories.
    Returns counts (rows, users, items, new items and users of the batch, the split time)."""
    inter = pd.read_csv(data / "interactions.tsv", sep="\t").rename(columns={"movie_id": "item_id"})
    items = pd.read_csv(data / "items.tsv", sep="\t")[["movie_id", "title"]].rename(columns={"movie_id": "item_id"})
    if max_users:
        users = inter["user_id"].drop_duplicates().sample(n=min(max_users, inter["user_id"].nunique()),
                                                          random_state=seed)
        inter = inter[inter["user_id"].isin(users)]
    inter = inter.sort_values("timestamp", kind="stable").reset_index(drop=True)
    cut = int(round(len(inter) * base_share))
    base, batch = inter.iloc[:cut], inter.iloc[cut:]
    (out / "base").mkdir(parents=True, exist_ok=True)
    base.to_csv(out / "base" / "interactions.tsv", sep="\t", index=False)
    items[items["item_id"].isin(base["item_id"])].to_csv(out / "base" / "items.tsv", sep="\t", index=False)
    batch.merge(items, on="item_id", how="left").to_csv(out / "batch.csv", index=False)
    return {"base_rows": len(base), "batch_rows": len(batch), "base_users": int(base["user_id"].nunique()),
            "batch_users": int(batch["user_id"].nunique()),
            "batch_new_users": int((~batch["user_id"].drop_duplicates().isin(base["user_id"])).sum()),
            "batch_new_items": int((~batch["item_id"].drop_duplicates().isin(base["item_id"])).sum()),
            "split_at": pd.to_datetime(int(batch["timestamp"].iloc[0]), unit="s").isoformat()}


def reload_command(logs: Path) -> str:
    """orchestration.serving_reload_command for a SupervisedServer logging to `logs`: SIGTERM to the
    server's process group; the supervisor starts it again, on the new production model."""
    pid = logs / "serve.pid"
    # No pid file yet: the first model is promoted before any server runs, and it starts on it.
    # dash's kill takes no `--`: a negative pid right after the signal is the process group.
    return f"sh -c '[ ! -s {pid} ] || kill -TERM -$(cat {pid})'"


class SupervisedServer:
    """`bentoml serve` in `cwd` on one port, started again whenever it exits (a service manager's
    Restart=always). Its current process group id is in `logs/serve.pid`, which `reload_command` signals."""

    def __init__(self, env: dict[str, str], cwd: Path, logs: Path):
        self.env, self.cwd, self.logs = env, cwd, logs
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.pidfile = logs / "serve.pid"
        self.starts: list[float] = []
        self.stopping = threading.Event()
        self.server: Server | None = None
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.starts.append(time.time())
            self.server = Server(self.env, self.logs / f"serve-{len(self.starts)}.log", cwd=self.cwd, port=self.port)
            self.pidfile.write_text(str(self.server.proc.pid))
            self.server.proc.wait()
            self.server.log.close()

    def answer(self, history: list[int], timeout: float = 900) -> dict:
        """The first 200 of `POST /recommend` for `history`, retried while the server (re)starts."""
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                r = httpx.post(f"{self.url}/recommend", json={"history": history, "k": 10}, timeout=60)
                if r.status_code == 200:
                    return r.json()
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.url} gave no answer in {timeout:.0f}s; logs in {self.logs}")

    def wait_for_tag(self, tag: str, history: list[int], timeout: float = 900) -> dict:
        """Poll until the answer names `tag` (the old server answers until it is stopped)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            answer = self.answer(history, timeout=deadline - time.time())
            if answer["model"] == tag:
                return answer
            time.sleep(0.5)
        raise TimeoutError(f"the served model never became {tag}; logs in {self.logs}")

    def stop(self) -> None:
        self.stopping.set()
        if self.server is not None:
            self.server.stop()
        self.thread.join(timeout=60)


def workspace(tmp: Path, split: Path, first_minutes: tuple[float, float], reload_command: str) -> Path:
    """A bare git origin of HEAD with params.yaml set for the base data, the first training's budgets and
    the supervised server's reload command; returns the origin."""
    src = tmp / "src"
    _git(tmp, "clone", "--quiet", str(REPO), str(src))
    params = yaml.safe_load((src / "params.yaml").read_text())
    params["data"].update(source="files", path=str(split / "base"))
    params["sasrec"]["max_minutes"], params["distill"]["max_minutes"] = first_minutes
    params["orchestration"].update(schedule=None, trigger_on_batch=True, retries=0, warm_start="champion",
                                   serving_reload_command=reload_command)
    params["orchestration"]["landing"].update(poll_seconds=2, settle_seconds=1)
    (src / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git(src, "commit", "-qam", "retrain_cycle: ML-1M base, first-training budgets")
    origin = tmp / "origin.git"
    _git(tmp, "clone", "--quiet", "--bare", str(src), str(origin))
    return origin


def set_budgets(checkout: Path, minutes: tuple[float, float]) -> None:
    """The training budgets (sasrec.max_minutes, distill.max_minutes) of the next run, in the checkout the
    LocalExecutor runs stages in."""
    path = checkout / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["sasrec"]["max_minutes"], params["distill"]["max_minutes"] = minutes
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def ordered(seconds: dict[str, float]) -> dict[str, float]:
    return {t: seconds[t] for t in (*ORDER, *sorted(set(seconds) - set(ORDER) - {"run"})) if t in seconds}


def run_record(stack: AirflowStack, run_id: str, t0: float, t_started: float, t_end: float, served: dict,
               t_served: float, home: Path) -> dict:
    from components.serving import registry

    control = stack.control
    read = lambda p: json.loads(p.read_text()) if p.is_file() else None  # noqa: E731
    return {"run_id": run_id, "state": stack.run_state(run_id),
            "seconds": {"until_run_started": round(t_started - t0, 1), **ordered(stack.durations(run_id)),
                        "dag_run": round(t_end - t_started, 1), "until_served": round(t_served - t_end, 1),
                        "total": round(t_served - t0, 1)},
            "production": registry.production_tag(home), "served_model": served["model"],
            "gate": read(control / "reports" / "gate.json"), "metrics": read(control / "reports" / "metrics.json"),
            "sasrec_train": read(control / "reports" / "sasrec_train.json"),
            "distill_train": read(control / "reports" / "distill_train.json"),
            "timings": {p.stem: read(p) for p in sorted((control / "reports" / "timings").glob("*.json"))}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA, help="ml-1m-seqrec (interactions.tsv, items.tsv)")
    ap.add_argument("--max-users", type=int, default=None, help="a seeded sample of users (default: all 6,040)")
    ap.add_argument("--first-minutes", type=float, nargs=2, default=(6.0, 6.0), metavar=("SASREC", "DISTILL"),
                    help="training budgets of the first training (sasrec.max_minutes, distill.max_minutes)")
    ap.add_argument("--cycle-minutes", type=float, nargs=2, default=(2.0, 2.0), metavar=("SASREC", "DISTILL"),
                    help="training budgets of the warm-started retrain")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cycle" / "retrain_cycle.json")
    args = ap.parse_args(argv)
    if not (args.data / "interactions.tsv").is_file():
        ap.error(f"{args.data}/interactions.tsv not found: point --data at ../shared/data/ml-1m-seqrec")
    with tempfile.TemporaryDirectory(prefix="retrain_cycle_") as scratch:
        tmp = (args.keep or Path(scratch)).resolve()
        tmp.mkdir(parents=True, exist_ok=True)
        result = cycle(args, tmp)
    result |= {"benchmark": "retrain_cycle", "commit": _git(REPO, "rev-parse", "HEAD").strip(),
               "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "python": platform.python_version()}, "target_minutes": TARGET_MINUTES}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print("\n" + "\n".join(table(result)) + f"\n-> {args.out}")


def table(result: dict) -> list[str]:
    """Markdown: each step's seconds in the first training and in the retrain cycle, then the total against
    the target, what was served, and both runs' test NDCG@10 with the gate's verdict on the retrain."""
    first, retrain = result["first_training"], result["cycle"]
    lines = ["| step | first training (s) | retrain cycle (s) |", "|---|---:|---:|"]
    # A task the run skipped (the branch not taken) has start == end in Airflow's DB: shown as not run.
    cell = lambda runs, step: f"{runs['seconds'][step]:.1f}" if runs["seconds"].get(step) else "-"  # noqa: E731
    for step in dict.fromkeys([*first["seconds"], *retrain["seconds"]]):
        name = f"**{step}**" if step == "total" else step
        lines.append(f"| {name} | {cell(first, step)} | {cell(retrain, step)} |")
    total = retrain["seconds"]["total"]
    served = (f"served {retrain['served_model']}" if retrain.get("served")
              else f"nothing new served (the run ended {retrain['state']}, production {retrain['production']})")
    ndcg = lambda run: ((run.get("metrics") or {}).get("llmsrec") or {}).get("ndcg@10")  # noqa: E731
    regression = (((retrain.get("gate") or {}).get("checks") or {}).get("champion_regression") or {}).get("value")
    until = "the first answer of the new model" if retrain.get("served") else "the run's end"
    lines += ["", f"cycle: {total / 60:.1f} min from the drop to {until} (target <= "
                  f"{result['target_minutes']:.0f}), {total / first['seconds']['total']:.2f}x the first training; "
                  f"{served}.",
              f"LLM-SRec test NDCG@10: first training {ndcg(first) or float('nan'):.4f}, retrain "
              f"{ndcg(retrain) or float('nan'):.4f}; the gate "
              f"{'passed' if (retrain.get('gate') or {}).get('passed') else 'did not pass'} it"
              + (f" (against the champion re-scored on the new candidates: {regression:+.2%})"
                 if regression is not None else "") + "."]
    return lines


def cycle(args, tmp: Path) -> dict:
    from components.config import load_params
    from components.data.landing import Paths, drop

    print("splitting ML-1M by time ...", flush=True)
    split = split_by_time(args.data, tmp / "split", args.max_users, args.seed)
    print(json.dumps(split), flush=True)
    home = tmp / "bentoml"
    logs = tmp / "serve-logs"
    logs.mkdir(parents=True, exist_ok=True)
    stack_root = tmp / "stack"
    server_env = dict(os.environ, BENTOML_HOME=str(home), TOKENIZERS_PARALLELISM="false",
                      PYTHONPATH=str(stack_root / "control"))
    origin = workspace(tmp, tmp / "split", tuple(args.first_minutes), reload_command(logs))
    history = pd.read_csv(tmp / "split" / "batch.csv", nrows=2000)["item_id"].drop_duplicates().head(10).tolist()
    history = [int(i) for i in history]
    out: dict = {"split": split, "first_minutes": list(args.first_minutes), "cycle_minutes": list(args.cycle_minutes),
                 "max_users": args.max_users}
    with AirflowStack(stack_root, str(origin), _git(origin, "symbolic-ref", "--short", "HEAD").strip(),
                      executor="LocalExecutor", env={"BENTOML_HOME": str(home)}, triggerer=True) as stack:
        print(f"first training (SASRec {args.first_minutes[0]} min, LLM-SRec {args.first_minutes[1]} min) ...",
              flush=True)
        t0 = time.time()
        run_id = stack.trigger()
        stack.wait_for(lambda: stack.run_state(run_id) == "running", 600, "the first run to start")
        t_started = time.time()
        state = stack.wait_run(run_id, timeout=7200)
        t_end = time.time()
        if state != "success":
            raise SystemExit(f"the first training ended {state}; logs in {stack.root / 'logs'}")
        server = SupervisedServer(server_env, stack.control, logs)
        try:
            first_tag = _production(home)
            served = server.wait_for_tag(first_tag, history)
            out["first_training"] = run_record(stack, run_id, t0, t_started, t_end, served, time.time(), home)
            print(f"first training: {out['first_training']['seconds']['total']:.0f} s, serving {first_tag}",
                  flush=True)

            set_budgets(stack.control, tuple(args.cycle_minutes))
            paths = Paths.from_config(load_params(stack.control / "params.yaml").orchestration.landing,
                                      stack.control)
            known = {r["run_id"] for r in stack.runs()}
            print("the cycle: dropping the batch ...", flush=True)
            t0 = time.time()
            drop([tmp / "split" / "batch.csv"], paths, ready=True)
            stack.wait_for(lambda: any(r["run_id"] not in known for r in stack.runs()), 600,
                           "the landing zone's watcher to start a run", every=0.5)
            run_id = next(r["run_id"] for r in stack.runs() if r["run_id"] not in known)
            t_started = time.time()
            state = stack.wait_run(run_id, timeout=7200)
            t_end = time.time()
            new_tag = _production(home)
            if state != "success" or new_tag == first_tag:
                out["cycle"] = run_record(stack, run_id, t0, t_started, t_end, {"model": first_tag}, t_end, home)
                out["cycle"]["served"] = False
                print(f"the cycle's run ended {state}, production {new_tag}: nothing new to serve", flush=True)
                return out
            served = server.wait_for_tag(new_tag, history)
            out["cycle"] = run_record(stack, run_id, t0, t_started, t_end, served, time.time(), home)
            out["cycle"]["served"] = True
            out["server_starts"] = len(server.starts)
        finally:
            server.stop()
    return out


def _production(home: Path) -> str | None:
    from components.serving import registry

    return registry.production_tag(home)


if __name__ == "__main__":
    main()
