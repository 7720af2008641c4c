"""Reading params.yaml. Each stage asks for its own section only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from components.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "params file not found", "run from the repository root or pass --params PATH")
    with path.open() as f:
        params = yaml.safe_load(f) or {}
    if not isinstance(params, dict):
        raise ConfigError(path, "top level is not a mapping", "restore params.yaml from git")
    return params


def section(params: dict[str, Any], name: str, path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    if name not in params or not isinstance(params[name], dict):
        raise ConfigError(path, f"missing section '{name}'", f"add a '{name}:' section (see the README)")
    return params[name]
