"""Data sources. Each turns its raw format into the canonical (interactions, items) frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from components.errors import ConfigError

SOURCES = ("synthetic", "movielens", "amazon2023", "files")


def load_source(cfg: dict[str, Any], seed: int, cache_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the source named by params `data.source`; return canonical (interactions, items)."""
    name = cfg.get("source", "synthetic")
    if name == "synthetic":
        from components.data.sources.synthetic import SyntheticConfig, generate

        return generate(SyntheticConfig(**(cfg.get("synthetic") or {})), seed=seed)
    if name == "movielens":
        from components.data.sources.movielens import load_movielens

        return load_movielens(_local(cfg, cache_dir, name))
    if name == "amazon2023":
        from components.data.sources.amazon import load_amazon

        return load_amazon(cfg, cache_dir)
    if name == "files":
        from components.data.sources.files import load_files

        if not cfg.get("path"):
            raise ConfigError("params.yaml", "data.source is 'files' but data.path is empty",
                              "set data.path to a directory with interactions.* and items.*")
        return load_files(Path(cfg["path"]), cfg.get("columns") or {}, cfg.get("timestamp_unit", "s"))
    raise ConfigError("params.yaml", f"unknown data.source '{name}'", f"use one of {', '.join(SOURCES)}")


def _local(cfg: dict[str, Any], cache_dir: Path, name: str) -> Path:
    """A local path for the source: data.path if given, else data.url downloaded into the cache."""
    if cfg.get("path"):
        return Path(cfg["path"])
    if cfg.get("url"):
        from components.data.download import fetch

        return fetch(cfg["url"], cache_dir, cfg.get("sha256"))
    raise ConfigError("params.yaml", f"data.source is '{name}' but neither data.path nor data.url is set",
                      "set data.path to the local files, or data.url to download them")
