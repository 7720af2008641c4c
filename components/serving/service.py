"""The LLM-SRec HTTP service (BentoML 1.4 class services): `bentoml serve` from the repository root.

Two services, the pattern BentoML documents for adaptive batching with structured inputs:

- `LLMSRecService` (public): the HTTP contract. `POST /recommend`, `POST /items`, plus BentoML's
  `/livez`, `/readyz`, `/metrics` and the OpenAPI docs at `/` and `/docs.json`. It validates input and
  turns every client mistake into a 4xx with a message (see `RequestGuard` for 400/413/422).
- `LLMSRecScorer` (internal): loads the production model (the BentoML store's `llmsrec` version the
  registry points at, see components/serving/registry.py) and the real LLM, and scores. Concurrent /recommend
  calls are merged into one LLM pass by its adaptive batcher (components/serving/batcher.py: a lone
  request goes straight to the model; requests that arrive while it is busy form the next batch).

`/readyz` on the public port answers 200 only when the scorer is ready, i.e. after the LLM and the
item table are loaded and one warm-up request has run.

Choices (also in the README):
- an empty or all-unknown history gets the popularity ranking of the model's training data, flagged
  `"fallback": "popularity"` (a cold-start client still gets an answer, and can tell);
- unknown item ids are ignored and listed in `unknown_items`; an unknown `user_id` is a 404;
- history is oldest first (sorted by timestamp when every item has one); the model reads the last
  items of it (its window), `exclude_seen` removes every item of the whole history;
- items sent without a timestamp are dated the last day of the model's data;
- a production version whose files are damaged (checked against the sizes and sha256 recorded at packaging)
  is not served: the version that was production before it is, and the log says why
  (`LLMSRecScorer._load_or_fall_back`, components/serving/registry.py `serving_candidates`).

Environment: `LLMSREC_MODEL_TAG` (serve that version instead of production), `LLMSREC_BATCHING` (1: the
adaptive batcher, the default; 0: none; bentoml: BentoML's own batcher, for comparison),
`LLMSREC_MAX_BATCH` (16), `LLMSREC_MAX_BODY_BYTES` (1 MiB), `LLMSREC_TORCH_THREADS`,
`LLMSREC_DEVICE`/`LLMSREC_DTYPE` (auto), `LLMSREC_SCORE_ON_LOOP` (auto: on the event loop with CUDA, in
one dedicated model thread on a CPU; see `LLMSRecScorer.__init__`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import bentoml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from components.serving.batcher import GreedyBatcher
from components.serving.registry import resolve_serving_tag

logger = logging.getLogger(__name__)
# `bentoml serve` configures handlers but leaves this logger at the root's WARNING: the startup line that
# says where the model runs is INFO.
logger.setLevel(logging.INFO)
BATCHING = os.environ.get("LLMSREC_BATCHING", "1")
if BATCHING not in ("1", "0", "bentoml"):
    raise ValueError(f"LLMSREC_BATCHING={BATCHING!r} is not a batching mode. Fix: 1 (adaptive batching, the default), "
                     "0 (none) or bentoml (BentoML's own batcher)")
MAX_BATCH = int(os.environ.get("LLMSREC_MAX_BATCH", "16"))
if MAX_BATCH < 1:
    raise ValueError(f"LLMSREC_MAX_BATCH={MAX_BATCH} is below 1. Fix: the most requests per model call, e.g. 16")
MAX_BODY_BYTES = int(os.environ.get("LLMSREC_MAX_BODY_BYTES", str(1 << 20)))

MAX_ITEM_ID_CHARS = 256
MAX_TIMESTAMP = 32_503_680_000  # 3000-01-01T00:00:00Z in Unix seconds
TIMESTAMP_FIX = ("Fix: send Unix seconds (UTC) as a JSON integer, e.g. 1650000000 for 2022-04-15, or leave "
                 "timestamp out (the item is then dated the model's last data day)")


def _json_kind(value: Any) -> str:
    """What a decoded JSON value is, in JSON's words (for error messages)."""
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)


def _item_id(value: Any) -> str | int:
    """An item id as sent: a string (stripped, 1..256 characters) or an integer, never coerced.

    One validator instead of a `str | int` union, so a bad id gets one error that says what an id is,
    not one error per union branch."""
    if isinstance(value, str):
        stripped = value.strip()
        if 1 <= len(stripped) <= MAX_ITEM_ID_CHARS:
            return stripped
        raise PydanticCustomError("item_id", "an item id is 1 to {most} characters, this one has {n}. Fix: send ids "
                                  "from the model's catalogue (POST /items lists them)",
                                  {"most": MAX_ITEM_ID_CHARS, "n": len(stripped)})
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise PydanticCustomError("item_id", "an item id is a string or an integer, not {kind}. Fix: send ids from the "
                              "model's catalogue, e.g. \"I00001\" (POST /items lists them)", {"kind": _json_kind(value)})


def _timestamp(value: Any) -> int | None:
    """Unix seconds in 0..MAX_TIMESTAMP (1970-01-01 to 3000-01-01), or None; never coerced.

    Each way of getting it wrong gets one message naming the value and the fix: milliseconds (the
    commonest mistake: 1000x too large) and ISO dates get the value to send instead."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= MAX_TIMESTAMP:
            return value
        hint = ""
        if 10 ** 11 <= value and value // 1000 <= MAX_TIMESTAMP:  # 1e11 s is year 5138; 1e11 ms is 1973
            hint = f"; it looks like milliseconds: send {value // 1000}"
        raise PydanticCustomError("timestamp", "{value} is not Unix seconds between 0 (1970-01-01) and {most} "
                                  "(3000-01-01){hint}. {fix}",
                                  {"value": value, "most": MAX_TIMESTAMP, "hint": hint, "fix": TIMESTAMP_FIX})
    if isinstance(value, float) and value.is_integer() and 0 <= value <= MAX_TIMESTAMP:
        raise PydanticCustomError("timestamp", "{value} is a number with a fraction part, not an integer. Fix: send it "
                                  "as {whole}", {"value": value, "whole": int(value)})
    if isinstance(value, str):
        from datetime import UTC, datetime

        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            when = None
        if when is not None:
            seconds = int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp())
            raise PydanticCustomError("timestamp", "a date string ('{value}') is not Unix seconds. Fix: send {seconds} "
                                      "(that time in Unix seconds, UTC) as a JSON integer",
                                      {"value": value[:40], "seconds": seconds})
    got = str(value)[:40] if isinstance(value, float) else _json_kind(value)
    raise PydanticCustomError("timestamp", "{got} is not Unix seconds. {fix}", {"got": got, "fix": TIMESTAMP_FIX})


# JSON schemas for the two validators above (a plain validator has none of its own): what the OpenAPI spec shows
ITEM_ID_SCHEMA = {"anyOf": [{"type": "string", "minLength": 1, "maxLength": MAX_ITEM_ID_CHARS}, {"type": "integer"}]}
ItemId = Annotated[str | int, PlainValidator(_item_id), WithJsonSchema(ITEM_ID_SCHEMA)]
Timestamp = Annotated[int | None, PlainValidator(_timestamp), WithJsonSchema(
    {"anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_TIMESTAMP}, {"type": "null"}]})]


# A bare id is folded into the object before validation (`_bare_id`) rather than offered as a second branch of
# a union: with `list[ItemId | HistoryItem]`, one bad timestamp was answered with an error per branch
# (`history.0.constrained-str: ...; history.0.int: ...; history.0.HistoryItem.timestamp: ...`), which buried
# the one that mattered.
class HistoryItem(BaseModel):
    """One history entry: `{"item_id": ..., "timestamp": ...}`, or a bare item id (read as `{"item_id": id}`)."""

    model_config = ConfigDict(extra="forbid")
    item_id: ItemId
    timestamp: Timestamp = Field(default=None, description="Unix seconds; without it the item is dated the model's "
                                                           "last data day")

    @model_validator(mode="before")
    @classmethod
    def _bare_id(cls, value: Any) -> Any:
        return value if isinstance(value, dict | HistoryItem) else {"item_id": value}

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema, handler):
        # the spec shows both forms an entry may take (validation accepts both, see _bare_id)
        return {"anyOf": [ITEM_ID_SCHEMA, handler(core_schema)]}


class RecommendedItem(BaseModel):
    item_id: str
    title: str
    score: float


class Recommendation(BaseModel):
    model: str = Field(description="the BentoML tag of the model that answered")
    status: str = Field(description="'passed' (released by the gate) or 'provisional' (first model, gate failed)")
    items: list[RecommendedItem]
    unknown_items: list[str] = Field(description="history item ids the model does not know (ignored)")
    history_used: int = Field(description="most recent known history items the model read (its window)")
    fallback: str | None = Field(default=None, description="'popularity' when no known history item was left")


class RecommendRequest(BaseModel):
    """POST /recommend's body. Strict: a misspelt field (`exclude_seem`) or a value of the wrong type
    (`"k": "5"`, `"k": true`, `"exclude_seen": "no"`) is a 422, never silently read as something else."""

    model_config = ConfigDict(extra="forbid")
    history: Annotated[list[HistoryItem] | None, Field(
        description="the user's items, oldest first: item ids, or {item_id, timestamp} objects",
        examples=[["I00010", "I00011", "I00012"]])] = None
    user_id: Annotated[str | None, Field(description="a known user: their history comes from the data")] = None
    k: Annotated[StrictInt, Field(ge=1, le=100, description="how many items to return")] = 10
    exclude_seen: Annotated[StrictBool, Field(description="leave out every item of the history (then fewer than k "
                                                          "items come back when fewer unseen ones are left)")] = True


class ItemsRequest(BaseModel):
    """POST /items's body (strict, like RecommendRequest)."""

    model_config = ConfigDict(extra="forbid")
    limit: Annotated[StrictInt, Field(ge=1, le=1000)] = 50
    offset: Annotated[StrictInt, Field(ge=0)] = 0


class CatalogueItem(BaseModel):
    item_id: str
    title: str


class ItemsPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[CatalogueItem]


class ScoreRequest(BaseModel):
    """One /recommend call as the scorer receives it (the public API has validated it)."""

    history: list[HistoryItem] | None = None
    user_id: str | None = None
    k: int = 10
    exclude_seen: bool = True


class ScoreResult(BaseModel):
    status_code: int = 200
    error: str | None = None
    result: Recommendation | None = None


class _ScorerMetrics:
    """What /metrics adds to BentoML's request counters: how full the batches are and how long the model
    takes per batch. Request latency minus model time is the serving overhead (HTTP hops, batcher)."""

    _instance: _ScorerMetrics | None = None

    @classmethod
    def get(cls) -> _ScorerMetrics:
        # One per process: a registry refuses a second metric of the same name (in-process tests build
        # several scorers).
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self) -> None:
        from prometheus_client import Histogram  # BentoML's multiprocess registry collects it at /metrics

        self.batch_size = Histogram("llmsrec_batch_size", "requests merged into one model call",
                                    buckets=(1, 2, 4, 8, 16, 32, 64))
        self.model_seconds = Histogram("llmsrec_model_seconds", "model time per call (LLM pass, scoring, top-k)",
                                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


def _freeze_startup_objects() -> None:
    """Move everything alive after startup (the model, tokenizer, libraries: ~470k objects in the scorer)
    out of the garbage collector's reach. Python's full collection walks every tracked object: 210-245 ms
    in the scorer on the 2-core dev VM, during which no request moves, and the serving benchmark's 250-ms
    tail stalls (a whole batch at once) matched it. Startup objects live as long as the process, so
    there is nothing to lose by never scanning them again."""
    import gc

    gc.collect()  # what is already garbage goes now, not into the frozen set
    gc.freeze()


def _env_threads() -> None:
    import torch

    if threads := os.environ.get("LLMSREC_TORCH_THREADS"):
        torch.set_num_threads(int(threads))


# runner_connection: the public service's client to this one replaces its HTTP session every 100 requests
# by default, closing the old one under the requests still in flight on it (BentoML 1.4.40,
# _bentoml_impl/client/proxy2.py SessionManager): at concurrency 8 that dropped ~7 requests per 100,
# which the scorer had already scored and then scored again on the retry. Refresh rarely instead.
@bentoml.service(name="llmsrec_scorer", workers=1, traffic={"timeout": 120, "max_concurrency": 256},
                 runner_connection={"max_requests": 10_000_000, "max_age": 3600.0})
class LLMSRecScorer:
    # Resolved when the module is imported, so `bentoml build` packs exactly the production version.
    model_ref = bentoml.models.BentoModel(resolve_serving_tag())

    def __init__(self) -> None:
        from components.llm.backbone import resolve_device
        from components.serving.packaged import PackagedModel

        _env_threads()
        ref = self.model_ref
        path = Path(getattr(ref, "path", ref))
        self.tag = str(getattr(ref, "tag", path.name))
        device = resolve_device(os.environ.get("LLMSREC_DEVICE", "auto"))
        # Where the model runs. On a GPU the LLM pass is bound by Python launching kernels, so it needs
        # the GIL nearly all the time; in a worker thread it fights the event loop for it (BentoML's own
        # batcher, used then, polled every 1 ms while a batch was in flight), and an H200 took 169 ms
        # per batch of 8 in the server against 44 ms bare. On the loop thread there is nothing to fight:
        # requests arriving meanwhile wait in the socket, as they would wait for the batch anyway.
        # On a CPU the pass is long (up to seconds, in native code that releases the GIL), so it runs in
        # one dedicated thread and the scorer keeps answering /readyz meanwhile. One thread, and the same
        # one that loads the model: every OS thread that runs torch gets its own OpenMP team, and two
        # teams on few cores slow every pass (most likely libgomp giving up spin-waiting once its teams
        # outnumber the cores: OMP_WAIT_POLICY=PASSIVE is as slow). With BentoML's pool of worker threads
        # a 2-thread pass took 203 ms in the server against 153 ms bare on the 2-core dev VM; one thread
        # matches bare (README, serving benchmark). LLMSREC_SCORE_ON_LOOP=1/0 overrides.
        on_loop = os.environ.get("LLMSREC_SCORE_ON_LOOP", "auto")
        self.score_on_loop = device.type == "cuda" if on_loop == "auto" else on_loop == "1"
        self._model_thread = None if self.score_on_loop else ThreadPoolExecutor(1, thread_name_prefix="llmsrec-model")
        self.packaged = self._load_or_fall_back(path, PackagedModel.load, device=str(device),
                                                dtype=os.environ.get("LLMSREC_DTYPE", "auto"))
        self.status = str(self.packaged.manifest.get("status", "passed"))
        self.metrics = _ScorerMetrics.get()
        self._batcher = GreedyBatcher(self._score_batch, MAX_BATCH) if BATCHING == "1" else None
        logger.info("serving %s: model on %s, run on the %s; batching: %s", self.tag,
                    self.packaged.model.backbone.device, "event loop" if self.score_on_loop else "model thread",
                    {"1": f"adaptive, up to {MAX_BATCH}", "0": "off", "bentoml": f"BentoML's, up to {MAX_BATCH}"}[BATCHING])
        # One request before reporting ready: the first LLM pass pays one-off costs (allocations, kernels).
        self._in_model_thread(self._score, [ScoreRequest(history=[HistoryItem(item_id=self.packaged.item_ids[0])],
                                                         k=1)])
        _freeze_startup_objects()

    def _load_or_fall_back(self, path: Path, load, **kwargs):
        """`load(path, tag)` the resolved version where the model runs; if it is refused (a damaged file: a
        PipelineError naming it), the versions that were production before it, newest first
        (components/serving/registry.py serving_candidates), so a damaged production version leaves the previous
        champion serving instead of no service. `self.tag` becomes the version that loaded; every response
        names it. A pinned LLMSREC_MODEL_TAG has no fallback. Nothing loadable: the first refusal is raised."""
        from components.errors import PipelineError
        from components.serving.registry import get_model, serving_candidates

        try:
            return self._in_model_thread(load, path, self.tag, **kwargs)
        except PipelineError as e:
            first = refused = e
        order = serving_candidates()
        for tag in order[order.index(self.tag) + 1:] if self.tag in order else order:
            logger.error("not serving %s: %s. Trying %s, production before it", self.tag, refused, tag)
            try:
                packaged = self._in_model_thread(load, Path(get_model(tag).path), tag, **kwargs)
            except PipelineError as e:
                self.tag, refused = tag, e
                continue
            self.tag = tag
            return packaged
        logger.error("not serving %s: %s. No other version to fall back to", self.tag, refused)
        raise first

    def _in_model_thread(self, fn, *args, **kwargs):
        """Call `fn` where the model runs (see __init__), blocking; for startup."""
        if self._model_thread is None:
            return fn(*args, **kwargs)
        return self._model_thread.submit(fn, *args, **kwargs).result()

    def _score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        from components.serving.packaged import Query

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
                queries.append(Query(found[0], found[1], r.k, r.exclude_seen))
            else:
                items, stamps, unknown = pm.resolve([(str(h.item_id), h.timestamp) for h in r.history or []])
                queries.append(Query(items, stamps, r.k, r.exclude_seen, unknown))
            slots.append(i)
        t0 = time.perf_counter()
        answers = pm.recommend(queries) if queries else []
        self.metrics.batch_size.observe(len(requests))
        self.metrics.model_seconds.observe(time.perf_counter() - t0)
        for i, q, a in zip(slots, queries, answers, strict=True):
            results[i] = ScoreResult(result=Recommendation(
                model=self.tag, status=self.status, unknown_items=q.unknown, history_used=a.history_used,
                fallback=a.fallback, items=[RecommendedItem(item_id=pm.item_ids[j - 1], title=pm.titles[j], score=s)
                                            for j, s in zip(a.items, a.scores, strict=True)]))
        return results  # type: ignore[return-value]

    @bentoml.api(batchable=BATCHING == "bentoml", max_batch_size=MAX_BATCH, max_latency_ms=60_000)
    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        if self._batcher is not None:  # each request joins whatever batch is forming (see batcher.py)
            return list(await asyncio.gather(*(self._batcher(r) for r in requests)))
        return await self._score_batch(requests)

    async def _score_batch(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        """One model call over `requests`, where the model runs (see __init__)."""
        if self._model_thread is None:
            return self._score(requests)  # blocks this process's event loop for one model call: see __init__
        return await asyncio.get_running_loop().run_in_executor(self._model_thread, self._score, requests)

    @bentoml.api
    def items(self, limit: int = 50, offset: int = 0) -> ItemsPage:
        pm = self.packaged
        rows = range(offset, min(offset + limit, pm.num_items))
        return ItemsPage(total=pm.num_items, limit=limit, offset=offset,
                         items=[CatalogueItem(item_id=pm.item_ids[i], title=pm.titles[i + 1]) for i in rows])


def _error(status: int, message: str):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


@bentoml.service(name="llmsrec_service", workers=1, traffic={"timeout": 120})
class LLMSRecService:
    scorer = bentoml.depends(LLMSRecScorer)

    def __init__(self) -> None:
        _freeze_startup_objects()

    async def _call(self, method: str, *args, **kwargs):
        """Served, `scorer` is a client of the scorer process (where concurrent calls are batched); in-process
        (tests, `to_asgi`) it is a local instance, called directly."""
        if hasattr(self.scorer, "to_async"):
            import aiohttp

            for attempt in range(3):
                try:
                    return await getattr(self.scorer.to_async, method)(*args, **kwargs)
                except aiohttp.ClientConnectionError as e:
                    # The scorer's server closes idle keep-alive connections; a pooled one can be closed
                    # just as it is reused (seen under concurrent load). Scoring is a pure function of the
                    # request, so sending it again is safe.
                    if attempt == 2:
                        raise
                    logger.warning("scorer connection dropped (%s); retrying", type(e).__name__)
        import inspect

        import anyio

        out = await anyio.to_thread.run_sync(lambda: getattr(self.scorer, method)(*args, **kwargs))
        return await out if inspect.isawaitable(out) else out  # `score` is async (see LLMSRecScorer)

    # input_spec: BentoML validates the body against these models (extra fields forbidden, strict types)
    # and calls the method with their fields as keyword arguments.
    @bentoml.api(route="/recommend", input_spec=RecommendRequest)
    async def recommend(self, **fields: Any) -> Recommendation:
        """Top-k items for one user, from a history or a known user_id (exactly one of the two)."""
        r = RecommendRequest.model_construct(**fields)  # BentoML has validated them against RecommendRequest
        if (r.history is None) == (r.user_id is None):
            return _error(422, "give exactly one of 'history' (a list of item ids or {item_id, timestamp}) "
                               "or 'user_id'")
        req = ScoreRequest(history=r.history, user_id=r.user_id, k=r.k, exclude_seen=r.exclude_seen)
        out = (await self._call("score", [req]))[0]
        out = out if isinstance(out, ScoreResult) else ScoreResult.model_validate(out)
        if out.error is not None:
            return _error(out.status_code, out.error)
        return out.result

    @bentoml.api(route="/items", input_spec=ItemsRequest)
    async def items(self, **fields: Any) -> ItemsPage:
        """A page of the model's catalogue (item_id, title), in index order."""
        r = ItemsRequest.model_construct(**fields)
        page = await self._call("items", limit=r.limit, offset=r.offset)
        return page if isinstance(page, ItemsPage) else ItemsPage.model_validate(page)


class RequestGuard:
    """ASGI middleware for the public service: client errors BentoML would not classify.

    - 413 when the body is larger than `max_body` bytes (by Content-Length, or counted as it streams);
    - 415 when an API route is sent a Content-Type other than JSON (BentoML would read form data or pickles
      as other inputs; a request without the header is read as JSON, as BentoML does);
    - BentoML answers every pydantic failure with 400. Here malformed JSON stays 400 and a well-formed
      body with wrong types or out-of-range values (k > 100, a string for k, ...) or an unknown field
      becomes 422, with one readable line per problem (an unknown field's line lists the route's fields).
    """

    def __init__(self, app, max_body: int = MAX_BODY_BYTES, fields: dict[str, list[str]] | None = None):
        self.app, self.max_body, self.fields = app, max_body, fields or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if scope.get("path") in self.fields and (refused := self._media_type_refused(headers.get(b"content-type"))):
            return await self._send_json(send, 415, refused)
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await self._send_json(send, 413, self._too_large())
        seen, too_large = 0, False

        async def guarded_receive():
            # A body without Content-Length is counted as it arrives; past the limit the app gets an
            # empty end-of-body (it fails to parse) and `capture` answers 413 instead of its reply.
            nonlocal seen, too_large
            if too_large:
                return {"type": "http.request", "body": b"", "more_body": False}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    too_large = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        start: dict[str, Any] = {}
        body = []

        async def capture(message):
            # Only 400s (and oversized requests) are held back; everything else streams through untouched.
            if message["type"] == "http.response.start":
                if message["status"] != 400 and not too_large:
                    return await send(message)
                start.update(message)
                return None
            if not start:
                return await send(message)
            body.append(message.get("body", b""))
            if not message.get("more_body"):
                status, payload = ((413, self._too_large()) if too_large else
                                   self._classify(b"".join(body), self.fields.get(scope.get("path", ""))))
                await self._send_json(send, status, payload)
            return None

        await self.app(scope, guarded_receive, capture)

    def _too_large(self) -> dict[str, str]:
        return {"error": f"request body larger than {self.max_body} bytes. Fix: send at most the recent history "
                         "(the model reads only its last items), or raise LLMSREC_MAX_BODY_BYTES"}

    @staticmethod
    def _media_type_refused(header: bytes | None) -> dict[str, str] | None:
        """The 415 body for a Content-Type that is not JSON (`application/json`, `application/*+json`), else None."""
        if header is None:
            return None
        media = header.decode("latin-1").split(";")[0].strip().lower()
        if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
            return None
        return {"error": f"Content-Type {media or '(empty)'!r} is not accepted. Fix: send the body as JSON with "
                         "Content-Type: application/json"}

    @staticmethod
    def _classify(raw: bytes, fields: list[str] | None = None) -> tuple[int, dict[str, Any]]:
        try:
            payload = json.loads(raw)
        except ValueError:
            return 400, {"error": raw.decode("utf-8", "replace")[:500]}
        details = payload.get("detail") if isinstance(payload, dict) else None
        if not isinstance(details, list) or not details:
            return 400, payload if isinstance(payload, dict) else {"error": str(payload)}
        if any(d.get("type") == "json_invalid" for d in details if isinstance(d, dict)):
            return 400, {"error": "malformed JSON body. Fix: send a JSON object, e.g. "
                                  '{"history": ["I00001", "I00002"], "k": 10}', "detail": details}
        lines = []
        for d in details:
            loc = [str(p) for p in d.get("loc", ()) if p != "body"]
            msg = d.get("msg", "invalid")
            if d.get("type") == "extra_forbidden" and len(loc) == 1 and fields:  # a top-level field
                msg = f"unknown field. Fix: use only {', '.join(fields)}"
            elif d.get("type") == "extra_forbidden" and len(loc) == 3 and loc[0] == "history":  # in a history object
                msg = f"unknown field. Fix: use only {', '.join(HistoryItem.model_fields)}"
            elif d.get("type") == "missing" and len(loc) == 3 and loc[0] == "history":
                msg = "required in every history object. Fix: {\"item_id\": ..., \"timestamp\": unix_seconds} or a bare id"
            elif not loc and d.get("type") in ("model_type", "model_attributes_type", "dict_type"):
                msg = 'the body must be a JSON object. Fix: send e.g. {"history": ["I00001", "I00002"], "k": 10}'
            lines.append(f"{'.'.join(loc) or 'body'}: {msg}")
        return 422, {"error": "; ".join(lines), "detail": details}

    @staticmethod
    async def _send_json(send, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})


class ClientErrorLogFilter(logging.Filter):
    """BentoML logs every request that fails validation at ERROR with a traceback. A bad request is the
    client's mistake, answered with a 4xx: keep one WARNING line, no traceback, so real errors stand out."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ValidationError):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = f"{record.getMessage()}: rejected ({exc.error_count()} validation error(s)), answered 4xx"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


def _fix_media_types(service) -> None:
    """Pin each API's response media type to the one BentoML derives for it. For a root-model output
    (`score` returns a list) BentoML 1.4.40 derives it on every response by building a TypeAdapter and a
    JSON schema of the whole output type (IOMixin.mime_type): ~0.6 ms of the scorer's event loop per
    batch on the 2-core dev VM, the largest serving cost after the model. The value never changes."""
    for api in service.apis.values():
        if api.output_spec.media_type is None:
            api.output_spec.media_type = api.output_spec.mime_type()


_fix_media_types(LLMSRecScorer)
_fix_media_types(LLMSRecService)
LLMSRecService.add_asgi_middleware(RequestGuard, max_body=MAX_BODY_BYTES, fields={
    api.route: list(api.input_spec.model_fields) for api in LLMSRecService.apis.values()})
logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorLogFilter())
