"""The HTTP contract: request and response bodies, their validation, and the 4xx answers.

- `RecommendRequest` and `ItemsRequest` are the bodies of POST /recommend and POST /items. Both are
  strict: a misspelt field or a value of the wrong type is a 422 with one line per problem, never
  silently read as something else. A bad item id or timestamp gets one message naming the value and
  the fix (`_item_id`, `_timestamp`).
- `Recommendation` and `ItemsPage` are the answers; `ScoreRequest`/`ScoreResult` are what the public
  service and the scorer send each other (components/serving/service.py).
- `RequestGuard` is the public service's ASGI middleware for what BentoML would not classify: 400 for a
  repeated Content-Type (or Content-Length, ...) header, 413 for a body over `LLMSREC_MAX_BODY_BYTES`, 415
  for a Content-Type other than JSON, and 422 (instead of BentoML's 400) for a well-formed body with wrong
  fields or values.

No BentoML and no model here: importing this module reads nothing.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

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

from components.serving.settings import ServingSettings

#: longest history entry: an entry may be a title, and catalogue titles run long (Amazon's reach ~700 characters)
MAX_ITEM_ID_CHARS = 1024
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
    """An item id or title as sent: a string (stripped, 1..MAX_ITEM_ID_CHARS characters) or an integer, never
    coerced.

    One validator instead of a `str | int` union, so a bad id gets one error that says what an id is,
    not one error per union branch."""
    if isinstance(value, str):
        stripped = value.strip()
        if 1 <= len(stripped) <= MAX_ITEM_ID_CHARS:
            return stripped
        raise PydanticCustomError("item_id", "an item id or title is 1 to {most} characters, this one has {n}. Fix: "
                                  "send ids or titles from the model's catalogue (POST /items lists them)",
                                  {"most": MAX_ITEM_ID_CHARS, "n": len(stripped)})
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise PydanticCustomError("item_id", "an item id is a string or an integer, not {kind}. Fix: send ids (or exact "
                              "titles) from the model's catalogue, e.g. \"I00001\" (POST /items lists them)",
                              {"kind": _json_kind(value)})


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


#: what `score` is, in the OpenAPI spec and docs/serving.md
SCORE_DESCRIPTION = (
    "the probability, under the answering ranker, that this is the user's next item: a softmax over the whole "
    "catalogue (seen items included, so the items returned may sum to less than 1), from 0 to 1. For the model "
    "it is the softmax of its dot-product scores (user vector . item vector), the distribution its retrieval "
    "loss trains; for the popularity fallback it is the item's share of the interactions in the model's data "
    "(add-one smoothed), i.e. the softmax of log-popularity. Both rankers are thus on one scale: comparable "
    "between items and between responses")
#: how `because` is computed, in the OpenAPI spec and docs/serving.md
BECAUSE_DESCRIPTION = (
    "with explain=true: the (at most 3) history items of prompt_history nearest to this item in the space the model scores "
    "in, most similar first: the cosine between their item vectors (f_item, the vectors a user vector is "
    "multiplied with to score). An association the model has learnt (users who had these went on to this), not "
    "a causal attribution: the user vector is the LLM's reading of the whole prompt. Empty for the popularity "
    "fallback (no history); null when explain is false")


class Contribution(BaseModel):
    item_id: str = Field(description="a history item's id")
    title: str
    similarity: float = Field(description="cosine between this history item's and the recommended item's vectors, "
                                          "-1 to 1 (1: the model treats them as the same)")


class RecommendedItem(BaseModel):
    item_id: str
    title: str
    score: float = Field(description=SCORE_DESCRIPTION)
    because: list[Contribution] | None = Field(default=None, description=BECAUSE_DESCRIPTION)


class HistoryEntry(BaseModel):
    item_id: str
    title: str
    timestamp: int = Field(description="Unix seconds the model was shown: the one sent, or the model's last data "
                                       "day for an item sent without one")


class Recommendation(BaseModel):
    model: str = Field(description="the BentoML tag of the model that answered")
    status: str = Field(description="'passed' (released by the gate) or 'provisional' (first model, gate failed)")
    items: list[RecommendedItem]
    unknown_items: list[str] = Field(description="history entries that are neither an item id nor an exact title "
                                                 "of the model's catalogue: not used (a history with no known "
                                                 "entry at all is refused with 422 instead)")
    history_used: int = Field(description="most recent known history items the model read (its window)")
    prompt_history: list[HistoryEntry] = Field(
        default_factory=list, description="the history items the model read, oldest first: unknown entries "
                                          "removed, cut to the model's window (history_used of them), each with its "
                                          "title and the timestamp used")
    fallback: str | None = Field(default=None, description="'popularity' when the history was empty (a cold start): "
                                                           "the items are the most popular of the model's data")


class RecommendRequest(BaseModel):
    """POST /recommend's body. Strict: a misspelt field (`exclude_seem`) or a value of the wrong type
    (`"k": "5"`, `"k": true`, `"exclude_seen": "no"`) is a 422, never silently read as something else."""

    model_config = ConfigDict(extra="forbid")
    history: Annotated[list[HistoryItem] | None, Field(
        description="the user's items, oldest first: item ids or exact titles (an id wins where one is both), or "
                    "{item_id, timestamp} objects. Entries the catalogue does not know come back in unknown_items; "
                    "if none is known the request is refused (422). Empty: the popularity ranking",
        examples=[["I00010", "I00011", "I00012"]])] = None
    user_id: Annotated[str | None, Field(description="a known user: their history comes from the data")] = None
    k: Annotated[StrictInt, Field(ge=1, le=100, description="how many items to return")] = 10
    exclude_seen: Annotated[StrictBool, Field(description="leave out every item of the history (then fewer than k "
                                                          "items come back when fewer unseen ones are left)")] = True
    explain: Annotated[StrictBool, Field(description="add `because` to each item: the history items most similar to "
                                                     "it in the model's scoring space (see RecommendedItem)")] = False


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


class ItemDetail(BaseModel):
    """GET /items/{item_id}: what the served model knows of one item."""

    item_id: str
    title: str
    interactions: int = Field(description="how often the item occurs in the model's data (its users' histories)")
    popularity_rank: int = Field(description="1 for the item with the most interactions (ties share a rank)")
    popularity_score: float = Field(description="the score the popularity fallback gives it (see RecommendedItem.score)")
    model: str = Field(description="the BentoML tag of the model that answered")


class ScoreRequest(BaseModel):
    """One /recommend call as the scorer receives it (the public API has validated it)."""

    history: list[HistoryItem] | None = None
    user_id: str | None = None
    k: int = 10
    exclude_seen: bool = True
    explain: bool = False


class ScoreResult(BaseModel):
    status_code: int = 200
    error: str | None = None
    result: Recommendation | None = None


class ItemResult(BaseModel):
    """The scorer's answer to one item lookup: the item, or a status and message."""

    status_code: int = 200
    error: str | None = None
    result: ItemDetail | None = None


#: headers a request may carry once: each is read by both RequestGuard and BentoML (or the HTTP server)
SINGLE_HEADERS = (b"content-type", b"content-length", b"content-encoding", b"transfer-encoding")


class RequestGuard:
    """ASGI middleware for the public service: client errors BentoML would not classify.

    - 400 when a header that may appear once (SINGLE_HEADERS) is repeated;
    - 413 when the body is larger than `max_body` bytes (by Content-Length, or counted as it streams);
    - 415 when an API route is sent a Content-Type other than JSON (BentoML would read form data or pickles
      as other inputs; a request without the header is read as JSON, as BentoML does);
    - BentoML answers every pydantic failure with 400. Here malformed JSON stays 400 and a well-formed
      body with wrong types or out-of-range values (k > 100, a string for k, ...) or an unknown field
      becomes 422, with one readable line per problem (an unknown field's line lists the route's fields).
    """

    def __init__(self, app, fields: dict[str, list[str]] | None = None, max_body: int | None = None):
        # BentoML builds its middleware when the app starts: the limit is read then, not at import.
        if max_body is None:
            max_body = ServingSettings.from_env().max_body_bytes
        self.app, self.max_body, self.fields = app, max_body, fields or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        raw = scope.get("headers") or []
        if refused := self._repeated(raw):
            return await self._send_json(send, 400, refused)
        headers = dict(raw)
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
    def _repeated(headers: list[tuple[bytes, bytes]]) -> dict[str, str] | None:
        """The 400 body for a request that repeats a header that may appear once (SINGLE_HEADERS), else None.
        This middleware and BentoML would each read one of the copies (a dict keeps the last, Starlette
        returns the first): multipart first and JSON second passed the 415 check here, then BentoML parsed
        the body as a form and answered 500."""
        names = [k.lower() for k, _ in headers]
        for name in SINGLE_HEADERS:
            if (n := names.count(name)) > 1:
                shown = name.decode().title()
                return {"error": f"{n} {shown} headers; a request has at most one. Fix: send one {shown} header"
                                 + (" (Content-Type: application/json)" if name == b"content-type" else "")}
        return None

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
