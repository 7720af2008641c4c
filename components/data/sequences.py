"""The prepared data (see components/stages/prepare.py) as flat arrays, and histories cut from it.

Every user's full chronological sequence is stored once, concatenated (`flat_items`, `flat_ts`)
with row offsets; a split's history is an index range into it, never a copy per user:

- train: items[:-2] (the model learns next-item prediction inside it)
- valid: history items[:-2], target items[-2]
- test:  history items[:-1] (training + the validation item, as in SASRec), target items[-1]
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components.data.histories import Histories
from components.errors import DataError
from components.io import read_json

HELD_OUT = {"train": 2, "valid": 2, "test": 1}  # items cut from the end of a sequence for each split's history
FIX = "run `dvc repro prepare` (or point --prepared at the prepare stage's output)"


@dataclass
class Candidates:
    user_idx: np.ndarray  # [E] user idx
    items: np.ndarray  # [E, 1+K] item idx, the positive first


@dataclass
class Prepared:
    item_ids: list[str]
    item_mapping_hash: str
    user_idx: np.ndarray  # [U] user idx of each row
    offsets: np.ndarray  # [U+1] row r's sequence is flat[offsets[r]:offsets[r+1]]
    flat_items: np.ndarray  # [I] int64 item idx
    flat_ts: np.ndarray  # [I] int64 Unix seconds
    candidates: dict[str, Candidates]
    source: Path

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @classmethod
    def load(cls, directory: Path) -> Prepared:
        directory = Path(directory)
        for name in ("items.parquet", "sequences.parquet", "candidates.parquet", "meta.json"):
            if not (directory / name).is_file():
                raise DataError(directory / name, "prepared file not found", FIX)
        items = pd.read_parquet(directory / "items.parquet", columns=["idx", "item_id"]).sort_values("idx")
        meta = read_json(directory / "meta.json")
        if not np.array_equal(items["idx"].to_numpy(), np.arange(1, len(items) + 1)):
            raise DataError(directory / "items.parquet", "item idx are not 1..N", FIX)
        if meta.get("items") != len(items):
            raise DataError(directory / "meta.json", f"says {meta.get('items')} items, items.parquet has {len(items)}",
                            FIX)
        seq = pd.read_parquet(directory / "sequences.parquet").sort_values("user_idx", kind="stable")
        lengths = seq["items"].map(len).to_numpy()
        if (lengths < 3).any():
            raise DataError(directory / "sequences.parquet", "a user has fewer than 3 items (train, valid, test)",
                            FIX)
        offsets = np.zeros(len(seq) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat_items = np.concatenate(seq["items"].to_numpy()).astype(np.int64)
        if flat_items.min() < 1 or flat_items.max() > len(items):
            raise DataError(directory / "sequences.parquet", f"item idx outside 1..{len(items)}", FIX)
        cand = pd.read_parquet(directory / "candidates.parquet")
        candidates = {}
        for split, frame in cand.groupby("split"):
            neg = np.stack(frame["negatives"].to_numpy()).astype(np.int64)  # [E, K]
            candidates[str(split)] = Candidates(
                frame["user_idx"].to_numpy().astype(np.int64),
                np.concatenate([frame["positive"].to_numpy().astype(np.int64)[:, None], neg], axis=1))
        return cls(item_ids=items["item_id"].astype(str).tolist(),
                   item_mapping_hash=str(meta["item_mapping_hash"]),
                   user_idx=seq["user_idx"].to_numpy().astype(np.int64), offsets=offsets, flat_items=flat_items,
                   flat_ts=np.concatenate(seq["timestamps"].to_numpy()).astype(np.int64),
                   candidates=candidates, source=directory)

    def fingerprint(self) -> str:
        """Hash of everything training sees: mapping, sequences, timestamps and validation candidates."""
        h = hashlib.sha256(self.item_mapping_hash.encode())
        for arr in (self.user_idx, self.offsets, self.flat_items, self.flat_ts):
            h.update(np.ascontiguousarray(arr).tobytes())
        if "valid" in self.candidates:
            h.update(self.candidates["valid"].items.tobytes())
        return h.hexdigest()[:16]

    def rows(self, user_idx: np.ndarray) -> np.ndarray:
        """Row of each user idx (users are sorted by idx)."""
        r = np.searchsorted(self.user_idx, user_idx)
        found = self.user_idx[np.minimum(r, len(self.user_idx) - 1)] == user_idx
        if not found.all():
            raise DataError(self.source / "candidates.parquet", "names users absent from sequences.parquet", FIX)
        return r

    def bounds(self, split: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[start, end) of each row's history for the split, in flat coordinates."""
        return self.offsets[rows], self.offsets[rows + 1] - HELD_OUT[split]

    def train_items(self) -> np.ndarray:
        """All training interactions' item idx (each user's items[:-2])."""
        return self.flat_items[flat_ranges(*self.bounds("train", np.arange(len(self.user_idx))))]

    def histories(self, split: str, rows: np.ndarray, max_len: int | None = None) -> Histories:
        """Right-aligned, left-padded histories of the given rows; at most `max_len` most recent items."""
        starts, ends = self.bounds(split, rows)
        length = int((ends - starts).max()) if len(rows) else 1
        if max_len is not None:
            length = min(length, max_len)
        return Histories(torch.from_numpy(right_aligned(self.flat_items, starts, ends, length)),
                         torch.from_numpy(right_aligned(self.flat_ts, starts, ends, length)),
                         torch.from_numpy(self.user_idx[rows]))


def flat_offsets(lengths: np.ndarray) -> np.ndarray:
    """[sum(lengths)]: 0..n-1 for each n in lengths, concatenated (the position inside each range)."""
    ends = np.cumsum(lengths)
    return np.arange(int(ends[-1]) if len(ends) else 0) - np.repeat(ends - lengths, lengths)


def flat_ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of arange(starts[r], ends[r]) over r, without a Python loop."""
    lens = ends - starts
    return np.repeat(starts, lens) + flat_offsets(lens)


def right_aligned(flat: np.ndarray, starts: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
    """[R, length]: the last `length` values of flat[starts[r]:ends[r]] for each r, left-padded with 0."""
    idx = ends[:, None] - length + np.arange(length)[None, :]  # [R, length] flat positions
    valid = idx >= starts[:, None]
    return np.where(valid, flat[np.clip(idx, 0, max(len(flat) - 1, 0))], 0)
