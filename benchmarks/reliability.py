"""Reliability benchmark (not CI): a real `bentoml serve` under load, with malformed requests mixed in.

    python -m benchmarks.reliability [--home $BENTOML_HOME | --tiny-llm] [--requests 1000] [--concurrency 16] \\
        [--bad-fraction 0.1] [--threads 1] --out benchmarks/results/reliability/reliability_cpu.json
    python -m benchmarks.reliability --render benchmarks/results/reliability/reliability_cpu.json

Starts the server as the serving benchmark does (benchmarks/serving.py: the production model of the
BentoML home, or `--tiny-llm`'s fixture package on a 2-layer random LLM), then sends `--requests` POSTs
to /recommend from `--concurrency` clients. A `--bad-fraction` of them is malformed, spread evenly over
KINDS (bad JSON, a body that is not an object, wrong types, k out of range, missing or unknown fields,
both or neither of history/user_id, bad history entries, bad timestamps, a history over the body limit,
a wrong Content-Type, an unknown user, bytes that are not UTF-8, a history of item ids the catalogue does
not know) and placed at seeded random positions among the good ones (real users' last 10 items with their
dates, as the serving benchmark sends, and some `user_id` requests). One more kind is not an error by the
service's contract (docs/serving.md): an empty history is answered 200 with the popularity fallback, and
is checked for exactly that.

Records (JSON at `--out`, a table on stdout):
- 5xx responses (target 0) and transport errors, i.e. dropped connections or timeouts (target 0);
- good requests: how many got a 200 with items, p50/p95/p99 latency, throughput of the whole run;
- per kind: requests sent, status codes seen, one example message, whether every one got what the
  contract promises (a 4xx with a non-empty `error`, or the flagged fallback) and whether its status is
  the documented one;
- whether the server still answered /readyz afterwards, and how many tracebacks its log holds.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.serving import Server, payloads_from, percentiles, server_env, with_served_model
from components.serving.settings import ServingSettings

REPO = Path(__file__).resolve().parents[1]
JSON = {"content-type": "application/json"}


@dataclass
class Catalogue:
    """What the requests are made of, read from the served package's files (no LLM loaded here)."""

    item_ids: list[str]  # idx 1..N -> item_id
    user_ids: list[str]
    sequences: Any  # pandas DataFrame: items, timestamps (what benchmarks.serving.payloads_from reads)

    @classmethod
    def of(cls, package: Path) -> Catalogue:
        import pandas as pd

        from components.serving.integrity import CATALOGUE_DIR

        items = pd.read_parquet(package / CATALOGUE_DIR / "items.parquet").sort_values("idx")
        users = pd.read_parquet(package / CATALOGUE_DIR / "users.parquet")
        return cls(items["item_id"].astype(str).tolist(), users["user_id"].astype(str).tolist(),
                   pd.read_parquet(package / CATALOGUE_DIR / "sequences.parquet"))


@dataclass
class Request:
    kind: str  # "good" or a key of KINDS
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))


def _history(cat: Catalogue, rng: np.random.Generator, n: int = 5) -> list[str]:
    return [cat.item_ids[int(i)] for i in rng.choice(len(cat.item_ids), n)]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _over_the_limit(cat: Catalogue) -> list[str]:
    """The whole catalogue, repeated until the JSON list is ~1.2x the service's body limit (the server
    started from this environment reads the same LLMSREC_MAX_BODY_BYTES)."""
    per_copy = sum(len(x) + 4 for x in cat.item_ids)  # '"id", ' in JSON
    return cat.item_ids * (int(1.2 * ServingSettings.from_env().max_body_bytes / max(1, per_copy)) + 1)


# kind -> (what the contract promises: a 4xx status or "fallback", a builder of one request's body and headers).
# Each builder cycles through variants with `i`, the kind's own request counter, so a run covers them all.
KINDS: dict[str, tuple[int | str, Any]] = {
    "bad_json": (400, lambda cat, rng, i: (
        [b'{"history": ["I1", ', b"{history: [1]}", b'{"k": 10,}', b"\x00"][i % 4], JSON)),
    "not_an_object": (422, lambda cat, rng, i: ([_dumps(_history(cat, rng)), b"null", b'"I1"', b"42"][i % 4], JSON)),
    "wrong_types": (422, lambda cat, rng, i: (_dumps([
        {"history": _history(cat, rng), "k": "10"}, {"history": _history(cat, rng), "exclude_seen": "no"},
        {"history": "I00001"}, {"user_id": 12345}, {"history": _history(cat, rng), "k": 2.0}][i % 5]), JSON)),
    "k_out_of_range": (422, lambda cat, rng, i: (_dumps({"history": _history(cat, rng), "k": [0, 101, -3, 10**9][i % 4]}),
                                                 JSON)),
    "missing_fields": (422, lambda cat, rng, i: ([b"{}", b"", _dumps({"k": 5}), _dumps({"exclude_seen": False})][i % 4],
                                                 JSON)),
    "history_and_user_id": (422, lambda cat, rng, i: (_dumps({"history": _history(cat, rng),
                                                              "user_id": cat.user_ids[0]}), JSON)),
    "unknown_field": (422, lambda cat, rng, i: (_dumps([
        {"history": _history(cat, rng), "exclude_seem": False}, {"history": _history(cat, rng), "top_k": 5},
        {"history": [{"item_id": cat.item_ids[0], "time": 1650000000}]}][i % 3]), JSON)),
    "bad_history_entry": (422, lambda cat, rng, i: (_dumps({"history": [
        [None], [["I00001"]], [""], [{"timestamp": 1650000000}], [True], ["x" * 300]][i % 6]}), JSON)),
    "bad_timestamp": (422, lambda cat, rng, i: (_dumps({"history": [cat.item_ids[0], {
        "item_id": cat.item_ids[1], "timestamp": [-5, 1_650_000_000_000, 10**40, "2024-01-01", 1.5, True,
                                                  32_503_680_001][i % 7]}]}), JSON)),
    "huge_history": (413, lambda cat, rng, i: (_dumps({"history": _over_the_limit(cat)}), JSON)),
    "wrong_content_type": (415, lambda cat, rng, i: (_dumps({"history": _history(cat, rng)}), {"content-type": [
        "text/plain", "application/x-www-form-urlencoded", "application/xml"][i % 3]})),
    "unknown_user": (404, lambda cat, rng, i: (_dumps({"user_id": f"no-such-user-{i}"}), JSON)),
    "not_utf8": (400, lambda cat, rng, i: (b"\xff\xfe" + bytes(rng.integers(128, 256, 64, dtype=np.uint8)), JSON)),
    # none of the history known: refused, not answered with popularity as if it were a recommendation for it
    "unknown_items": (422, lambda cat, rng, i: (_dumps({"history": [f"NOPE-{i}-{j}" for j in range(5)]}), JSON)),
    # not an error by contract: answered 200, flagged as the popularity fallback
    "empty_history": ("fallback", lambda cat, rng, i: (_dumps({"history": []}), JSON)),
}


def plan(cat: Catalogue, n: int, bad_fraction: float, seed: int = 0) -> list[Request]:
    """`n` requests, round(n * bad_fraction) of them malformed, kinds in turn (so each gets an equal share,
    +-1), at seeded random positions. Good ones: real users' histories (benchmarks.serving.payloads_from),
    every fifth a known user_id instead."""
    rng = np.random.default_rng(seed)
    n_bad = min(n, round(n * bad_fraction))
    kinds, seen = list(KINDS), Counter()
    bad = []
    for j in range(n_bad):
        kind = kinds[j % len(kinds)]
        body, headers = KINDS[kind][1](cat, rng, seen[kind])
        seen[kind] += 1
        bad.append(Request(kind, body, dict(headers)))
    good = [Request("good", _dumps({"user_id": cat.user_ids[int(rng.integers(len(cat.user_ids)))], "k": 10})
                    if j % 5 == 4 else _dumps(p))
            for j, p in enumerate(payloads_from(cat, n - n_bad, seed=seed) if n > n_bad else [])]
    out = good + bad
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def send(client, url: str, req: Request) -> dict[str, Any]:
    """One POST /recommend: {kind, status (None: transport error), seconds, message, fallback, items}."""
    import httpx

    t0 = time.perf_counter()
    try:
        r = client.post(f"{url}/recommend", content=req.body, headers=req.headers, timeout=300)
    except httpx.HTTPError as e:
        return {"kind": req.kind, "status": None, "seconds": time.perf_counter() - t0, "message": repr(e)[:300]}
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"kind": req.kind, "status": r.status_code, "seconds": seconds, "message": ""}
    try:
        body = r.json()
    except ValueError:
        out["message"] = r.text[:300]
        return out
    if isinstance(body, dict):
        out["message"] = str(body.get("error") or "")[:300]
        out["fallback"], out["items"] = body.get("fallback"), len(body.get("items") or [])
    else:
        out["message"] = str(body)[:300]
    return out


def answered_as_promised(kind: str, rec: dict[str, Any]) -> bool:
    """A bad request got what the contract promises: a 4xx with a message, or the flagged fallback."""
    expect = KINDS[kind][0]
    if expect == "fallback":
        return rec["status"] == 200 and rec.get("fallback") == "popularity"
    return rec["status"] is not None and 400 <= rec["status"] < 500 and bool(rec["message"].strip())


def summarise(records: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The result of one run from its per-request records (see `send`)."""
    good = [r for r in records if r["kind"] == "good"]
    ok_good = [r for r in good if r["status"] == 200 and r.get("items")]
    not_ok = [r for r in good if not (r["status"] == 200 and r.get("items"))]
    kinds = {}
    for kind in KINDS:
        recs = [r for r in records if r["kind"] == kind]
        if not recs:
            continue
        expect = KINDS[kind][0]
        kinds[kind] = {"n": len(recs), "expect": expect,
                       "statuses": dict(sorted(Counter(str(r["status"]) for r in recs).items())),
                       "example": next((r["message"] for r in recs if r["message"]), ""),
                       "ok": all(answered_as_promised(kind, r) for r in recs),
                       "documented": all(r["status"] == (200 if expect == "fallback" else expect) for r in recs)}
    five = sum(1 for r in records if r["status"] is not None and r["status"] >= 500)
    transport = sum(1 for r in records if r["status"] is None)
    bad_ok = all(k["ok"] for k in kinds.values())
    return {
        "requests": len(records), "seconds": round(seconds, 2), "throughput_rps": round(len(records) / seconds, 2),
        "status_5xx": five, "transport_errors": transport,
        # latency of the good requests answered 200 (percentiles' own `n` is `ok`)
        "good": {**(percentiles([r["seconds"] for r in ok_good]) if ok_good else {}),
                 "n": len(good), "ok": len(ok_good), "not_ok": len(not_ok),
                 "not_ok_samples": [f"{r['status']}: {r['message'][:160]}" for r in not_ok[:3]]},
        "samples_5xx": [f"{r['kind']} {r['status']}: {r['message'][:160]}" for r in records
                        if r["status"] is not None and r["status"] >= 500][:5],
        "bad": {"n": sum(k["n"] for k in kinds.values()), "kinds": kinds},
        "targets": {"no_5xx": {"value": five, "target": "== 0", "met": five == 0},
                    "no_transport_errors": {"value": transport, "target": "== 0", "met": transport == 0},
                    "bad_answered_as_promised": {"value": sum(k["ok"] for k in kinds.values()),
                                                 "target": f"== {len(kinds)} kinds", "met": bad_ok},
                    "good_all_200": {"value": len(ok_good), "target": f"== {len(good)}", "met": len(ok_good) == len(good)}},
    }


def fire(url: str, requests: list[Request], concurrency: int) -> tuple[list[dict[str, Any]], float]:
    """Every request from `concurrency` clients; the records in plan order and the wall time."""
    import httpx

    with httpx.Client(limits=httpx.Limits(max_connections=concurrency)) as client:
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(concurrency) as pool:
            records = list(pool.map(lambda r: send(client, url, r), requests))
        return records, time.perf_counter() - t0


def render(report: dict[str, Any]) -> str:
    """The result as a table (stdout, and `reliability_lines` for docs/benchmarks.md)."""
    return "\n".join(_table(report))


def _table(report: dict[str, Any]) -> list[str]:
    g = report["good"]
    latency = f"p50 {g['p50_ms']} ms, p95 {g['p95_ms']} ms, p99 {g['p99_ms']} ms" if "p50_ms" in g else "no latency"
    lines = [f"{report['requests']} requests at concurrency {report['concurrency']} against {report['model']} "
             f"({'tiny random LLM' if report.get('tiny_llm') else report.get('llm', '?')}), "
             f"{report['bad']['n']} malformed: **{report['status_5xx']} 5xx**, {report['transport_errors']} transport "
             f"errors, server {'still ready' if report.get('server_alive_after') else 'NOT ready'} afterwards "
             f"({report.get('server_log_tracebacks', '?')} tracebacks in its log). Good requests: {g['ok']}/{g['n']} "
             f"answered 200, {latency}; {report['throughput_rps']} req/s overall.", "",
             "| kind | sent | contract | statuses seen | as promised | example message |", "|---|---:|---|---|---|---|"]
    for kind, k in report["bad"]["kinds"].items():
        contract = "200 + fallback" if k["expect"] == "fallback" else str(k["expect"])
        seen = ", ".join(f"{s} x{n}" for s, n in k["statuses"].items())
        verdict = ("yes" if k["documented"] else "yes (4xx, not the documented code)") if k["ok"] else "**NO**"
        example = k["example"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {kind} | {k['n']} | {contract} | {seen} | {verdict} | {example[:140]}"
                     f"{'...' if len(example) > 140 else ''} |")
    m = report.get("machine", {})
    lines += ["", f"{m.get('cpus', '?')} CPUs, {report.get('threads', '?')} torch thread(s), load average "
                  f"{(m.get('loadavg_before') or ['?'])[0]} before / {(m.get('loadavg_after') or ['?'])[0]} after. "
                  "Targets: " + "; ".join(f"{k} {t['value']} ({t['target']}: {'met' if t['met'] else 'NOT met'})"
                                          for k, t in report["targets"].items()) + "."]
    return lines


def reliability_lines(paths: list[Path]) -> list[str]:
    """docs/benchmarks.md's reliability section: one table per result file (`python -m benchmarks.report`)."""
    lines = []
    for path in (p for p in paths if p.is_file()):
        report = json.loads(path.read_text())
        lines += [f"### {path.name}", "", f"`{report.get('command', 'python -m benchmarks.reliability')}`", "",
                  *_table(report), ""]
    if not lines:
        return []
    return ["## Reliability (`python -m benchmarks.reliability`)", "",
            "A real `bentoml serve` under load with malformed requests mixed in: nothing may answer 5xx, every "
            "malformed request gets a 4xx with a message (an empty history: the popularity fallback, by contract). "
            "Each kind's `contract` is the one it was run under: a history of only unknown items was answered "
            "with the fallback until issue 27, and is a 422 since.", "", *lines]


def run(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    import httpx

    from components.serving.registry import get_model, resolve_serving_tag

    home = os.environ.get("BENTOML_HOME")
    tag = resolve_serving_tag(home)  # what the server will serve: same store, same rule
    package = Path(get_model(tag, home).path)
    llm = json.loads((package / "package.json").read_text()).get("backbone", {}).get("name")
    cat = Catalogue.of(package)
    requests = plan(cat, args.requests, args.bad_fraction, args.seed)
    warm = plan(cat, min(args.requests, 4 * args.concurrency), 0.0, args.seed + 1)
    load_before = os.getloadavg()
    log = Path(tempfile.gettempdir()) / "reliability_serve.log"
    server = Server({**server_env(args.threads), "LLMSREC_BATCHING": "1"}, log)
    try:
        print(f"starting bentoml serve for {tag} (log {log}) ...", flush=True)
        ready = server.wait_ready()
        print(f"ready after {ready:.1f}s; warm-up ({len(warm)} good requests), then {len(requests)} requests "
              f"({sum(r.kind != 'good' for r in requests)} malformed) at concurrency {args.concurrency}", flush=True)
        fire(server.url, warm, args.concurrency)  # the first passes pay one-off costs; not timed
        records, seconds = fire(server.url, requests, args.concurrency)
        try:
            alive = httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
        except httpx.HTTPError:
            alive = False
    finally:
        server.stop()
    report = {"model": tag, "llm": llm, "tiny_llm": args.tiny_llm, "concurrency": args.concurrency,
              "bad_fraction": args.bad_fraction, "threads": args.threads, "seed": args.seed,
              **summarise(records, seconds), "server_alive_after": alive,
              "server_log_tracebacks": log.read_text(errors="replace").count("Traceback (most recent call last)"),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "loadavg_before": [round(x, 2) for x in load_before],
                          "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
              "command": "python -m benchmarks.reliability " + " ".join(argv if argv is not None else sys.argv[1:])}
    report["targets"]["server_alive_after"] = {"value": alive, "target": "true", "met": alive}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))
    print(f"-> {args.out}")
    return report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", help="BentoML home holding the production model (default: $BENTOML_HOME or ~/bentoml)")
    ap.add_argument("--tiny-llm", action="store_true", help="serve a fixture model on a 2-layer random LLM (built in "
                    "a temporary BentoML home): the serving stack's reliability without the real model's cost")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--bad-fraction", type=float, default=0.1, help="share of malformed requests (spread over KINDS)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server's scorer")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "reliability" / "reliability_cpu.json")
    ap.add_argument("--render", type=Path, metavar="RESULT_JSON", help="print a result's table and exit")
    args = ap.parse_args(argv)
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return
    if args.requests < 1 or args.concurrency < 1 or not 0 <= args.bad_fraction <= 1:
        ap.error("--requests and --concurrency must be >= 1, --bad-fraction within [0, 1]")
    report: dict[str, Any] = {}
    with_served_model(ap, args, lambda: report.update(run(args, argv)))
    if not all(t["met"] for t in report["targets"].values()):
        raise SystemExit(1)  # a benchmark that found a 5xx or a bad answer says so in its exit status too


if __name__ == "__main__":
    main()
