"""The LLM-SRec HTTP service (BentoML 1.4 class services): `bentoml serve` from the repository root.

Two services, the public one depending on the other (`bentoml.depends`):

- `LLMSRecService` (public): the HTTP contract (components/serving/schema.py). `POST /recommend`,
  `POST /items`, `GET /items/{item_id}` (a FastAPI route BentoML mounts and documents), plus BentoML's
  `/livez`, `/readyz`, `/metrics` and the OpenAPI docs at `/` and `/docs.json`, titled and versioned with
  the served model's tag (`OpenAPIInfo`). Every client mistake is a 4xx with a message.
- `LLMSRecScorer` (internal): loads the production model (the BentoML store's `llmsrec` version the
  registry points at, components/serving/registry.py) with the real LLM and scores it
  (components/serving/scorer.py). Concurrent /recommend calls are merged into one LLM pass by its adaptive
  batcher (components/serving/batcher.py: a lone request goes straight to the model; requests that arrive
  while it is busy form the next batch).

`/readyz` on the public port answers at once: 503 until the scorer is ready, i.e. until the LLM and the
item table are loaded (in the background: the scorer's server is up meanwhile) and one warm-up request has
run; 200 from then on.

Who may call: `bentoml serve` binds 127.0.0.1 unless given a host; with a token set, every request but the
open probes needs it (components/serving/auth.py). Before starting any service process, `bentoml serve`
runs `LLMSRecService.preflight`: a bad setting or an unreadable store stops it there, with one line.

Nothing happens at import: the settings (components/serving/settings.py) are read, and the model resolved
and loaded, when BentoML creates each service (its `__init__`). `bentoml build` asks the scorer's
`model_ref` for the model to pack, which resolves the production version then.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bentoml
from fastapi import FastAPI

from components.errors import PipelineError
from components.serving.auth import BearerAuth
from components.serving.batcher import GreedyBatcher
from components.serving.registry import resolve_serving_tag
from components.serving.schema import (
    ItemDetail,
    ItemResult,
    ItemsPage,
    ItemsRequest,
    Recommendation,
    RecommendRequest,
    RequestGuard,
    ScoreRequest,
    ScoreResult,
)
from components.serving.scorer import Scorer
from components.serving.settings import ServingSettings

logger = logging.getLogger(__name__)


class ProductionModel(bentoml.models.BentoModel):
    """The scorer's model, declared on the class for `bentoml build` (which packs it into the Bento) and
    for `bentoml serve` (which resolves it before starting), but resolved only when BentoML asks: the
    registry's serving version (`resolve_serving_tag`: production, or a pinned LLMSREC_MODEL_TAG, or inside
    a Bento the model it was built with).

    BentoML's public `BentoModel` with its tag looked up at each use instead of given at construction:
    `BentoModel(tag)` would need the tag, and so the store, at import. Everything BentoML calls on it
    (`to_info` for a build, `resolve` for serving, `to_create_schema`) goes through `tag`. Each access
    resolves afresh (BentoModel caches its first answer for the life of the class, which would pin one
    store for the whole process)."""

    def __init__(self) -> None:  # no tag to take: see `tag`
        pass

    @property
    def tag(self) -> bentoml.Tag:  # shadows BentoModel's field
        return bentoml.Tag.from_taglike(resolve_serving_tag())

    @classmethod
    def from_info(cls, info) -> bentoml.models.BentoModel:
        """A built Bento's model: the version it was built with, fixed."""
        return bentoml.models.BentoModel.from_info(info)

    def __get__(self, instance: Any, owner: type) -> Any:
        return self if instance is None else self.resolve()

    # BentoModel's generated ones read `tag`: comparing or printing the reference would read the store.
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


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

    def observe(self, batch_size: int, model_seconds: float) -> None:
        self.batch_size.observe(batch_size)
        self.model_seconds.observe(model_seconds)


def _freeze_startup_objects() -> None:
    """Move everything alive after startup (the model, tokenizer, libraries: ~470k objects in the scorer)
    out of the garbage collector's reach. Python's full collection walks every tracked object: 210-245 ms
    in the scorer on the 2-core dev VM, during which no request moves, and the serving benchmark's 250-ms
    tail stalls (a whole batch at once) matched it. Startup objects live as long as the process, so
    there is nothing to lose by never scanning them again."""
    import gc

    gc.collect()  # what is already garbage goes now, not into the frozen set
    gc.freeze()


# runner_connection: the public service's client to this one replaces its HTTP session every 100 requests
# by default, closing the old one under the requests still in flight on it (BentoML 1.4.40,
# _bentoml_impl/client/proxy2.py SessionManager): at concurrency 8 that dropped ~7 requests per 100,
# which the scorer had already scored and then scored again on the retry. Refresh rarely instead.
@bentoml.service(name="llmsrec_scorer", workers=1, traffic={"timeout": 120, "max_concurrency": 256},
                 runner_connection={"max_requests": 10_000_000, "max_age": 3600.0})
class LLMSRecScorer:
    model_ref = ProductionModel()

    def __init__(self) -> None:
        # `bentoml serve` leaves this package's loggers at the root's WARNING: the startup line is INFO.
        logging.getLogger("components.serving").setLevel(logging.INFO)
        settings = ServingSettings.from_env()
        settings.check_device()  # a CUDA device on a host without one: a ConfigError naming LLMSREC_DEVICE
        # Where the model runs. On a GPU the LLM pass is bound by Python launching kernels, so it needs
        # the GIL nearly all the time; in a worker thread it fights the event loop for it, and an H200
        # took 169 ms per batch of 8 in the server against 44 ms bare. On the loop thread there is
        # nothing to fight: requests arriving meanwhile wait in the socket, as they would wait for the
        # batch anyway. On a CPU the pass is long (up to seconds, in native code that releases the GIL), so
        # it runs in one dedicated thread and the scorer keeps answering /readyz meanwhile. One thread, and
        # the same one that loads the model: every OS thread that runs torch gets its own OpenMP team, and
        # two teams on few cores slow every pass (most likely libgomp giving up spin-waiting once its teams
        # outnumber the cores: OMP_WAIT_POLICY=PASSIVE is as slow). With BentoML's pool of worker threads a
        # 2-thread pass took 203 ms in the server against 153 ms bare on the 2-core dev VM; one thread
        # matches bare (docs/benchmarks.md, serving history). The device is known once torch is imported (`_load`).
        self.score_on_loop = False
        self._model_thread: ThreadPoolExecutor | None = ThreadPoolExecutor(1, thread_name_prefix="llmsrec-model")
        self._batcher = GreedyBatcher(self._score_batch, settings.max_batch) if settings.batching else None
        # Loading takes seconds to minutes. Done here, BentoML would start this server only after it: a
        # /readyz sent meanwhile waited in the socket, and the public service's probe of it hung until
        # BentoML's own timeout (121 s, then a 500). In the model thread, the server starts at once and
        # /readyz answers 503 until the model is loaded and warmed up (`__is_ready__`).
        self._loaded = self._model_thread.submit(self._load, settings)
        self._loaded.add_done_callback(self._log_failure)

    def _load(self, settings: ServingSettings) -> None:
        """Load the serving version, warm it up and decide where it runs (see __init__); in the model thread."""
        # Here, not at the top: torch (~1.7 s, ~180 MB) only in the scorer, never the public service.
        import torch

        from components.llm.backbone import resolve_device

        if settings.torch_threads is not None:
            torch.set_num_threads(settings.torch_threads)
        device = resolve_device(settings.device)
        stored = self.model_ref
        self._scorer = Scorer.load(Path(stored.path), str(stored.tag), device=str(device), dtype=settings.dtype,
                                   on_call=_ScorerMetrics.get().observe)
        on_loop = device.type == "cuda"
        logger.info("serving %s: model on %s, run on the %s; batching: %s", self.tag,
                    self.packaged.model.backbone.device, "event loop" if on_loop else "model thread",
                    f"adaptive, up to {settings.max_batch}" if settings.batching else "off")
        self._scorer.warm_up()
        _freeze_startup_objects()
        if on_loop:  # from now on the model runs on the event loop, and this thread is not needed
            self.score_on_loop, pool, self._model_thread = True, self._model_thread, None
            pool.shutdown(wait=False)

    @staticmethod
    def _log_failure(loaded) -> None:
        if (e := loaded.exception()) is None:
            return
        # Not raised anywhere a human would see it: the server stays up, /readyz 503 and /livez 503 say so.
        logger.error("the model did not load, this server will never be ready: %s", e,
                     exc_info=None if isinstance(e, PipelineError) else e)

    async def __is_ready__(self) -> bool:
        """/readyz: 200 once the model is loaded and warmed up, 503 before (and forever if loading failed)."""
        return self._loaded.done() and self._loaded.exception() is None

    async def __is_alive__(self) -> bool:
        """/livez: 503 once loading has failed (a restart is the only way on), else 200."""
        return not (self._loaded.done() and self._loaded.exception() is not None)

    def wait_until_loaded(self, timeout: float | None = None) -> None:
        """Block until the model is loaded and warmed up, for in-process use (tests, scripts); raises the
        load's error, or TimeoutError after `timeout` seconds."""
        self._loaded.result(timeout)

    async def _wait_loaded(self) -> None:
        """Return once the model is loaded; a request sent meanwhile waits for it. Raises the load's error."""
        if not self._loaded.done():
            # shielded: a caller that gives up must not cancel the load for everyone
            await asyncio.shield(asyncio.wrap_future(self._loaded))
        self._loaded.result()

    @property
    def tag(self) -> str:
        """The version that answers (after any fallback from a damaged one); every response names it."""
        return self._scorer.tag

    @property
    def packaged(self):
        return self._scorer.packaged

    @bentoml.api
    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        await self._wait_loaded()
        if self._batcher is not None:  # each request joins whatever batch is forming (see batcher.py)
            return list(await asyncio.gather(*(self._batcher(r) for r in requests)))
        return await self._score_batch(requests)

    async def _score_batch(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        """One model call over `requests`, where the model runs (see __init__)."""
        if self._model_thread is None:
            return self._scorer.score(requests)  # blocks this process's event loop for one model call: see __init__
        return await asyncio.get_running_loop().run_in_executor(self._model_thread, self._scorer.score, requests)

    @bentoml.api
    def items(self, limit: int = 50, offset: int = 0) -> ItemsPage:
        self._loaded.result()  # BentoML runs this in a worker thread: waiting for the load blocks no one
        return self._scorer.items(limit, offset)

    @bentoml.api
    def item(self, item_id: str) -> ItemResult:
        self._loaded.result()  # in a worker thread, as `items`
        return self._scorer.item(item_id)


def _error(status: int, message: str):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


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


#: how long the public /readyz waits for the scorer's, in seconds: a scorer that is up answers in milliseconds
READY_PROBE_S = 2

#: the OpenAPI page's title and description (its version is the served model's tag: `OpenAPIInfo`)
SERVICE_TITLE = "LLM-SRec next-item recommendations"
SERVICE_DESCRIPTION = """Next-item recommendations from LLM-SRec (Kim et al., KDD 2025): a frozen LLM that reads \
a user's history as a prompt, distilled from a SASRec model, packaged and gated by this project's pipeline. \
The version above is the served model's BentoML tag; every answer names the model that gave it (`model`).

- `POST /recommend`: the top k items for a history (item ids or exact titles, oldest first) or a known \
`user_id`. `score` is a probability over the whole catalogue, for the model and for the popularity \
fallback (an empty history) alike. The answer echoes the history the model read (`prompt_history`) and \
lists entries it does not know (`unknown_items`); `explain: true` adds, for each item, the history items \
nearest to it in the model's scoring space (`because`).
- `POST /items`: a page of the catalogue; `GET /items/{item_id}`: one item, with its popularity.
- A bad request is a 4xx whose body is `{"error": "what is wrong. Fix: what to send instead"}`.

More: docs/serving.md in the repository."""


class OpenAPIInfo:
    """ASGI middleware: the OpenAPI spec (GET /docs.json, which the docs page at / renders) with this service's
    title, description and version, and the docs page itself titled so. BentoML 1.4.40 fills `info` itself
    (`_bentoml_sdk/service/openapi.py`: the service's name, a default readme, the Bento's version or "None")
    and has no option for it; its page is titled "BentoML Prediction Service".

    The page also loses BentoML's Google Tag Manager snippet (`_bentoml_impl/server/main-openapi.html`):
    served as is, every visitor's browser would load a third-party tracker, which BENTOML_DO_NOT_TRACK
    (set in the bentofiles) does not stop, and on a network without the internet it only waits.

    `version` defaults to the tag the registry serves (`resolve_serving_tag`: production, a pinned
    LLMSREC_MODEL_TAG, or a Bento's own model), read when BentoML builds the app: known at start, as
    `bentoml serve`'s preflight has already resolved it. (Were that version's files damaged, the scorer
    would serve the version before it: each answer's `model` says which answered.)"""

    TRACKER = re.compile(rb"<!-- Google Tag Manager(?: \(noscript\))? -->.*?<!-- End Google Tag Manager(?: \(noscript\))? -->",
                         re.S)

    def __init__(self, app, version: str | None = None):
        self.app = app
        self.version = version if version is not None else resolve_serving_tag()

    def _spec(self, data: bytes) -> bytes:
        spec = json.loads(data)
        spec["info"] = {**spec.get("info", {}), "title": SERVICE_TITLE, "version": self.version,
                        "description": SERVICE_DESCRIPTION}
        spec["info"].pop("contact", None)  # BentoML's own team, not this service's owners
        return json.dumps(spec).encode()

    def _page(self, data: bytes) -> bytes:
        title = html.escape(f"{SERVICE_TITLE} ({self.version})").encode()
        return self.TRACKER.sub(b"", re.sub(rb"<title>.*?</title>", b"<title>" + title + b"</title>", data, count=1))

    async def __call__(self, scope, receive, send):
        path = scope.get("path") if scope["type"] == "http" and scope.get("method") == "GET" else None
        change = {"/docs.json": self._spec, "/": self._page}.get(path)
        if change is None:
            return await self.app(scope, receive, send)
        start: dict[str, Any] = {}
        body: list[bytes] = []

        async def rewrite(message):
            if message["type"] == "http.response.start":
                start.update(message)
                return None
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return None
            data = b"".join(body)
            if start.get("status") == 200:
                data = change(data)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(data)).encode())]})
            await send({"type": "http.response.body", "body": data})
            return None

        await self.app(scope, receive, rewrite)


# Routes BentoML's @bentoml.api cannot express (a GET with a path parameter): a FastAPI app that BentoML mounts
# under the public service and documents in its OpenAPI spec. FastAPI's own docs pages are off: the service has one.
ITEM_ROUTES = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


# http.host: `bentoml serve` binds 127.0.0.1 unless told otherwise (`--host`, BENTOML_HOST; the Bento's image
# sets 0.0.0.0): the API may run without a token (docs/serving.md: Exposure). runner_probe off: BentoML's own probe of
# the scorer (in its /readyz) waits up to 5 s and answers 500 when the scorer's socket does not answer in
# time; `__is_ready__` probes it instead, briefly, and says 503.
@bentoml.service(name="llmsrec_service", workers=1, traffic={"timeout": 120}, http={"host": "127.0.0.1"},
                 runner_probe={"enabled": False})
@bentoml.asgi_app(ITEM_ROUTES, path="/items")
class LLMSRecService:
    scorer = bentoml.depends(LLMSRecScorer)

    def __init__(self) -> None:
        http_log = logging.getLogger("bentoml._internal.server.http_app")
        if not any(isinstance(f, ClientErrorLogFilter) for f in http_log.filters):
            http_log.addFilter(ClientErrorLogFilter())
        _freeze_startup_objects()

    @bentoml.on_deployment
    def preflight() -> None:
        """Everything that can be checked before any server starts, once, in `bentoml serve`'s own process
        (BentoML runs deployment hooks before it starts the service processes): every LLMSREC_* setting
        (values, the device against this host, the token file) and the version to serve (it exists, its
        files are there and this user may read them). A problem prints one line naming the variable or
        the file, and `bentoml serve` exits 1. Found later, in a service process, it would only make
        BentoML restart that process every few seconds while the public server looked up."""
        try:
            settings = ServingSettings.from_env()
            settings.check_device()
            token = settings.token()
            tag = resolve_serving_tag()
        except PipelineError as e:
            print(f"ERROR [serve] {e}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        open_paths = ", ".join(settings.open_paths()) or "none"
        print(f"[serve] {tag}; " + (f"bearer token required (open: {open_paths})" if token else
                                    "no authentication (no LLMSREC_API_TOKEN or LLMSREC_API_TOKEN_FILE)"),
              file=sys.stderr, flush=True)

    async def __is_ready__(self) -> bool:
        """/readyz: whether the scorer is ready, answered within READY_PROBE_S seconds whatever the scorer
        is doing (starting, loading the model, gone)."""
        from _bentoml_impl.client import RemoteProxy

        if not isinstance(self.scorer, RemoteProxy):  # in-process (tests, `to_asgi`): a local instance
            return await self.scorer.__is_ready__()
        try:
            return await asyncio.wait_for(self.scorer.is_ready(READY_PROBE_S), READY_PROBE_S + 1)
        except Exception:  # not up yet, refused, reset, timed out: all mean "not ready"
            return False

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
            return _error(422, "give exactly one of 'history' (a list of item ids or titles, or {item_id, "
                               "timestamp}) or 'user_id'")
        req = ScoreRequest(history=r.history, user_id=r.user_id, k=r.k, exclude_seen=r.exclude_seen, explain=r.explain)
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

    # tags: BentoML's group for its own APIs ("Service APIs"), so the docs page shows this beside POST /items
    @ITEM_ROUTES.get("/{item_id:path}", response_model=ItemDetail, tags=["Service APIs"],
                     summary="One item of the served model's catalogue",
                     responses={404: {"description": 'not in the catalogue: {"error": "... Fix: ..."}'}})
    async def item(self, item_id: str):
        """The item with this id: its title, its interactions in the model's data, its popularity rank and
        the score the popularity fallback gives it. 404 with a message for an id the model does not know
        (naming the id to send when the text is an item's exact title)."""
        out = await self._call("item", item_id=item_id)
        out = out if isinstance(out, ItemResult) else ItemResult.model_validate(out)
        if out.error is not None:
            return _error(out.status_code, out.error)
        return out.result


def _fix_media_types(service) -> None:
    """Pin each API's response media type to the one BentoML derives for it. For a root-model output
    (`score` returns a list) BentoML 1.4.40 derives it on every response by building a TypeAdapter and a
    JSON schema of the whole output type (IOMixin.mime_type): ~0.6 ms of the scorer's event loop per
    batch on the 2-core dev VM, the largest serving cost after the model. The value never changes."""
    for api in service.apis.values():
        if api.output_spec.media_type is None:
            api.output_spec.media_type = api.output_spec.mime_type()


# Part of defining the services (no environment, no store): the media types, and the middleware with each
# route's fields for its messages (it reads its body limit when BentoML builds the app).
_fix_media_types(LLMSRecScorer)
_fix_media_types(LLMSRecService)
# BearerAuth first: outermost, so a request without the token learns nothing else (no 413, 415 or 422).
LLMSRecService.add_asgi_middleware(BearerAuth)
LLMSRecService.add_asgi_middleware(RequestGuard, fields={
    api.route: list(api.input_spec.model_fields) for api in LLMSRecService.apis.values()})
LLMSRecService.add_asgi_middleware(OpenAPIInfo)
