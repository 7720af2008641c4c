"""The release decision as the `gate` stage records it in its report (`reports/gate.json`), and the one way
`package`, the Airflow DAG (components/orchestration/release.py) and the registry's history read it.

The gate alone decides (components/stages/gate.py `decide`); a reader takes the decision as written and
never derives it again from the checks, the registry or params, so no two readers can disagree:

    {"decision": "promoted" | "provisional" | "rejected",
     "reason": "gate failed: shuffle_drop (first model: released as provisional until a model passes)",
     "reasons": {"failed_checks": ["shuffle_drop"], "nothing_in_production": true,
                 "first_model_policy": "provisional", "production_before": null},
     "passed": false, "checks": {"shuffle_drop": {"passed": false, "value": ..., "threshold": ...}, ...}, ...}

- `promoted`: every check passed;
- `provisional`: a check failed, nothing was in production (`first_model`) and `gate.first_model` is
  `provisional`, so that `bentoml serve` has something to serve after the very first run;
- `rejected`: a check failed, and a model was in production (or `gate.first_model: reject`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

from components.config import FirstModel
from components.errors import DataError
from components.io import JSON_DAMAGE, read_json

DECISIONS = ("promoted", "provisional", "rejected")
FIRST_MODEL_POLICIES = get_args(FirstModel)
#: the fix for a report that holds no usable decision
REJUDGE = ("re-run the gate so that it decides: `dvc repro -f -s gate` (a report written before the gate "
           "recorded its decision, or edited by hand, has none)")


def read_decision(path: Path) -> dict[str, Any]:
    """The gate's report at `path`, its decision checked: `decision` one of DECISIONS, with its `reason`
    (one line), `reasons` (`failed_checks`: names, `nothing_in_production`: bool, `first_model_policy`: the
    `gate.first_model` it was judged under, `production_before`: tag or None),
    `passed` and `checks` consistent with it. Raises DataError naming `path`: missing (run the gate), not
    JSON, or no valid decision (re-run the gate)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "gate report not found", "run the gate first: `dvc repro gate`")
    try:
        report = read_json(path)
    except JSON_DAMAGE as e:
        raise DataError(path, f"is not a readable gate report ({type(e).__name__}: {e})", REJUDGE) from None
    decision = report.get("decision") if isinstance(report, dict) else None
    if decision not in DECISIONS:
        raise DataError(path, f"holds no release decision ('decision' is {decision!r}, not one of "
                              f"{', '.join(DECISIONS)})", REJUDGE)
    reasons, checks = report.get("reasons"), report.get("checks")
    failed = reasons.get("failed_checks") if isinstance(reasons, dict) else None
    if not (isinstance(failed, list) and isinstance(reasons.get("nothing_in_production"), bool)
            and reasons.get("first_model_policy") in FIRST_MODEL_POLICIES
            and "production_before" in reasons and isinstance(report.get("reason"), str)
            and isinstance(checks, dict) and all(isinstance(c, dict) and "passed" in c for c in checks.values())):
        raise DataError(path, f"has the decision '{decision}' without its reasons (reason, reasons.failed_checks, "
                              "reasons.nothing_in_production, reasons.first_model_policy, reasons.production_before, "
                              "checks by name)", REJUDGE)
    passed = not failed
    if report.get("passed") is not passed or (decision == "promoted") != passed \
            or (decision == "provisional" and not (reasons["nothing_in_production"]
                                                   and reasons["first_model_policy"] == "provisional")):
        raise DataError(path, f"has the decision '{decision}', which its reasons contradict (failed checks: "
                              f"{', '.join(map(str, failed)) or 'none'}; nothing in production: "
                              f"{reasons['nothing_in_production']}; gate.first_model: {reasons['first_model_policy']})",
                        REJUDGE)
    return report
