"""Serving benchmark (not CI): a real `bentoml serve`, with and without adaptive batching, in one run.

    python -m benchmarks.serving [--home $BENTOML_HOME | --tiny-llm] [--threads 1] [--requests-c1 30] \\
        [--requests-c8 64] [--warmup 24] [--after-burst SECONDS] --out benchmarks/results/serving.json
    python -m benchmarks.serving --tiny-llm --out benchmarks/results/serving_tiny.json   # the serving stack alone
    python -m benchmarks.serving --render benchmarks/results/serving.json     # the table in docs/benchmarks.md

Needs a production model in the BentoML store (`make run` puts one there). Measures:
- latency p50/p95/p99 of POST /recommend at concurrency 1 and 8, and throughput at 8, for a server with
  adaptive batching (the default) and one started with LLMSREC_BATCHING=0 (SERVERS), one after the other;
- the bare LLM forward (the user prompt through the frozen LLM, no HTTP, no batching) for the same
  prompts, with the same torch thread count, in this process, interleaved with the c1 requests;
- the LLM pass over B = 1..16 prompts at once: what batching can gain at most on this machine;
- errors (any non-200);
- with `--after-burst`, c1 in 5-s windows right after the c8 load: whether lone requests are held after
  a burst (BentoML's own batcher held them for ~25 s; the scorer's has nothing to hold).
Requests replay real users' histories from the packaged data (their last 10 items, dated), k=10.
`overhead_ms` is what serving adds to one request at c1: its p50 latency minus the scorer's own model
time per call (from the scorer's /metrics), so it holds whatever the model costs on the machine.
`--tiny-llm` serves a model on a 2-layer random LLM instead (benchmarks/small_package.py, built by the real
gate and package stages in a temporary BentoML home): its pass takes milliseconds, so the latencies are
the serving stack's own (a 135M pass on a CPU, ~0.4 s, hides it). Its targets say nothing about the real
model.
Targets: p50 at c1 <= 1.3x the bare forward; batching >= 2x throughput at c8; 0 errors.
Result files of older runs also hold servers from modes since removed from the service (RETIRED); they are
rendered as recorded.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# The servers a run starts, each by the environment that sets it apart (results before 2026-11-27 have no
# "env", and their "batching" was BentoML's batcher). Both run the model where the scorer decides: on the
# event loop on CUDA, in a model thread on a CPU.
SERVERS = {"batching": {"LLMSREC_BATCHING": "1"}, "no_batching": {"LLMSREC_BATCHING": "0"}}
# Servers in older result files, from modes since removed from the service: shown as recorded.
RETIRED = {"batching_bentoml": "BentoML's own batcher (`batchable=True`, then LLMSREC_BATCHING=bentoml)",
           "batching_loop": "the scorer's batcher with the model forced onto the event loop (then "
                            "LLMSREC_SCORE_ON_LOOP=1, on a CPU)",
           "no_batching_loop": "no batching, the model forced onto the event loop (on a CPU)"}
SHOWN = (*SERVERS, *RETIRED)
# Each timed phase follows >= 50 requests and >= 6 s at its concurrency: what BentoML's batcher needed to
# settle (its last 50 batches, refreshed every 5 s), kept so that results stay comparable with older ones.
WARM_REQUESTS, WARM_SECONDS = 50, 6.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 1), "p95_ms": round(float(np.percentile(a, 95)), 1),
            "p99_ms": round(float(np.percentile(a, 99)), 1), "n": len(values)}


class Server:
    """`bentoml serve` from `cwd` (a checkout of this repository) on `port` (default: a free one); stopped
    (process group) on exit."""

    def __init__(self, env: dict[str, str], log: Path, cwd: Path = REPO, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port",
                                      str(self.port)], cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 600) -> float:
        import httpx

        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"bentoml serve exited {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.time() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"not ready after {timeout}s; see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is not None:  # exited on its own (a failed start): nothing to stop
            self.log.close()
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            # Nothing is in flight any more, so a graceful stop has nothing to finish. On an H200 worker the
            # entry service still took ~90 s to exit after SIGTERM (its scorer exited at once): a leased
            # GPU's minutes are better spent measuring.
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.log.close()


def post(client, url: str, payload: dict, errors: list[str]) -> float:
    """One POST /recommend; its latency in seconds. A non-200 or a short answer is an error."""
    import httpx

    t0 = time.perf_counter()
    try:
        r = client.post(f"{url}/recommend", json=payload, timeout=300)
        if not (r.status_code == 200 and len(r.json()["items"]) == payload["k"]):
            errors.append(f"{r.status_code}: {r.text[:200]}")
    except httpx.HTTPError as e:
        errors.append(repr(e))
    return time.perf_counter() - t0


def summary(concurrency: int, latencies: list[float], seconds: float, errors: list[str]) -> dict:
    """One timed phase: latency percentiles, throughput over `seconds`, errors and a few of them."""
    return {"concurrency": concurrency, **percentiles(latencies), "throughput_rps": round(len(latencies) / seconds, 3),
            "errors": len(errors), "error_samples": errors[:3]}


def load(url: str, payloads: list[dict], concurrency: int) -> dict:
    """Send every payload with `concurrency` clients; latency of each call, throughput of the whole."""
    import httpx

    errors: list[str] = []
    with httpx.Client(limits=httpx.Limits(max_connections=concurrency)) as client:
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(concurrency) as pool:
            latencies = list(pool.map(lambda p: post(client, url, p, errors), payloads))
        wall = time.perf_counter() - t0
    return summary(concurrency, latencies, wall, errors)


def scorer_stats(url: str) -> dict[str, float]:
    """The scorer's histograms from /metrics (components/serving/service.py): sums and counts so far."""
    import httpx

    keys = ("llmsrec_batch_size_sum", "llmsrec_batch_size_count", "llmsrec_model_seconds_sum")
    out = {k: 0.0 for k in keys}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        name, _, value = line.partition(" ")
        if name in out:
            out[name] += float(value)
    return out


def scorer_delta(before: dict[str, float], after: dict[str, float]) -> dict:
    """What the scorer saw between two scrapes: calls, mean batch size, model time per call."""
    calls = after["llmsrec_batch_size_count"] - before["llmsrec_batch_size_count"]
    if not calls:
        return {"calls": 0}
    return {"calls": int(calls),
            "mean_batch": round((after["llmsrec_batch_size_sum"] - before["llmsrec_batch_size_sum"]) / calls, 2),
            "model_ms_per_call": round(
                1000 * (after["llmsrec_model_seconds_sum"] - before["llmsrec_model_seconds_sum"]) / calls, 2)}


def warm_up(url: str, payloads: list[dict], concurrency: int, min_requests: int, min_seconds: float) -> None:
    """Serve at `concurrency` until both minimums are reached, so what follows is that load's steady state:
    the first passes' one-off costs paid, and the entry service's pooled connections to the scorer open
    (ones idle past the scorer's keep-alive are dropped and retried, a cost that belongs to no load)."""
    t0, sent = time.perf_counter(), 0
    while sent < min_requests or time.perf_counter() - t0 < min_seconds:
        load(url, payloads, concurrency)
        sent += len(payloads)


def c1_with_bare(url: str, model, payloads: list[dict]) -> tuple[dict, dict]:
    """Concurrency 1 and the bare forward, interleaved prompt by prompt (forward, then the same prompt over
    HTTP): both see the same machine state. On a GPU the forward is bound by Python launching kernels, so
    it drifts with the host's load by tens of percent between runs a minute apart; interleaving keeps
    the ratio a like-for-like comparison. c1 throughput is requests per second of request time."""
    import httpx

    errors: list[str] = []
    bare, latencies = [], []
    with httpx.Client() as client:
        for p in payloads:
            bare.append(timed_pass(model, histories(model, [p])))
            latencies.append(post(client, url, p, errors))
    return percentiles(bare), summary(1, latencies, sum(latencies), errors)


def after_burst(url: str, payloads: list[dict], seconds: float, window: float = 5.0) -> list[dict]:
    """c1 p50 in consecutive windows right after the c8 load: whether a batcher keeps holding lone requests
    once a burst is over. BentoML's did (`batching_bentoml` in older results: its learned wait, high under
    load, decayed by 5% per 5-s refresh); the scorer's own has no timer to hold them with
    (components/serving/batcher.py)."""
    import httpx

    out, t0, i = [], time.perf_counter(), 0
    with httpx.Client() as client:
        while (start := time.perf_counter() - t0) < seconds:
            latencies, errors = [], []
            while time.perf_counter() - t0 < start + window:
                latencies.append(post(client, url, payloads[i % len(payloads)], errors))
                i += 1
            out.append({"from_s": round(start, 1), **summary(1, latencies, sum(latencies), errors)})
    return out


def payloads_from(model, n: int, seed: int = 0) -> list[dict]:
    """Real users' last 10 items with their dates: the prompts the model was trained on."""
    rng = np.random.default_rng(seed)
    rows = [r for r in model.sequences.itertuples() if len(r.items) >= 10]
    out = []
    for i in rng.choice(len(rows), n, replace=n > len(rows)):
        r = rows[i]
        out.append({"history": [{"item_id": model.item_ids[int(j) - 1], "timestamp": int(t)}
                                for j, t in zip(r.items[-10:], r.timestamps[-10:], strict=True)], "k": 10})
    return out


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()  # GPU kernels run asynchronously: time them to completion


def histories(model, payloads: list[dict]):
    """The payloads' histories as the model reads them (right-aligned item and date tensors)."""
    rows = [model.resolve([(h["item_id"], h["timestamp"]) for h in p["history"]]) for p in payloads]
    return model._histories([r[0] for r in rows], [r[1] for r in rows])


def timed_pass(model, hist) -> float:
    """Seconds of one LLM pass (+ the injected vectors and f_user) over `hist`, to completion."""
    import torch

    with torch.no_grad():
        _sync()
        t0 = time.perf_counter()
        model.model.user_vectors(hist)
        _sync()
    return time.perf_counter() - t0


def bare_forward(model, payloads: list[dict], reps: int) -> dict:
    """The user prompt through the frozen LLM, one prompt at a time."""
    return percentiles([timed_pass(model, histories(model, [p])) for p in payloads[:reps]])


def forward_by_batch(model, payloads: list[dict], sizes: tuple[int, ...] = (1, 2, 4, 8, 16), reps: int = 10) -> dict:
    """Median time of one LLM pass over B prompts together, per B: the most batching can gain is
    B * t(1) / t(B) (on a CPU that is ~1: one prompt already fills the cores; on a GPU it is the point)."""
    out = {}
    for B in [b for b in sizes if b <= len(payloads)] or [1]:
        hist = histories(model, payloads[:B])
        timed_pass(model, hist)  # shapes seen once (allocator, kernels)
        t = float(np.median([timed_pass(model, hist) for _ in range(reps)]))
        out[str(B)] = {"ms": round(t * 1000, 2), "prompts_per_s": round(B / t, 1)}
    t1 = out["1"]["ms"]
    for B, r in out.items():
        r["ideal_gain"] = round(int(B) * t1 / r["ms"], 2)
    return out


def targets_of(results: dict) -> dict:
    """The serving targets from what was measured (a partial run has only the batching server)."""
    targets = {}
    if b := results.get("batching"):
        ratio = b["c1"]["p50_ms"] / b["bare_forward"]["p50_ms"]
        targets["p50_c1_over_bare"] = {"value": round(ratio, 3), "target": "<= 1.3", "met": ratio <= 1.3}
    if b and (nb := results.get("no_batching")):
        speedup = b["c8"]["throughput_rps"] / nb["c8"]["throughput_rps"]
        targets["batching_throughput_gain_c8"] = {"value": round(speedup, 3), "target": ">= 2.0",
                                                  "met": speedup >= 2.0}
    errors = sum(r[c]["errors"] for r in results.values() for c in ("c1", "c8"))
    targets["errors"] = {"value": errors, "target": "== 0", "met": errors == 0}
    return targets


def render(report: dict) -> str:
    """A result's table (docs/benchmarks.md), from its file (never typed by hand)."""
    rows = ["| server | bare forward p50 | c1 p50 / p95 / p99 | c1 serving overhead | c8 p50 / p95 / p99 | c8 throughput "
            "| errors |", "|---|---|---|---|---|---|---|"]
    for name in (n for n in SHOWN if n in report):
        r = report[name]
        overhead = f"{r['c1']['overhead_ms']} ms" if "overhead_ms" in r["c1"] else "n/a"
        rows.append(f"| {name.replace('_', ' ')} | {r['bare_forward']['p50_ms']} ms | {r['c1']['p50_ms']} / "
                    f"{r['c1']['p95_ms']} / {r['c1']['p99_ms']} ms | {overhead} | {r['c8']['p50_ms']} / {r['c8']['p95_ms']} / "
                    f"{r['c8']['p99_ms']} ms | {r['c8']['throughput_rps']} req/s | "
                    f"{r['c1']['errors'] + r['c8']['errors']} |")
    m = report["machine"]
    scorer = [f"{name.replace('_', ' ')} c{c}: mean batch {st['mean_batch']}, {st['model_ms_per_call']} ms model time per call"
              for name in SHOWN if name in report for c in ("1", "8")
              if (st := report[name][f"c{c}"].get("scorer", {})).get("calls")]
    if scorer:
        rows += ["", "Inside the scorer (from its /metrics): " + "; ".join(scorer) + "."]
    bursts = [f"{name.replace('_', ' ')}: " + ", ".join(f"{w['p50_ms']}" for w in report[name]["c1_after_c8"])
              for name in SHOWN if report.get(name, {}).get("c1_after_c8")]
    if bursts:
        rows += ["", "c1 p50 (ms) in 5-s windows right after the c8 load (`--after-burst`): " + "; ".join(bursts) + "."]
    if retired := [n for n in RETIRED if n in report]:
        rows += ["", "Kept as a record, from modes since removed from the service: " + "; ".join(
            f"{n.replace('_', ' ')}: {RETIRED[n]}" for n in retired) + "."]
    if predates_own_batcher(report):
        rows += ["", "Run before the scorer had its own batcher (2026-11-27): its batching servers used BentoML's."]
    if report.get("complete") is False:
        rows += ["", "Partial run: not every server asked for was measured; the targets cover what was."]
    if "forward_by_batch" in report:
        rows += ["", "LLM pass over B prompts at once: " + ", ".join(
            f"B={b} {r['ms']} ms" for b, r in report["forward_by_batch"].items()) + "."]
    if report.get("tiny_llm"):
        rows += ["", "Tiny random LLM (`--tiny-llm`): these latencies are the serving stack's, the targets say nothing "
                     "about the real model."]
    rows += ["", (f"{m['gpu']}, " if m.get("gpu") else "") + f"{m['cpus']} CPUs, {report['threads']} torch thread(s), {report['dtype']}, load average "
                 f"{m['loadavg_before'][0]} before / {m['loadavg_after'][0]} after (shared machine). Targets: " +
             "; ".join(f"{k} {t['value']} ({t['target']}: {'met' if t['met'] else 'not met'})"
                       for k, t in report["targets"].items()) + "."]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", help="BentoML home holding the production model (default: $BENTOML_HOME or ~/bentoml)")
    ap.add_argument("--tiny-llm", action="store_true", help="serve a fixture model on a 2-layer random LLM (built "
                    "in a temporary BentoML home): measures the serving stack, not the model")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, for the servers and the bare forward")
    ap.add_argument("--requests-c1", type=int, default=30)
    ap.add_argument("--requests-c8", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=24, help="distinct warm-up payloads (also the batch sweep's "
                    "prompts); each warm-up repeats them for >= 50 requests and >= 6 s")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serving.json")
    ap.add_argument("--after-burst", type=float, default=0.0, metavar="SECONDS",
                    help="after c8, time c1 for this long in 5-s windows (the batcher's hold after a burst)")
    ap.add_argument("--render", type=Path, metavar="RESULT_JSON", help="print the table of a result and exit")
    args = ap.parse_args(argv)
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return
    with_served_model(ap, args, lambda: run(args, argv))


def server_env(threads: int) -> dict[str, str]:
    """The environment every server starts from (SERVERS adds what sets each apart): `threads` torch threads
    and this repository importable."""
    return dict(os.environ, LLMSREC_TORCH_THREADS=str(threads),
                OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def predates_own_batcher(report: dict) -> bool:
    """A result from before the scorer had its own batcher (2026-11-27): its servers recorded no "env", and
    its batching servers used BentoML's batcher."""
    return any("env" not in report[name] for name in SHOWN if name in report)


def with_served_model(ap: argparse.ArgumentParser, args: argparse.Namespace, fn) -> None:
    """Call `fn()` with BENTOML_HOME on the model to serve: `--home` (or the environment's), or with
    `--tiny-llm` a tiny-LLM fixture package built in a temporary home that is removed afterwards."""
    if args.home and args.tiny_llm:
        ap.error("--home and --tiny-llm both pick the model to serve; give one")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    if not args.tiny_llm:
        if args.home:
            os.environ["BENTOML_HOME"] = str(Path(args.home).resolve())
        return fn()
    from benchmarks.small_package import tiny_home

    with tempfile.TemporaryDirectory(prefix="llmsrec-tiny-") as scratch:
        print("building the tiny-LLM fixture package (gate + package stages) ...", flush=True)
        os.environ["BENTOML_HOME"] = str(tiny_home(Path(scratch)))
        fn()


def run(args: argparse.Namespace, argv: list[str] | None) -> None:
    import torch

    from components.serving.packaged import PackagedModel
    from components.serving.registry import get_model, resolve_serving_tag

    torch.set_num_threads(args.threads)
    tag = resolve_serving_tag()
    stored = get_model(tag)
    model = PackagedModel.load(Path(stored.path), tag)
    warm = payloads_from(model, args.warmup, seed=1)
    c1 = payloads_from(model, args.requests_c1, seed=2)
    c8 = payloads_from(model, args.requests_c8, seed=3)
    bare_forward(model, warm, 3)  # first calls pay one-off costs
    dtype = str(model.model.backbone.dtype)

    env = server_env(args.threads)
    results: dict = {}
    by_batch = forward_by_batch(model, warm)
    print("LLM pass by batch size: " + ", ".join(f"B={b} {r['ms']} ms (ideal gain {r['ideal_gain']}x)"
                                                 for b, r in by_batch.items()))
    load_before = os.getloadavg()

    def build_report(results: dict) -> dict:
        return {
            "model": tag, "llm": model.model.backbone.name, "tiny_llm": args.tiny_llm, "threads": args.threads, "dtype": dtype, "device": str(model.model.backbone.device),
            "complete": all(n in results for n in SERVERS), "forward_by_batch": by_batch, **results, "targets": targets_of(results),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "torch": torch.__version__,
                        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                        "loadavg_before": [round(x, 2) for x in load_before],
                        "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
            "command": "python -m benchmarks.serving " + " ".join(argv if argv is not None else sys.argv[1:]),
        }

    for name in SERVERS:
        server = Server({**env, **SERVERS[name]}, Path(tempfile.gettempdir()) / f"serving_{name}.log")
        t_server = time.perf_counter()

        def step(what: str, name: str = name, t_server: float = t_server) -> None:
            """A server's run takes minutes: say where it is (and, cut short, where it stopped)."""
            print(f"  [{name} +{time.perf_counter() - t_server:.0f}s] {what}", flush=True)

        try:
            step(f"starting bentoml serve (log {server.log.name})")
            ready_s = server.wait_ready()
            step(f"ready after {ready_s:.1f}s; c1 warm-up")
            # A warm-up at each timed concurrency right before it is timed, identically for both servers
            # (see warm_up); c1 first, as older results did (BentoML's batcher held lone requests for a
            # while after a burst, which no c1 warm-up undid).
            warm_up(server.url, warm, 1, WARM_REQUESTS, WARM_SECONDS)
            step(f"c1: {len(c1)} requests, each after its bare forward")
            before = scorer_stats(server.url)
            bare, r_c1 = c1_with_bare(server.url, model, c1)
            r_c1["scorer"] = scorer_delta(before, scorer_stats(server.url))
            if r_c1["scorer"].get("calls"):
                r_c1["overhead_ms"] = round(r_c1["p50_ms"] - r_c1["scorer"]["model_ms_per_call"], 1)
            step("c8 warm-up")
            warm_up(server.url, warm, 8, WARM_REQUESTS, WARM_SECONDS)
            step(f"c8: {len(c8)} requests")
            before = scorer_stats(server.url)
            r_c8 = load(server.url, c8, 8)
            r_c8["scorer"] = scorer_delta(before, scorer_stats(server.url))
            results[name] = {"env": SERVERS[name], "ready_seconds": round(ready_s, 1), "bare_forward": bare,
                             "c1": r_c1, "c8": r_c8}
            if args.after_burst > 0:
                step(f"c1 for {args.after_burst:.0f}s after the burst")
                results[name]["c1_after_c8"] = after_burst(server.url, c1, args.after_burst)
        finally:
            step("stopping")
            server.stop()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        # Written after each server, so a run cut short (a leased GPU's time running out) keeps what it measured.
        args.out.write_text(json.dumps(build_report(results), indent=2) + "\n")
        r = results[name]
        print(f"{name}: bare forward p50 {bare['p50_ms']} ms ({dtype}, {args.threads} thread(s)) | "
              f"c1 p50 {r['c1']['p50_ms']} ms p95 {r['c1']['p95_ms']} p99 {r['c1']['p99_ms']} "
              f"(serving overhead {r['c1'].get('overhead_ms')} ms) | "
              f"c8 p50 {r['c8']['p50_ms']} ms p95 {r['c8']['p95_ms']} p99 {r['c8']['p99_ms']}, "
              f"{r['c8']['throughput_rps']} req/s | errors {r['c1']['errors'] + r['c8']['errors']} | scorer "
              f"c1 {r['c1'].get('scorer')} c8 {r['c8'].get('scorer')}")

    for k, t in targets_of(results).items():
        print(f"target {k}: {t['value']} ({t['target']}) {'met' if t['met'] else 'NOT met'}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
