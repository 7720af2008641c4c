"""Stage `gate`: decide whether the model that `evaluate` just scored may replace production.

Reads `reports/metrics.json`, `reports/per_user.parquet`, the prepared data, the registry's production
pointer and params `gate`, `seed` and `llm` (the device and dtype the champion is loaded with, as `evaluate`
loads the challenger). Writes `reports/gate.json`:

    {"decision": "promoted" | "provisional" | "rejected", "reason": str,
     "reasons": {"failed_checks": [name], "nothing_in_production": bool, "first_model_policy": gate.first_model,
                 "production_before": tag | null},
     "passed": bool, "model": "llmsrec", "champion": tag | null,
     "checks": {name: {value, threshold, passed, ...}}}

and `--checks reports/gate_checks.json`, its numbers alone, for `dvc metrics diff --targets
reports/gate_checks.json` (the headline DVC metric, `report`'s, carries only `gate_passed`): `{"passed": bool, "checks": {name: {"passed": bool, "value": float | null,
"threshold": float | null}}}`. The report is a plain output: DVC's metrics drop strings and lists from a
table, and the decision's reason, tags and names are not numbers.

The gate owns the release decision (`decide`): `package`, the Airflow DAG and the registry's history only
read it (components/serving/decision.py). Every check passed -> `promoted`. A check failed -> `rejected`,
except for the very first model (nothing in production) under `gate.first_model: provisional`, which is
released `provisional`, so that `bentoml serve` has something to serve after the first run.

Checks (every threshold configurable; `null` skips a check, and it is reported as skipped):
- `ndcg@10_floor`: the model's test NDCG@10 >= `gate.min_ndcg_at_10`.
- `lift_over_popularity`: NDCG@10 / popularity's NDCG@10 - 1 >= `gate.min_lift_over_popularity`, judged on
  the lower end of the 95% paired-bootstrap interval over the test users (components/evaluation/paired.py),
  so a lucky sample cannot pass it; the point value and the interval are both in the report.
- `shuffle_drop`: the relative NDCG@10 drop when each test history is shuffled >= `gate.min_shuffle_drop`
  (the paper's finding as a release criterion: a model that does not care about order is not LLM-SRec).
- `champion_regression`: the production model (from BentoML's store, if any) is re-scored now on the
  *current* test candidates; the challenger's NDCG@10 on the same users must not be lower than the
  champion's by more than `gate.max_regression` (relative). The same paired comparison decides: the check
  fails only when the whole 95% interval of the relative change lies below `-gate.max_regression`, so an
  unlucky sample of users cannot reject a model that is as good as production. How the champion treats items it never
  saw is in components/serving/packaged.py: unknown history items dropped, unknown candidates -inf,
  no known history -> popularity. With no production model yet the check passes (nothing to regress from).

Failing is a normal outcome: the stage exits 0 with `passed: false`. A rejection is logged in the
registry's history here, the one place that logs it; `package` then leaves production alone, and the DAG
skips it. `gate.json` records a hash of the metrics it judged and the production model it judged against,
so `package` can refuse a stale decision.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import GateParams, LLMParams, load_params
from components.data.sequences import Prepared
from components.errors import DataError, stage_main
from components.evaluation.metrics import candidate_ranks, ndcg_at
from components.evaluation.paired import paired_by_user, paired_comparison
from components.io import metrics_digest, read_json, write_json
from components.serving.packaged import PackagedModel
from components.serving.registry import get_model, log_event, production_tag
from components.timings import write_timings


def check(name: str, value: float | None, threshold: float | None, passed: bool | None = None,
          **extra) -> dict[str, Any]:
    """One check; a null threshold means the check is switched off (it passes, marked skipped).

    `passed` decides a check whose relative value is undefined (a baseline of 0): value is then None.
    """
    if threshold is None:
        return {"name": name, "value": value, "threshold": None, "passed": True, "skipped": True, **extra}
    ok = passed if passed is not None else value is not None and bool(np.isfinite(value)) and value >= threshold
    return {"name": name, "value": None if value is None else round(float(value), 6),
            "threshold": threshold, "passed": bool(ok), **extra}


def by_name(checks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The checks keyed by name, as the report holds them (`checks.<name>.passed` is then a path that DVC,
    jq and a reader can address; a list is dropped by DVC's metrics)."""
    return {c["name"]: {k: v for k, v in c.items() if k != "name"} for c in checks}


def check_numbers(checks: list[dict[str, Any]], passed: bool) -> dict[str, Any]:
    """The DVC metric of the gate: whether it passed, and each check's passed, value and threshold."""
    return {"passed": passed, "checks": {c["name"]: {"passed": c["passed"], "value": c["value"],
                                                      "threshold": c["threshold"]} for c in checks}}


def _metric(metrics: dict, key: str, path: Path, fix: str) -> dict:
    if key not in metrics or "ndcg@10" not in metrics[key]:
        raise DataError(path, f"has no '{key}' entry with ndcg@10", fix)
    return metrics[key]


def floor_checks(metrics: dict[str, Any], opts: GateParams, path: Path = Path("reports/metrics.json"),
                 per_user: pd.DataFrame | None = None) -> list[dict]:
    """The checks on the evaluated model alone: floor, lift over popularity, shuffle drop. With `per_user`
    (evaluate's per-user table), the lift is judged on its paired interval's lower end."""
    name = opts.model
    m = _metric(metrics, name, path, f"add {name} to evaluate.models, or set gate.model to a model it evaluates")
    ndcg = float(m["ndcg@10"])
    checks = [check("ndcg@10_floor", ndcg, opts.min_ndcg_at_10)]
    if opts.min_lift_over_popularity is None:
        checks.append(check("lift_over_popularity", None, None))
    else:
        pop = float(_metric(metrics, "popularity", path,
                            "add popularity to evaluate.models, or set gate.min_lift_over_popularity: null")["ndcg@10"])
        # With popularity at 0 a relative lift is undefined: any positive NDCG@10 beats it.
        lift, beats = (ndcg / pop - 1, None) if pop > 0 else (None, ndcg > 0)
        extra: dict[str, Any] = {}
        if per_user is not None and pop > 0:
            comp = paired(per_user, name, "popularity")
            low = comp["ratio_ci"][0]
            extra = {"interval": _relative(comp["ratio_ci"]), "comparison": comp,
                     "decided_on": "point value (no finite interval)"}
            if low is not None:
                beats = low - 1 >= opts.min_lift_over_popularity
                extra["decided_on"] = "interval lower end"
        checks.append(check("lift_over_popularity", lift, opts.min_lift_over_popularity, passed=beats,
                            ndcg=ndcg, popularity_ndcg=pop, **extra))
    if opts.min_shuffle_drop is None:
        checks.append(check("shuffle_drop", None, None))
    else:
        shuffled = _metric(metrics, f"{name}_shuffled", path,
                           f"add {name} to evaluate.shuffle, or set gate.min_shuffle_drop: null")
        drop = (shuffled.get("shuffle_drop") or {}).get("ndcg@10")
        if drop is None:  # an original NDCG@10 of 0 has no relative drop; order cannot matter to it
            drop = 0.0
        checks.append(check("shuffle_drop", drop, opts.min_shuffle_drop, shuffled_ndcg=shuffled["ndcg@10"]))
    return checks


def _relative(ratio_ci: list[float | None]) -> list[float | None]:
    """A ratio interval as relative changes (ratio - 1); an open end stays None."""
    return [None if r is None else round(r - 1, 6) for r in ratio_ci]


def paired(per_user: pd.DataFrame, model: str, reference: str) -> dict[str, Any]:
    """`model` against `reference` on NDCG@10 over the test users both were scored on (paired bootstrap)."""
    comp = paired_by_user(*(per_user[per_user["model"] == m].set_index("user_idx")["ndcg@10"] for m in (model, reference)))
    if comp is None:
        raise DataError("reports/per_user.parquet", f"has fewer than 2 test users scored by both {model} and "
                        f"{reference}", "re-run evaluate with both in evaluate.models (`dvc repro evaluate`)")
    return comp


def champion_check(champion, data, per_user: pd.DataFrame, opts: GateParams, seed: int) -> dict[str, Any]:
    """Re-score the production model on today's test candidates; compare on the same users."""
    cand = data.candidates["test"]
    users = cand.user_idx
    pick = np.arange(len(users))
    if opts.champion_users and opts.champion_users < len(users):
        pick = np.sort(np.random.default_rng(seed).choice(len(users), int(opts.champion_users), replace=False))
    rows = data.rows(users[pick])
    starts, ends = data.bounds("test", rows)
    ids = np.asarray(data.item_ids, dtype=object)
    histories = [list(zip(ids[data.flat_items[s:e] - 1].tolist(), data.flat_ts[s:e].tolist(), strict=True))
                 for s, e in zip(starts, ends, strict=True)]
    candidates = [ids[row - 1].tolist() for row in cand.items[pick]]
    scores = champion.candidate_scores(histories, candidates)  # [U, 1+K]
    per_user_champion = ndcg_at(candidate_ranks(scores).numpy(), 10)
    champ = round(float(per_user_champion.mean()), 6) if len(per_user_champion) else 0.0  # as summarize() gives it
    mine = per_user[per_user["model"] == opts.model].set_index("user_idx")
    missing = np.setdiff1d(users[pick], mine.index.to_numpy())
    if len(missing):
        raise DataError("reports/per_user.parquet", f"lacks {len(missing)} test users of {opts.model}",
                        "re-run evaluate on the current prepared data (`dvc repro evaluate`)")
    per_user_challenger = mine.loc[users[pick], "ndcg@10"].to_numpy()
    challenger = round(float(per_user_challenger.mean()), 6)
    # A champion at NDCG@10 0 has no relative change to measure: the challenger cannot be worse than it.
    change, not_worse = (challenger / champ - 1, None) if champ > 0 else (None, True)
    extra: dict[str, Any] = {}
    if champ > 0 and len(pick) >= 2:
        comp = paired_comparison(per_user_challenger, per_user_champion)
        high = comp["ratio_ci"][1]
        extra = {"interval": _relative(comp["ratio_ci"]), "comparison": comp,
                 "decided_on": "point value (no finite interval)"}
        if opts.max_regression is not None and high is not None:
            not_worse = high - 1 >= -float(opts.max_regression)  # fails only when the whole interval is below
            extra["decided_on"] = "interval upper end"
    unknown_pos = sum(c[0] not in champion.index for c in candidates)
    return check("champion_regression", change,
                 None if opts.max_regression is None else -float(opts.max_regression), passed=not_worse,
                 champion=champion.tag, champion_ndcg=champ, challenger_ndcg=challenger, n_users=int(len(pick)),
                 positives_unknown_to_champion=int(unknown_pos), **extra)


def load_champion(tag: str, llm: LLMParams):
    """The production model `tag` from BentoML's store, on `llm.device` in `llm.dtype` (as `evaluate` loads
    the challenger)."""
    model = get_model(tag)
    return PackagedModel.load(Path(model.path), str(model.tag), device=llm.device, dtype=llm.dtype)


def decide(checks: list[dict[str, Any]], production: str | None, first_model: str) -> dict[str, Any]:
    """The release decision on this run's `checks`, `production` being the registry's production tag when
    judged (None: nothing in production yet) and `first_model` the `gate.first_model` policy.

    Returns the report's `decision`, `reason` (one line) and `reasons` (components/serving/decision.py)."""
    failed = [c["name"] for c in checks if not c["passed"]]
    first = production is None
    if not failed:
        decision, reason = "promoted", "gate passed"
    elif first and first_model == "provisional":
        decision = "provisional"
        reason = f"gate failed: {', '.join(failed)} (first model: released as provisional until a model passes)"
    else:
        decision = "rejected"
        reason = f"gate failed: {', '.join(failed)}" + (" (first model: gate.first_model is reject)" if first else "")
    return {"decision": decision, "reason": reason,
            "reasons": {"failed_checks": failed, "nothing_in_production": first, "first_model_policy": first_model,
                        "production_before": production}}


@stage_main("gate")
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--metrics", type=Path, required=True, help="reports/metrics.json from evaluate")
    ap.add_argument("--per-user", type=Path, required=True, help="reports/per_user.parquet from evaluate")
    ap.add_argument("--prepared", type=Path, required=True, help="the current prepared data (its test candidates)")
    ap.add_argument("--out", type=Path, required=True, help="reports/gate.json")
    ap.add_argument("--checks", type=Path, help="reports/gate_checks.json: the checks' numbers alone (a DVC metric)")
    ap.add_argument("--timings", type=Path, help="run record (duration, host): not a DVC output")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    opts = params.gate
    t0 = time.time()
    if not args.metrics.is_file():
        raise DataError(args.metrics, "metrics file not found", "run `dvc repro evaluate` first")
    metrics = read_json(args.metrics)
    per_user = pd.read_parquet(args.per_user) if args.per_user.is_file() else None
    checks = floor_checks(metrics, opts, args.metrics, per_user)

    production = production_tag()  # the decision depends on it, whether or not the champion is re-scored
    champion = load_champion(production, params.llm) if opts.max_regression is not None and production else None
    if opts.max_regression is None:
        checks.append(check("champion_regression", None, None))
    elif champion is None:
        checks.append({"name": "champion_regression", "value": None, "threshold": -float(opts.max_regression),
                       "passed": True, "champion": None, "note": "no production model yet: nothing to regress from"})
    else:
        data = Prepared.load(args.prepared)
        if per_user is None:
            raise DataError(args.per_user, "per-user results not found", "run `dvc repro evaluate` first")
        checks.append(champion_check(champion, data, per_user, opts, params.seed))

    decision = decide(checks, production, opts.first_model)
    passed = not decision["reasons"]["failed_checks"]
    write_json(args.out, {**decision, "passed": passed, "model": opts.model,
                          "champion": champion.tag if champion else None,
                          "metrics_sha256": metrics_digest(args.metrics), "checks": by_name(checks)})
    if args.checks:
        write_json(args.checks, check_numbers(checks, passed))
    if decision["decision"] == "rejected":
        # The registry's history shows rejected runs next to promotions; under Airflow, which run it was.
        run = os.environ.get("AIRFLOW_CTX_DAG_RUN_ID")
        log_event("reject", None, f"airflow run {run}: {decision['reason']}" if run else decision["reason"])
    write_timings(args.timings, "gate", time.time() - t0)
    failed = [c for c in checks if not c["passed"]]
    print(f"gate: {decision['decision'].upper()} ({decision['reason']}) in {time.time() - t0:.1f}s"
          + ("".join(f"\n  failed {c['name']}: {c['value']} < {c['threshold']}" for c in failed)))


if __name__ == "__main__":
    main()
