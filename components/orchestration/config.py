"""The `orchestration:` section of params.yaml, with defaults, checked once when the DAG is parsed."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from components.errors import ConfigError
from components.params import load_params

DEFAULTS: dict[str, Any] = {
    "schedule": "0 3 * * *",
    "trigger_on_batch": True,
    "start_date": "2025-01-01",
    "retries": 2,
    "retry_delay_seconds": 60,
    "max_retry_delay_seconds": 1800,
    "dvc_pool": "dvc",
    "tasks": {},
    "warm_start": "champion",
    "gate_report": "reports/gate.json",
    "notify_callback": None,
    "serving_reload_command": None,
}
LANDING_DEFAULTS: dict[str, Any] = {
    "incoming": "data/incoming",
    "store": "data/batches",
    "landing": "data/landing",
    "ready_file": "_READY",
    "poll_seconds": 30,
    "settle_seconds": 5,
}
WARM_START = ("champion", "previous", "none")
TASK_KEYS = {"queue", "pool", "pool_slots", "retries", "execution_timeout_minutes", "gpus"}


def load_config(params_path: Path) -> dict[str, Any]:
    """The merged, checked section. Unknown keys are errors: a typo must not silently do nothing."""
    params = load_params(params_path)
    raw = params.get("orchestration") or {}
    where = f"{params_path}: orchestration"
    if not isinstance(raw, dict):
        raise ConfigError(where, "is not a mapping", "see the orchestration section in the README")
    if unknown := sorted(set(raw) - set(DEFAULTS) - {"landing"}):
        raise ConfigError(where, f"unknown keys {unknown}", f"use only {sorted([*DEFAULTS, 'landing'])}")
    landing = raw.get("landing") or {}
    if unknown := sorted(set(landing) - set(LANDING_DEFAULTS)):
        raise ConfigError(f"{where}.landing", f"unknown keys {unknown}", f"use only {sorted(LANDING_DEFAULTS)}")
    cfg = {**DEFAULTS, **raw, "landing": {**LANDING_DEFAULTS, **landing}}
    if cfg["warm_start"] not in WARM_START:
        raise ConfigError(f"{where}.warm_start", f"'{cfg['warm_start']}' is unknown", f"use one of {WARM_START}")
    for stage, opts in (cfg["tasks"] or {}).items():
        if not isinstance(opts, dict) or (unknown := sorted(set(opts) - TASK_KEYS)):
            raise ConfigError(f"{where}.tasks.{stage}", "must be a mapping of task settings",
                              f"use only {sorted(TASK_KEYS)}, e.g. {{queue: gpu, pool: gpu}}")
    if cfg["schedule"] is not None:
        from croniter import croniter

        if not croniter.is_valid(str(cfg["schedule"])):
            raise ConfigError(f"{where}.schedule", f"'{cfg['schedule']}' is not a cron expression",
                              "use five cron fields in UTC, e.g. '0 3 * * *', or null")
    for key in ("retries", "retry_delay_seconds", "max_retry_delay_seconds"):
        if not isinstance(cfg[key], int) or cfg[key] < 0:
            raise ConfigError(f"{where}.{key}", f"{cfg[key]!r} is not a whole number >= 0", "set a number")
    cfg["start_date"] = start_date(cfg["start_date"], where)
    if cfg["notify_callback"] is not None and ":" not in str(cfg["notify_callback"]):
        raise ConfigError(f"{where}.notify_callback", f"'{cfg['notify_callback']}' names no function",
                          "write it as 'package.module:function'")
    return cfg


def start_date(value: Any, where: str) -> dt.datetime:
    """A timezone-aware UTC datetime (YAML may already have parsed the date)."""
    if isinstance(value, dt.datetime):
        d = value
    elif isinstance(value, dt.date):
        d = dt.datetime(value.year, value.month, value.day)
    else:
        try:
            d = dt.datetime.fromisoformat(str(value))
        except ValueError:
            raise ConfigError(f"{where}.start_date", f"'{value}' is not a date", "write it as YYYY-MM-DD") from None
    return d.replace(tzinfo=dt.UTC) if d.tzinfo is None else d.astimezone(dt.UTC)
