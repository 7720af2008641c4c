"""Data sources. Each turns its raw format into the canonical (interactions, items) frames."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from components.config import DataParams
from components.data.download import fetch
from components.data.sources.amazon import load_amazon
from components.data.sources.files import load_files
from components.data.sources.movielens import load_movielens
from components.data.sources.synthetic import generate
from components.errors import ConfigError


def load_source(cfg: DataParams, seed: int, cache_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the source named by params `data.source`; return canonical (interactions, items)."""
    name = cfg.source
    if name == "synthetic":
        return generate(cfg.synthetic, seed=seed)
    if name == "movielens":
        return load_movielens(_local(cfg, cache_dir, name))
    if name == "amazon2023":
        return load_amazon(cfg, cache_dir)
    if name == "files":
        if not cfg.path:
            raise ConfigError("params.yaml", "data.source is 'files' but data.path is empty",
                              "set data.path to a directory with interactions.* and items.*")
        return load_files(Path(cfg.path), dict(cfg.columns), cfg.timestamp_unit)
    raise AssertionError(f"data.source {name!r} passed DataParams but has no reader")  # DataSource lists the readers


def _local(cfg: DataParams, cache_dir: Path, name: str) -> Path:
    """A local path for the source: data.path if given, else data.url downloaded into the cache."""
    if cfg.path:
        return Path(cfg.path)
    if cfg.url:
        return fetch(cfg.url, cache_dir, cfg.sha256)
    raise ConfigError("params.yaml", f"data.source is '{name}' but neither data.path nor data.url is set",
                      "set data.path to the local files, or data.url to download them")
