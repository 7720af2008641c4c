"""Rebuild whichever model a checkpoint holds, from the checkpoint alone.

The one list of model classes. It sits here, in the lowest layer that sees them all (components/models/
below, LLM-SRec beside it), so that no model module has to know of the others: adding a model is one
entry in `MODELS`. A class reads and checks its own files (`Recommender.load`).
"""

from __future__ import annotations

from pathlib import Path

from components.errors import CheckpointError
from components.llm.model import LLMSRec
from components.models.base import CONFIG, Recommender, read_checkpoint_json
from components.models.popularity import Popularity
from components.models.sasrec import SASRec

#: checkpoint `model` name -> the class that rebuilds it
MODELS: dict[str, type[Recommender]] = {cls.name: cls for cls in (Popularity, SASRec, LLMSRec)}


def load_checkpoint(directory: Path, **backbone_kwargs) -> Recommender:
    """Rebuild whichever model a checkpoint holds, from the checkpoint alone; `backbone_kwargs` (`device`,
    `dtype`) go to the model's `load` (see `Recommender.load`). Raises CheckpointError naming config.json
    when it is missing, not a JSON object or names an unknown model, and whatever the model's `load` raises
    for its other files."""
    config_path = Path(directory) / CONFIG
    meta = read_checkpoint_json(config_path, "point at a directory written by a training stage (it holds config.json)")
    if not isinstance(meta, dict):
        raise CheckpointError(config_path, f"unknown checkpoint format (a JSON {type(meta).__name__}, not an object)",
                              "retrain the model with this version of the pipeline")
    name = meta.get("model")
    cls = MODELS.get(name)
    if cls is None:  # each model's own load() checks the rest of its files
        raise CheckpointError(config_path, f"unknown model {name!r}",
                              f"use one of {sorted(MODELS)} or install the package that defines it")
    return cls.load(directory, **backbone_kwargs)
