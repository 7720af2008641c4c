"""Airflow on this machine, started for real: the CeleryExecutor with one worker per queue, or the LocalExecutor.

`python -m components.orchestration.stack up ROOT --origin GIT_URL` starts, under ROOT:
- Redis (Debian's `redis-server`, on 127.0.0.1) as Celery's broker and result backend;
- an Airflow scheduler, DAG processor and API server, in a checkout of the exchange branch (`control/`);
- one Celery worker per queue (`--queue default --queue gpu`), each in its own checkout (`workers/<queue>/`),
  with its own AIRFLOW_HOME and BENTOML_HOME: they share no folder, as on separate machines, and stages pass
  data through the DVC remote and dvc.lock through the git branch (components/orchestration/exchange.py).

and stays in the foreground until Ctrl-C, which stops everything it started. Tests and benchmarks use
`AirflowStack` directly. The metadata database is SQLite, which Airflow supports for trying things out: a
deployment puts it on PostgreSQL (docs/deploy.md).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from components.config import load_params
from components.errors import ConfigError, stage_main
from components.orchestration.pools import DESCRIPTIONS, pools
from components.orchestration.runner import QUIET_ENV

DAG_ID = "llm_srec_retraining"


def worker_hostname() -> str:
    """Airflow's `core.hostname_callable` for workers that share a machine: `$LLMSREC_WORKER_NAME` (e.g.
    `gpu@host`) when set, so each task instance records which worker ran it; else the machine's FQDN."""
    return os.environ.get("LLMSREC_WORKER_NAME") or socket.getfqdn()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def git_clone(origin: str, branch: str, dest: Path) -> Path:
    """A checkout of `branch` of `origin` at `dest` (a worker's own copy of the repository)."""
    subprocess.run(["git", "clone", "--quiet", "--branch", branch, origin, str(dest)], check=True,
                   capture_output=True, timeout=300)
    return dest


class AirflowStack:
    """The processes of one Airflow deployment on this machine, and their checkouts.

    `executor`: "CeleryExecutor" (Redis, and a worker per entry of `queues`, each in its own checkout) or
    "LocalExecutor" (the scheduler runs tasks in the control checkout; `queues` is ignored). `origin` and
    `branch`: the git repository every checkout is cloned from. `env`: added to every process's environment
    (e.g. BENTOML_HOME for the LocalExecutor, thread limits). `heartbeat_timeout`: seconds after which the
    scheduler fails a task whose worker stopped answering (Airflow's default is 300). `db_template`: an
    `airflow db migrate`d SQLite file of this Airflow version to start from (saves the migration). `unpaused`:
    the DAG is scheduled from the start; with a cron schedule and `catchup: false`, Airflow then runs the last
    interval at once (tests set `schedule: null`; `stack up` keeps it paused unless asked). `triggerer`: start
    `airflow triggerer`, which runs the landing zone's Asset watcher (a dropped batch starts a run); None
    follows `orchestration.trigger_on_batch` of the checkout's params.yaml.
    Raises ConfigError when `redis-server` is missing.
    """

    def __init__(self, root: Path, origin: str, branch: str, executor: str = "CeleryExecutor",
                 queues: tuple[str, ...] = ("default", "gpu"), env: dict[str, str] | None = None,
                 heartbeat_timeout: int = 300, db_template: Path | None = None, unpaused: bool = True,
                 triggerer: bool | None = None, log=print):
        self.root = Path(root).resolve()
        self.origin, self.branch, self.executor = origin, branch, executor
        self.queues = tuple(queues) if executor == "CeleryExecutor" else ()
        self.extra_env = dict(env or {})
        self.heartbeat_timeout = heartbeat_timeout
        self.db_template = db_template
        self.unpaused = unpaused
        self.triggerer = triggerer
        self.log = log
        self.procs: dict[str, subprocess.Popen] = {}
        self.api_port = free_port()
        self.redis_port = free_port() if self.queues else None
        self.jwt_secret = secrets.token_hex(32)  # workers and the API server must share it
        self.home = self.root / "airflow"
        self.control = self.root / "control"
        self.workers = {q: self.root / "workers" / q for q in self.queues}

    # -- environment --------------------------------------------------------------------------------------
    def env(self, checkout: Path, home: Path, **extra: str) -> dict[str, str]:
        """The environment of one Airflow process running the DAG from `checkout`."""
        bin_dir = Path(sys.executable).parent
        env = {**os.environ, **QUIET_ENV, **self.extra_env,
               "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               "AIRFLOW_HOME": str(home),
               "AIRFLOW__CORE__DAGS_FOLDER": str(checkout / "dags"),
               "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
               "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": str(not self.unpaused),
               "AIRFLOW__CORE__EXECUTOR": self.executor,
               "AIRFLOW__CORE__HOSTNAME_CALLABLE": "components.orchestration.stack.worker_hostname",
               "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
               "AIRFLOW__API__PORT": str(self.api_port),
               "AIRFLOW__API__HOST": "127.0.0.1",
               "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
               "AIRFLOW__API_AUTH__JWT_SECRET": self.jwt_secret,
               "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(self.heartbeat_timeout),
               "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
               "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
               "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
               **extra}
        if self.redis_port:
            env["AIRFLOW__CELERY__BROKER_URL"] = f"redis://127.0.0.1:{self.redis_port}/0"
            env["AIRFLOW__CELERY__RESULT_BACKEND"] = f"redis://127.0.0.1:{self.redis_port}/1"
            env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] = "default"
        env.pop("LLMSREC_REPO", None)  # each process drives the checkout its dags folder is in
        return env

    @property
    def control_env(self) -> dict[str, str]:
        return self.env(self.control, self.home)

    def worker_env(self, queue: str) -> dict[str, str]:
        checkout = self.workers[queue]
        return self.env(checkout, checkout.parent / f"{queue}.airflow", BENTOML_HOME=str(checkout.parent / f"{queue}.bentoml"),
                        LLMSREC_WORKER_NAME=f"{queue}@{socket.gethostname()}",
                        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()))

    # -- processes ----------------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = (logs / f"{name}.log").open("ab")
        # Its own session: stopping it stops every process it started (task runners, `dvc repro`, the stage).
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def _airflow(self, *args: str, env: dict[str, str], timeout: float = 300) -> str:
        proc = subprocess.run([sys.executable, "-m", "airflow", *args], env=env, cwd=self.control, capture_output=True,
                              text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"`airflow {' '.join(args)}` failed: {(proc.stderr or proc.stdout)[-2000:]}")
        return proc.stdout

    def start(self) -> AirflowStack:
        """Clone the checkouts, start Redis and Airflow, and wait until the DAG is parsed."""
        if self.queues and shutil.which("redis-server") is None:
            raise ConfigError(Path("redis-server"), "is not installed: the CeleryExecutor's broker is Debian's Redis",
                              "run `make celery-setup` (apt-get install redis-server) as root")
        self.root.mkdir(parents=True, exist_ok=True)
        git_clone(self.origin, self.branch, self.control)
        for checkout in self.workers.values():
            checkout.parent.mkdir(parents=True, exist_ok=True)
            git_clone(self.origin, self.branch, checkout)
        self.home.mkdir(parents=True, exist_ok=True)
        if self.redis_port:
            self._spawn("redis", ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no"], os.environ.copy(), self.root)
        env = self.control_env
        if self.db_template is not None:  # a migrated DB of this Airflow version: a copy skips the migration
            shutil.copy2(self.db_template, self.home / "airflow.db")
        else:
            self._airflow("db", "migrate", env=env)
        # The pools the DAG names (orchestration.dvc_pool, orchestration.tasks.*.pool), in one CLI call.
        cfg = load_params(self.control / "params.yaml").orchestration
        pools_file = self.home / "pools.json"
        pools_file.write_text(json.dumps({name: {"slots": slots, "description": DESCRIPTIONS.get(name, DAG_ID),
                                                 "include_deferred": False} for name, slots in pools(cfg).items()}))
        self._airflow("pools", "import", str(pools_file), env=env)
        self._spawn("api-server", [sys.executable, "-m", "airflow", "api-server", "--port", str(self.api_port)],
                    env, self.control)
        self._spawn("dag-processor", [sys.executable, "-m", "airflow", "dag-processor"], env, self.control)
        self._spawn("scheduler", [sys.executable, "-m", "airflow", "scheduler"], env, self.control)
        if self.triggerer if self.triggerer is not None else cfg.trigger_on_batch:
            self._spawn("triggerer", [sys.executable, "-m", "airflow", "triggerer"], env, self.control)
        for q in self.queues:
            self.start_worker(q)
        self.wait_for(lambda: self._query("select count(*) from dag where dag_id=?", DAG_ID)[0][0] == 1, 180,
                      "the DAG to be parsed")
        self.wait_for(self.api_answers, 120, "the API server to answer")
        return self

    def api_answers(self) -> bool:
        """Whether the API server answers `GET /api/v2/version`."""
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/api/v2/version", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def start_worker(self, queue: str) -> subprocess.Popen:
        """(Re)start the Celery worker of `queue` in its checkout."""
        return self._spawn(f"worker-{queue}", [sys.executable, "-m", "airflow", "celery", "worker", "--queues", queue,
                                               "--concurrency", "1", "--celery-hostname", f"{queue}@%h"],
                           self.worker_env(queue), self.workers[queue])

    def kill(self, name: str) -> None:
        """SIGKILL a process and every process below it, as a machine that dies would. Airflow's supervisor
        starts each task runner in a session of its own, so the process group alone would leave them running."""
        import psutil

        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        parent = psutil.Process(proc.pid)
        # Children first, found while their parent is alive: once orphaned, nothing ties them to the worker.
        tree = parent.children(recursive=True)
        parent.send_signal(signal.SIGKILL)
        for child in tree:
            try:
                child.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        proc.wait(timeout=30)
        psutil.wait_procs(tree, timeout=30)

    def stop(self) -> None:
        """Stop everything this stack started, with every process below them: SIGTERM, then SIGKILL after 20 s."""
        import psutil

        below = []
        for proc in self.procs.values():
            try:
                below += psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        for proc in list(self.procs.values()):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 20
        for name, proc in list(self.procs.items()):
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                self.kill(name)
        self.procs.clear()
        for child in psutil.wait_procs(below, timeout=max(0.1, deadline - time.time()))[1]:
            child.kill()  # a task runner in its own session that outlived its worker

    def __enter__(self) -> AirflowStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- runs ---------------------------------------------------------------------------------------------
    def _query(self, sql: str, *args) -> list[tuple]:
        db = self.home / "airflow.db"
        if not db.is_file():
            return [(0,)]
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql, args).fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return [(0,)]
        finally:
            con.close()

    def wait_for(self, condition, timeout: float, what: str, every: float = 1.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if condition():
                return
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"waiting for {what}: {dead} exited; see {self.root / 'logs'}")
            time.sleep(every)
        raise TimeoutError(f"waited {timeout:.0f}s for {what}; logs in {self.root / 'logs'}")

    def trigger(self) -> str:
        """Start a DAG run; returns its run id."""
        run_id = f"manual__{time.strftime('%Y%m%dT%H%M%S')}_{secrets.token_hex(3)}"
        self._airflow("dags", "trigger", DAG_ID, "--run-id", run_id, env=self.control_env)
        return run_id

    def runs(self) -> list[dict]:
        """Every run of the DAG, oldest first: {run_id, run_type (manual, scheduled, asset_triggered), state}."""
        rows = self._query("select run_id, run_type, state from dag_run where dag_id=? order by id", DAG_ID)
        return [{"run_id": r[0], "run_type": r[1], "state": r[2]} for r in rows if len(r) == 3]

    def run_state(self, run_id: str) -> str | None:
        rows = self._query("select state from dag_run where dag_id=? and run_id=?", DAG_ID, run_id)
        return rows[0][0] if rows and rows[0] and rows[0][0] != 0 else None

    def task_instances(self, run_id: str) -> dict[str, dict]:
        """task id -> {state, queue, hostname, try_number} as the metadata DB records them."""
        rows = self._query("select task_id, state, queue, hostname, try_number from task_instance "
                           "where dag_id=? and run_id=?", DAG_ID, run_id)
        return {r[0]: {"state": r[1], "queue": r[2], "hostname": r[3], "try_number": r[4]} for r in rows if len(r) == 5}

    def durations(self, run_id: str) -> dict[str, float]:
        """Seconds from start to end of the run (key `run`) and of each task instance that ran, as the
        metadata DB records them."""
        from datetime import datetime

        def seconds(start, end) -> float | None:
            if not start or not end:
                return None
            return round((datetime.fromisoformat(str(end)) - datetime.fromisoformat(str(start))).total_seconds(), 1)

        out = {}
        for start, end in self._query("select start_date, end_date from dag_run where dag_id=? and run_id=?",
                                      DAG_ID, run_id)[:1]:
            out["run"] = seconds(start, end)
        for task, start, end in self._query("select task_id, start_date, end_date from task_instance "
                                            "where dag_id=? and run_id=?", DAG_ID, run_id):
            if (s := seconds(start, end)) is not None:
                out[task] = s
        return out

    def wait_run(self, run_id: str, timeout: float = 1800) -> str:
        """Wait until the run ends; returns its final state (success or failed)."""
        self.wait_for(lambda: self.run_state(run_id) in ("success", "failed"), timeout, f"run {run_id}", every=2.0)
        return self.run_state(run_id)


@stage_main("stack")
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["up"])
    ap.add_argument("root", type=Path, help="a new folder for the checkouts, Airflow's home and the logs")
    ap.add_argument("--origin", required=True, help="the git repository (URL or path) every checkout clones")
    ap.add_argument("--branch", default="pipeline", help="orchestration.exchange.git_branch")
    ap.add_argument("--queue", action="append", dest="queues", help="one Celery worker per queue "
                                                                    "(default: default and gpu)")
    ap.add_argument("--executor", choices=["CeleryExecutor", "LocalExecutor"], default="CeleryExecutor")
    ap.add_argument("--unpause", action="store_true", help="schedule the DAG at once: with the cron schedule of "
                                                           "params.yaml, Airflow runs the last interval right away")
    args = ap.parse_args(argv)
    stack = AirflowStack(args.root, args.origin, args.branch, args.executor, tuple(args.queues or ("default", "gpu")),
                         unpaused=args.unpause)

    def stop_once(signum, frame):
        # Ctrl-C, or SIGTERM from a service manager (or `timeout`): leave through the `with`, which stops
        # everything. A second signal while it does (a double Ctrl-C) must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop_once)
    signal.signal(signal.SIGTERM, stop_once)
    with stack:
        print(f"Airflow API and UI: http://127.0.0.1:{stack.api_port}  (login in {stack.home})")
        for q, checkout in stack.workers.items():
            print(f"worker {q}: {checkout}")
        env_file = stack.root / "airflow.env"  # the CLI's view of this deployment, for `airflow ...` by hand
        env_file.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(stack.control_env.items())
                                    if k.startswith("AIRFLOW")))
        print(f"airflow CLI: set -a; . {env_file}; set +a")
        if not args.unpause:
            print(f"the DAG is paused: `airflow dags unpause {DAG_ID}` schedules it, and with a cron schedule the "
                  "last interval runs at once; a run triggered while it is paused waits, queued")
        print(f"logs: {stack.root / 'logs'}; Ctrl-C stops everything")
        try:
            while all(p.poll() is None for p in stack.procs.values()):
                time.sleep(2)
            print("a process exited; stopping:", [n for n, p in stack.procs.items() if p.poll() is not None])
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
