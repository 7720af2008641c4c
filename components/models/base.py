"""The one recommender interface: every model (popularity, SASRec, LLM-SRec) implements it.

The trainer, the evaluator and the service hold a `Recommender` and call only what is defined
here; none of them asks which model it is. A model reads a user's history as `Histories` and trains on
`Batch`es (components/data/histories.py: right-aligned item idx, dates, users).

A checkpoint is a directory: `model.safetensors` (weights/buffers), `config.json` (which model, its
config, the item count and the item-mapping hash of the data it was trained on) and `item_ids.json`
(the item_id of each idx 1..N, so a warm start can match items by id across two mappings).

Loading a checkpoint never ends in a torch, safetensors or JSON traceback: a missing, truncated or
garbled file, or weights whose shapes differ from the config, is a `CheckpointError` naming the file
and the fix (`read_checkpoint_json`, `read_weights`, `check_shapes`). Each model class loads its own
checkpoints (`SASRec.load`); a checkpoint of any model loads with components/llm/checkpoints.py, which
imports every model class.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from components.data.histories import Batch, Histories
from components.errors import CheckpointError, DataError, PipelineError
from components.io import JSON_DAMAGE, write_json

FORMAT_VERSION = 1
WEIGHTS, CONFIG, ITEM_IDS = "model.safetensors", "config.json", "item_ids.json"


class Recommender(nn.Module, ABC):
    """Scores items for users. Item idx 0 is padding and never recommended."""

    #: the `model` of its checkpoints' config.json: which class rebuilds them
    name: ClassVar[str] = "recommender"
    #: negatives per position the trainer must sample into `Batch.negatives` (0: none)
    num_negatives: int = 0
    #: how many most recent history items the model reads (None: all)
    max_history: int | None = None
    #: how many of the most recent items the shuffle diagnostic permutes (None = the whole `max_history`):
    #: the items whose order the model is meant to read, so shuffling never changes which items it sees
    shuffle_len: int | None = None
    #: Adam's betas for this model's training: its reference implementation's, not a knob
    adam_betas: ClassVar[tuple[float, float]] = (0.9, 0.999)

    def __init__(self, item_ids: list[str], item_mapping_hash: str):
        super().__init__()
        self.item_ids = list(item_ids)
        self.item_mapping_hash = item_mapping_hash

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    # -- the interface -----------------------------------------------------------------------
    @abstractmethod
    def loss(self, batch: Batch) -> Tensor:
        """Scalar training loss for a batch."""

    @abstractmethod
    def score_all(self, histories: Histories) -> Tensor:
        """[B, N+1] scores over the whole catalogue; column 0 (padding) is -inf."""

    def score_candidates(self, histories: Histories, candidates: Tensor) -> Tensor:
        """[B, C] scores of the given item idx [B, C]. Models with a cheaper path override this."""
        return self.score_all(histories).gather(1, candidates)  # [B, C]

    @abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """JSON-able config that `from_config` turns back into an identical (untrained) model."""

    @classmethod
    @abstractmethod
    def from_config(cls, config: dict[str, Any], item_ids: list[str], item_mapping_hash: str) -> Recommender:
        ...

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS))
        write_json(directory / ITEM_IDS, self.item_ids)
        write_json(directory / CONFIG, {
            "format_version": FORMAT_VERSION, "model": self.name, "config": self.config_dict(),
            "num_items": self.num_items, "item_mapping_hash": self.item_mapping_hash,
        })
        return directory

    @classmethod
    def load(cls, directory: Path, **backbone_kwargs) -> Recommender:
        """Rebuild the model from its checkpoint directory alone. Raises CheckpointError (naming the file)
        when a file is missing or damaged or the weights do not fit the config.

        `backbone_kwargs` (`device`, `dtype`: params `llm`) are for models built on an LLM backbone, which
        load it with them; a model without one has nothing to place and ignores them."""
        directory = Path(directory)
        meta, item_ids = read_checkpoint_meta(directory)
        if meta["model"] != cls.name:
            raise CheckpointError(directory, f"holds a '{meta['model']}' checkpoint, not '{cls.name}'",
                                  f"point at a {cls.name} checkpoint, or load it with "
                                  "components.llm.checkpoints.load_checkpoint")
        try:
            model = cls.from_config(meta["config"], item_ids, meta["item_mapping_hash"])
        except (TypeError, ValueError, KeyError, PipelineError) as e:  # unknown keys, bad values (config.check)
            why = e.problem if isinstance(e, PipelineError) else f"{type(e).__name__}: {e}"
            raise CheckpointError(directory / CONFIG, f"its config does not build a {cls.name} model ({why})",
                                  RETRAIN) from None
        weights = read_weights(directory / WEIGHTS)
        check_shapes(directory / WEIGHTS, weights, model.state_dict(), RETRAIN)
        model.load_state_dict(weights)
        model.eval()
        return model

    def check_data(self, num_items: int, item_mapping_hash: str, data: str | Path, fix: str) -> None:
        """Refuse data whose item index differs from the one the model was trained on.

        A different mapping would not fail loudly (idx are just numbers); scores would silently
        belong to other items. So the count and the mapping hash must both match.
        """
        if num_items != self.num_items or item_mapping_hash != self.item_mapping_hash:
            raise DataError(data, f"the {self.name} model was trained on {self.num_items} items (mapping "
                                  f"{self.item_mapping_hash}) but this data has {num_items} items (mapping "
                                  f"{item_mapping_hash})", fix)


RETRAIN = "the checkpoint is damaged or from another version: retrain it (or restore it from DVC: `dvc checkout`)"


def read_checkpoint_json(path: Path, fix: str = RETRAIN) -> Any:
    """A checkpoint's JSON file, decoded. CheckpointError when it is missing, unreadable or not JSON
    (truncated, garbage bytes): never a JSONDecodeError from deep inside a load."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(path, "checkpoint file not found", fix) from None
    except JSON_DAMAGE as e:
        raise CheckpointError(path, f"is not valid JSON ({type(e).__name__}: {str(e)[:120]}); the file is "
                                    "damaged (truncated or overwritten)", fix) from None


def read_weights(path: Path, fix: str = RETRAIN) -> dict[str, Tensor]:
    """A safetensors file as {name: tensor} on the CPU. CheckpointError when it is missing, truncated or not
    a safetensors file (safetensors checks that the header covers the whole file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint file not found", fix)
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors' SafetensorError (not importable by a stable name), OSError
        raise CheckpointError(path, f"is not a readable safetensors file ({str(e)[:160]}); it is truncated or "
                                    "damaged", fix) from None


def check_shapes(path: Path, weights: dict[str, Tensor], expected: dict[str, Tensor], fix: str = RETRAIN) -> None:
    """Refuse weights that would not load into `expected` (a state_dict): names missing or unexpected, or
    shapes that differ (e.g. a checkpoint of another catalogue size or width swapped in)."""
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointError(path, f"weights do not match the config (missing {missing[:3]}, unexpected "
                                    f"{unexpected[:3]})", fix)
    wrong = [f"{k} {list(weights[k].shape)} (the config needs {list(v.shape)})" for k, v in expected.items()
             if tuple(weights[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(path, f"weights do not match the config: {'; '.join(wrong[:3])}"
                                    f"{f' and {len(wrong) - 3} more' if len(wrong) > 3 else ''}", fix)


def read_checkpoint_meta(directory: Path) -> tuple[dict[str, Any], list[str]]:
    """(config.json, item_ids.json) of a checkpoint directory, checked against each other."""
    directory = Path(directory)
    for name in (CONFIG, ITEM_IDS, WEIGHTS):
        if not (directory / name).is_file():
            raise CheckpointError(directory / name, "checkpoint file not found",
                                  "point at a directory written by a training stage (model.safetensors, config.json, "
                                  "item_ids.json)")
    meta = read_checkpoint_json(directory / CONFIG)
    item_ids = read_checkpoint_json(directory / ITEM_IDS)
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION or "model" not in meta:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise CheckpointError(directory / CONFIG, f"unknown checkpoint format {version!r}",
                              "retrain the model with this version of the pipeline")
    missing = [k for k in ("config", "num_items", "item_mapping_hash") if k not in meta]
    if missing or not isinstance(meta["config"], dict):
        raise CheckpointError(directory / CONFIG, f"not a complete checkpoint config (missing {missing or ['config']})",
                              RETRAIN)
    if not isinstance(item_ids, list) or not all(isinstance(i, str) for i in item_ids):
        raise CheckpointError(directory / ITEM_IDS, "is not a list of item id strings", RETRAIN)
    if len(item_ids) != meta["num_items"]:
        raise CheckpointError(directory / ITEM_IDS, f"{len(item_ids)} item ids for {meta['num_items']} items",
                              "the checkpoint is damaged: retrain it")
    return meta, item_ids


def neg_inf_padding(scores: Tensor) -> Tensor:
    """Column 0 is the padding idx: never a recommendation."""
    scores[:, 0] = -torch.inf  # [B, N+1]
    return scores


def match_items(old_ids: list[str], new_ids: list[str]) -> tuple[Tensor, Tensor]:
    """Item idx (1-based) in the new and the old mapping of every item_id present in both.

    Two index mappings of different data disagree on idx but agree on item_id: a warm start copies
    row old[i] of an embedding table to row new[i].
    """
    import pandas as pd

    pos = pd.Index(old_ids).get_indexer(pd.Index(new_ids))  # [N_new], -1 where the item is new
    new = torch.from_numpy((pos >= 0).nonzero()[0] + 1)
    return new, torch.from_numpy(pos[pos >= 0] + 1)
