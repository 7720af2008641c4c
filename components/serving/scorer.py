"""Scoring: validated requests in, recommendations out, from one loaded `PackagedModel`.

What a request means (also in docs/serving.md):
- `user_id`: that user's history from the packaged data; a user the model does not know is a 404;
- `history`: oldest first (sorted by timestamp when every item has one); each entry an item id or an
  exact title (an id wins where a string is both); the model reads its last items (its window, echoed
  back as `prompt_history`) and `exclude_seen` removes every item of the whole history; entries the
  catalogue does not know are ignored and listed in `unknown_items`; items sent without a timestamp are
  dated the last day of the model's data;
- a history none of whose entries is known is a 422 naming them: answering it with the popularity
  ranking (as this service once did) gave a 200 that looked like a recommendation for the history sent
  and was not, and a client that never reads `fallback` could not tell. Some unknown entries among known
  ones are answered (a catalogue changes between versions; one retired item should not fail a long
  history), and listed. A title several items share is a 422 naming their ids: guessing would answer a
  question that was not asked;
- an empty history gets the popularity ranking of the model's training data, flagged
  `"fallback": "popularity"` (components/serving/packaged.py), so a cold-start client gets an answer
  and can tell.

`Scorer.load` picks the version that loads: a production version whose files are damaged (checked against
the sizes and sha256 recorded at packaging) is not served; the version that was production before it is,
and the log says why. No BentoML here: components/serving/service.py runs this inside its scorer service.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.errors import PipelineError
from components.serving.integrity import StoreAccessError
from components.serving.registry import get_model, serving_candidates
from components.serving.schema import (
    CatalogueItem,
    Contribution,
    HistoryEntry,
    HistoryItem,
    ItemDetail,
    ItemResult,
    ItemsPage,
    Recommendation,
    RecommendedItem,
    ScoreRequest,
    ScoreResult,
)

logger = logging.getLogger(__name__)


def _here(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


class Scorer:
    """Answers /recommend and /items from `packaged` (a components.serving.packaged.PackagedModel).

    `on_call(batch_size, model_seconds)`, if given, is called after every model call: the number of
    requests scored together and the seconds the model took (LLM pass, scoring, top-k)."""

    def __init__(self, packaged, on_call: Callable[[int, float], None] | None = None):
        self.packaged, self.on_call = packaged, on_call
        self.tag = str(packaged.tag)
        self.status = str(packaged.manifest.get("status", "passed"))

    @classmethod
    def load(cls, path: Path, tag: str, *, device: str, dtype: str, run: Callable = _here,
             on_call: Callable[[int, float], None] | None = None) -> Scorer:
        """Load the stored version `tag` at `path` through `run(fn, *args, **kwargs)` (where the model will
        run: the scorer service's model thread on a CPU). If it is refused (a damaged file: a PipelineError
        naming it), the versions that were production before it are tried, newest first
        (components/serving/registry.py `serving_candidates`), so a damaged production version leaves the
        previous champion serving instead of no service. A pinned LLMSREC_MODEL_TAG has no fallback, and
        a file this process may not read (StoreAccessError) is raised at once: it is not damage.
        Nothing loadable: the first refusal is raised."""
        # Here, not at the top: packaged.py imports torch and the LLM code (~1.7 s, ~180 MB), which the
        # public service's processes import this module without ever needing.
        from components.serving.packaged import PackagedModel

        try:
            return cls(run(PackagedModel.load, path, tag, device=device, dtype=dtype), on_call)
        except StoreAccessError:  # a permissions mistake, not damage: an older version would hide it
            raise
        except PipelineError as e:
            first = refused = e
        order = serving_candidates()
        for earlier in order[order.index(tag) + 1:] if tag in order else order:
            logger.error("not serving %s: %s. Trying %s, production before it", tag, refused, earlier)
            try:
                packaged = run(PackagedModel.load, Path(get_model(earlier).path), earlier, device=device, dtype=dtype)
            except StoreAccessError:
                raise
            except PipelineError as e:
                tag, refused = earlier, e
                continue
            return cls(packaged, on_call)
        logger.error("not serving %s: %s. No other version to fall back to", tag, refused)
        raise first

    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        """One model call over every request that has something to score, answers in request order."""
        from components.serving.packaged import Query  # not at the top: see load()

        pm = self.packaged
        results: list[ScoreResult | None] = [None] * len(requests)
        queries, slots = [], []
        for i, r in enumerate(requests):
            if r.user_id is not None:
                found = pm.user_history(r.user_id)
                if found is None:
                    results[i] = ScoreResult(status_code=404, error=f"user_id '{r.user_id}' is not in the data of "
                                             f"{self.tag}. Fix: send the user's history instead")
                    continue
                queries.append(Query(found[0], found[1], r.k, r.exclude_seen, explain=r.explain))
            else:
                history = r.history or []
                items, stamps, unknown, ambiguous = pm.resolve([(str(h.item_id), h.timestamp) for h in history],
                                                               by_title=True)
                if refused := self._refuse(len(history), items, unknown, ambiguous):
                    results[i] = refused
                    continue
                queries.append(Query(items, stamps, r.k, r.exclude_seen, unknown, explain=r.explain))
            slots.append(i)
        t0 = time.perf_counter()
        answers = pm.recommend(queries) if queries else []
        if self.on_call is not None:
            self.on_call(len(requests), time.perf_counter() - t0)
        for i, q, a in zip(slots, queries, answers, strict=True):
            results[i] = ScoreResult(result=Recommendation(
                model=self.tag, status=self.status, unknown_items=q.unknown, history_used=a.history_used,
                prompt_history=[HistoryEntry(item_id=pm.item_ids[j - 1], title=pm.titles[j], timestamp=t)
                                for j, t in a.read],
                fallback=a.fallback, items=[
                    RecommendedItem(item_id=pm.item_ids[j - 1], title=pm.titles[j], score=s, because=None if
                                    a.because is None else [Contribution(item_id=pm.item_ids[h - 1], title=pm.titles[h],
                                                                         similarity=c) for h, c in a.because[n]])
                    for n, (j, s) in enumerate(zip(a.items, a.scores, strict=True))]))
        return results  # type: ignore[return-value]

    def _refuse(self, sent: int, known, unknown: list[str], ambiguous: dict[str, list[str]]) -> ScoreResult | None:
        """The 422 for a history the service will not guess at (module docstring), else None."""
        def listed(names: list[str], most: int = 10) -> str:
            shown = ", ".join(repr(n) for n in names[:most])
            return shown + (f" and {len(names) - most} more" if len(names) > most else "")

        if ambiguous:
            which = "; ".join(f"{title!r} is the title of {', '.join(ids[:10])}" for title, ids in
                              list(ambiguous.items())[:5])
            return ScoreResult(status_code=422, error=f"history: {len(ambiguous)} title(s) name several items of "
                               f"{self.tag}: {which}. Fix: send the item id of the one meant")
        if sent and not len(known):
            return ScoreResult(status_code=422, error=(
                f"history: none of its {sent} entries is an item of {self.tag} (neither an item id nor an exact "
                f"title): {listed(unknown)}. Fix: send item ids or exact titles from the model's catalogue (POST "
                "/items lists them, GET /items/{item_id} looks one up), or an empty history for the popularity "
                "ranking"))
        return None

    def item(self, item_id: str) -> ItemResult:
        """One item of the catalogue (components.serving.schema.ItemDetail), or a 404 naming the id and the fix
        (and the id to send, when what was sent is an item's exact title)."""
        pm = self.packaged
        found = pm.item(item_id)
        if found is not None:
            return ItemResult(result=ItemDetail(**found, model=self.tag))
        named = pm.by_title.get(item_id.strip(), [])
        hint = (f" '{item_id}' is the title of {', '.join(pm.item_ids[i - 1] for i in named[:10])}: send "
                f"{'that id' if len(named) == 1 else 'one of those ids'}." if named else "")
        return ItemResult(status_code=404, error=f"item '{item_id}' is not in the catalogue of {self.tag} "
                          f"({pm.num_items} items).{hint} Fix: use an item id from POST /items")

    def items(self, limit: int = 50, offset: int = 0) -> ItemsPage:
        """A page of the catalogue (item_id, title) in index order."""
        pm = self.packaged
        rows = range(offset, min(offset + limit, pm.num_items))
        return ItemsPage(total=pm.num_items, limit=limit, offset=offset,
                         items=[CatalogueItem(item_id=pm.item_ids[i], title=pm.titles[i + 1]) for i in rows])

    def warm_up(self) -> None:
        """One request before reporting ready: the first LLM pass pays one-off costs (allocations, kernels)."""
        self.score([ScoreRequest(history=[HistoryItem(item_id=self.packaged.item_ids[0])], k=1)])
