"""`distill` in two training processes (gloo on CPU) through dvc.yaml's own command, on a tiny local Llama.

Three runs of the stage, shared by the tests: one process to the end; two processes whose rank 1 is killed
with -9 mid-run, then rerun to the end (the rounds before the kill are an uninterrupted two-process run's,
the end is where a resumed one ends; one run fewer than a separate uninterrupted two-process run). A Python audit hook (`sitecustomize`, loaded by every process of the
stage) records each file a process creates, opens for writing, renames or removes under the workspace and
the title-state cache, with the process's rank.

Tolerance of "the same curve". Both runs take the same steps on the same batches with the same negatives
and dropout masks; what differs is the order of float sums (each process pads its share of a prompt batch
to its own length, and the gradient is a sum of two partial ones). Measured on this setup: the loss of a
validation round agrees to 7e-7 (relative) at the first round and 4e-5 after 24 Adam steps, the adapters
to 3e-4 (relative norm), and every NDCG@10 is equal. The bounds below leave a wide margin over that and
still catch a wrong step: without the gradient sum (each process stepping on its own share) the first
round's loss is 60% off and NDCG@10 moves by 0.15; splitting the batch's loss instead (in-batch negatives
of one's own share only) changes the objective itself.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.model.conftest import stage_argv, stage_outs, subprocess_env

STEPS = 24  # a validation every 5 steps (eval_every 0.02 of 248): 5 rounds
LOSS_RTOL = 1e-3
NDCG_ATOL = 0.02  # ~ one of the 24 validation users' positive moving one place at the top (0.37 / 24)
ADAPTERS_RTOL = 1e-2  # relative norm of the difference
KILL_AFTER = 10  # steps saved in the resume state before rank 1 is killed

AUDIT = '''
import os, sys, json

_dir = os.environ.get("DISTILL_AUDIT_DIR")
if _dir:
    _roots = tuple(os.path.realpath(r) for r in os.environ["DISTILL_AUDIT_ROOTS"].split(os.pathsep))
    _log = open(os.path.join(_dir, f"{os.getpid()}.jsonl"), "a", buffering=1)  # before the hook: not recorded
    _who = os.environ.get("RANK", "unranked")  # the stage's own process: one process, or the launcher
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    _EVENTS = {"os.rename": (0, 1), "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "shutil.rmtree": (0,),
               "os.truncate": (0,), "os.link": (0, 1), "os.symlink": (1,)}

    def _under(path):
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, (str, os.PathLike)):
            return None
        path = os.path.realpath(os.fspath(path))
        return path if path.startswith(_roots) else None

    def _hook(event, args):
        if event == "open":
            paths = (args[0],) if args[2] & _WRITE or (args[1] and any(c in args[1] for c in "wax+")) else ()
        else:
            paths = tuple(args[i] for i in _EVENTS.get(event, ()))
        for p in paths:
            hit = _under(p)
            if hit:
                _log.write(json.dumps({"who": _who, "pid": os.getpid(), "event": event, "path": hit}) + "\\n")

    sys.addaudithook(_hook)
'''


def _state_step(root: Path) -> int:
    return max((json.loads(p.read_text())["progress"]["step"] for p in root.glob("*/state.json")), default=0)


def _workspace(root: Path, prepared_dir, teacher, llm_dir, processes: int) -> Path:
    ws = root / f"ws-{processes}"
    shutil.copytree(prepared_dir, ws / "data" / "prepared")
    teacher.save(ws / "models" / "sasrec")
    # The default's coupled parts, at a tiny size: shared negatives across the batch, the uniformity term,
    # title states with cf_dropout (masks drawn for the whole batch), targets at every position.
    params = {"seed": 11, "llm": {"backbone": str(llm_dir), "device": "cpu", "dtype": "fp32", "num_layers": None},
              "distill": {"batch_size": 6, "lr": 0.001, "epochs": 1, "max_steps": STEPS, "max_minutes": None,
                          "eval_every": 0.02, "valid_users": 24, "patience": 100, "eval_batch_size": 5,
                          "item_batch_size": 16, "num_processes": processes, "process_timeout_minutes": 2}}
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    return ws


def _env(ws: Path, audit: Path) -> dict[str, str]:
    env = subprocess_env()
    hook = ws.parent / "audit_hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(textwrap.dedent(AUDIT))
    audit.mkdir(parents=True, exist_ok=True)
    cache = ws / "cache"  # the title-state cache, cold: rank 0 computes it, rank 1 must only read it
    env.update(PYTHONPATH=f"{hook}{os.pathsep}{env['PYTHONPATH']}", LLMSREC_CACHE=str(cache),
               DISTILL_AUDIT_DIR=str(audit), DISTILL_AUDIT_ROOTS=os.pathsep.join([str(ws), str(cache)]))
    return env


def _run(ws: Path, audit: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(stage_argv("distill"), cwd=ws, env=_env(ws, audit), capture_output=True, text=True,
                          timeout=timeout)


def _rank_pid(launcher: psutil.Process, rank: str) -> int | None:
    for child in launcher.children(recursive=True):
        try:
            if child.environ().get("RANK") == rank:
                return child.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prepared_dir, teacher, tiny_llama_dir) -> dict:
    """One process to the end; two processes whose rank 1 is killed with -9 after KILL_AFTER steps, then
    rerun (as DVC would: outputs removed first) to the end."""
    root = tmp_path_factory.mktemp("distill_processes")
    one = _workspace(root / "one", prepared_dir, teacher, tiny_llama_dir, 1)
    two = _workspace(root / "two", prepared_dir, teacher, tiny_llama_dir, 2)
    out = {"one": one, "two": two, "audit": {"one": root / "one" / "audit", "two": root / "two" / "audit"}}
    out["one_proc"] = _run(one, out["audit"]["one"])

    state_root = two / "models" / ".resume" / "distill"
    proc = subprocess.Popen(stage_argv("distill"), cwd=two, env=_env(two, out["audit"]["two"]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    launcher, deadline, victim, survivor = psutil.Process(proc.pid), time.time() + 240, None, None
    while proc.poll() is None and time.time() < deadline:
        if _state_step(state_root) >= KILL_AFTER:  # polling the state file: the condition itself
            victim, survivor = _rank_pid(launcher, "1"), _rank_pid(launcher, "0")
            break
        time.sleep(0.02)
    assert victim is not None, f"no rank 1 to kill at step {_state_step(state_root)} (exit {proc.poll()})"
    # Before the kill, every round in the state is an uninterrupted two-process run's.
    out["before_kill"] = json.loads(next(state_root.glob("*/state.json")).read_text())["progress"]["curve"]
    os.kill(victim, signal.SIGKILL)
    t_kill = time.time()
    stdout, stderr = proc.communicate(timeout=120)
    out.update(killed_rc=proc.returncode, killed_after=time.time() - t_kill, killed_stderr=stderr,
               killed_stdout=stdout, killed_step=_state_step(state_root), victim=victim,
               survivor_left=survivor is not None and psutil.pid_exists(survivor),
               killed_wrote_outputs=(two / "models" / "llmsrec" / "config.json").exists())
    for o in stage_outs("distill"):  # what DVC does before re-running the stage
        shutil.rmtree(two / o, ignore_errors=True)
    out["rerun_proc"] = _run(two, out["audit"]["two"])
    return out


def _read(ws: Path, name: str):
    return json.loads((ws / "reports" / name).read_text())


def _adapters_diff(a: Path, b: Path) -> float:
    """Relative norm of the difference of two runs' adapters."""
    x = load_file(str(a / "models" / "llmsrec" / "adapters.safetensors"))
    y = load_file(str(b / "models" / "llmsrec" / "adapters.safetensors"))
    assert x.keys() == y.keys()
    diff = sum(float((x[k] - y[k]).pow(2).sum()) for k in x) ** 0.5
    return diff / sum(float(x[k].pow(2).sum()) for k in x) ** 0.5


def _same_curve(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=LOSS_RTOL), (ra, rb)
        assert ra["valid_ndcg@10"] == pytest.approx(rb["valid_ndcg@10"], abs=NDCG_ATOL), (ra, rb)


def test_two_processes_follow_the_one_process_curve(runs):
    one, two = runs["one"], runs["two"]
    assert runs["one_proc"].returncode == 0, runs["one_proc"].stderr[-3000:]
    assert runs["rerun_proc"].returncode == 0, runs["rerun_proc"].stderr[-3000:]
    assert "starting 2 training processes" in runs["rerun_proc"].stdout
    assert "2 process(es)" in runs["rerun_proc"].stdout and "1 process(es)" in runs["one_proc"].stdout
    assert _read(two, "timings/distill.json")["processes"] == 2
    assert _read(one, "timings/distill.json")["processes"] == 1
    curve_one = _read(one, "distill_curve.json")
    assert len(curve_one) == 5
    before = runs["before_kill"]  # two processes, never interrupted up to here
    assert len(before) >= 2
    _same_curve(curve_one[: len(before)], before)
    _same_curve(curve_one, _read(two, "distill_curve.json"))  # and after the resume, to the end
    s1, s2 = _read(one, "distill_train.json"), _read(two, "distill_train.json")
    assert s1["steps"] == s2["steps"] == STEPS and s1["best_step"] == s2["best_step"]
    assert _adapters_diff(one, two) <= ADAPTERS_RTOL
    t1 = load_file(str(one / "models" / "llmsrec" / "item_table.safetensors"))["item_table"]
    t2 = load_file(str(two / "models" / "llmsrec" / "item_table.safetensors"))["item_table"]
    assert t1.shape == t2.shape and bool((t2[1:].abs().sum(1) > 0).all())  # every row, from one process or the other
    torch.testing.assert_close(t1, t2, atol=0.05, rtol=0.05)


def _writes(audit: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(audit.glob("*.jsonl")) for line in f.read_text().splitlines()]


def test_only_rank_0_writes_outputs_reports_state_and_cache(runs):
    assert runs["rerun_proc"].returncode == 0, runs["rerun_proc"].stderr[-3000:]
    writes = _writes(runs["audit"]["two"])  # the killed run and its rerun
    assert {w["who"] for w in writes} == {"0"}, sorted({(w["who"], w["event"], w["path"]) for w in writes
                                                        if w["who"] != "0"})[:10]
    paths = {w["path"] for w in writes}
    # The hook does see rank 0's writes: the outputs, the reports, the resume state, the title-state cache.
    for part in ("models/llmsrec", "reports/distill_train.json", "reports/distill_curve.png",
                 "models/.resume/distill", "cache/text_states"):
        assert any(part in p for p in paths), part
    assert len({w["pid"] for w in writes}) == 2  # rank 0 of the killed run, rank 0 of the rerun
    # One process, no launcher: the stage's own process writes.
    assert {w["who"] for w in _writes(runs["audit"]["one"])} == {"unranked"}


def test_a_rank_killed_with_9_fails_the_run_and_a_rerun_resumes(runs):
    # The launcher stops rank 0 and exits non-zero at once, saying which process died and how.
    assert runs["killed_rc"] != 0
    assert runs["killed_after"] < 60, f"the launcher took {runs['killed_after']:.0f}s to give up"
    assert not runs["survivor_left"]  # rank 0 was stopped with it, not left waiting on the dead peer
    err = runs["killed_stderr"]
    assert f"training process 1 of 2 (pid {runs['victim']}) ended with signal SIGKILL" in err, err[-3000:]
    assert "ERROR [distill]" not in err + runs["killed_stdout"]  # not an input error: Airflow retries it
    k = runs["killed_step"]
    assert KILL_AFTER <= k < STEPS
    assert not runs["killed_wrote_outputs"]

    rerun, ws = runs["rerun_proc"], runs["two"]
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "distill: resuming after epoch 0 step" in rerun.stdout
    assert _read(ws, "timings/distill.json")["resumed_from_step"] == k
    assert not list((ws / "models" / ".resume" / "distill").glob("*/state.json"))  # finished: state cleared
    # Where it ends is checked against one process in test_two_processes_follow_the_one_process_curve.
