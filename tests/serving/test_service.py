"""The service: in-process through its ASGI app, then a real `bentoml serve`, then `bentoml build`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO
from tests.serving.conftest import bentoml_store, free_port, stage_env


@pytest.fixture(scope="module")
def client(promoted_home):
    """The public service's ASGI app in this process (its scorer dependency is a local instance)."""
    from starlette.testclient import TestClient

    from components.serving.service import LLMSRecService

    with bentoml_store(promoted_home), TestClient(LLMSRecService.to_asgi()) as c:
        # The scorer loads in the background: /readyz says when (and no other load overlaps this one)
        deadline = time.monotonic() + 300
        while (status := c.get("/readyz").status_code) != 200:
            assert status == 503 and time.monotonic() < deadline, status
            time.sleep(0.2)
        yield c


def test_scorer_loads_and_runs_the_model_in_one_thread_and_answers_as_the_scorer_does(client, catalogue,
                                                                                     monkeypatch):
    """On a CPU the scorer service loads and runs the model in its one model thread (a second thread
    running torch slows every pass), on a fresh event loop too; its answers are the Scorer's own."""
    import asyncio
    import threading

    from components.serving.packaged import PackagedModel
    from components.serving.schema import HistoryItem, ScoreRequest
    from components.serving.service import LLMSRecScorer

    torch_threads: list[str] = []
    for name in ("load", "recommend"):
        original = getattr(PackagedModel, name)

        def record(*args, _original=original, **kwargs):
            torch_threads.append(threading.current_thread().name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(PackagedModel, name, record)  # `load` stays callable on the class: its original is bound
    ids = catalogue[0]
    requests = [ScoreRequest(history=[HistoryItem(item_id=i) for i in ids[:5]], k=5), ScoreRequest(history=[], k=3)]
    scorer = LLMSRecScorer()
    assert scorer.score_on_loop is False
    served = [r.model_dump() for r in asyncio.run(scorer.score(requests))]
    asyncio.run(scorer.score(requests))  # a second event loop, as a restarted worker would have
    # load, warm-up and two calls, all in the model thread
    assert torch_threads == ["llmsrec-model_0"] * 4, torch_threads
    assert served == [r.model_dump() for r in scorer._scorer.score(requests)]
    assert len(served[0]["result"]["items"]) == 5 and served[1]["result"]["fallback"] == "popularity"


def test_importing_the_service_reads_nothing(tmp_path):
    """Importing the service modules reads no setting and touches no store: a bad setting and an empty
    BentoML home pass the import, and fail only when a service is built."""
    code = ("import components.serving.service as s, components.serving.scorer, components.serving.schema\n"
            "from components.errors import ConfigError\n"
            "try:\n    s.LLMSRecScorer()\nexcept ConfigError as e:\n    print('refused:', e)\n")
    env = {**os.environ, "LLMSREC_MAX_BATCH": "0", "BENTOML_HOME": str(tmp_path / "home"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused: LLMSREC_MAX_BATCH='0': input should be greater than or equal to 1. Fix: set it to an integer " \
           "from 1 to 256" in out.stdout
    assert not (tmp_path / "home").exists()


def test_the_model_is_declared_with_bentoml_s_public_bentomodel_and_resolved_when_asked(tmp_path):
    """The scorer declares its model with BentoML's public `bentoml.models.BentoModel` (no private base
    class); the tag is the registry's, looked up each time BentoML asks, so an empty store is an error then
    and not when the service class is made."""
    import bentoml

    from components.errors import DataError
    from components.serving.service import LLMSRecScorer

    (ref,) = LLMSRecScorer.models
    assert isinstance(ref, bentoml.models.BentoModel) and ref is LLMSRecScorer.inner.model_ref
    with bentoml_store(tmp_path / "empty"), pytest.raises(DataError, match="no production LLM-SRec model"):
        ref.to_info()


def test_startup_objects_are_frozen_out_of_the_collector(client):
    """Both services freeze what startup made (model, tokenizer, libraries), so a full garbage collection
    no longer walks them while requests wait (it took ~230 ms in the scorer on the 2-core VM)."""
    import gc

    from components.serving.service import LLMSRecScorer, LLMSRecService

    for make in (LLMSRecScorer, LLMSRecService):
        gc.unfreeze()
        assert gc.get_freeze_count() == 0
        made = make()
        if make is LLMSRecScorer:
            made.wait_until_loaded()  # the scorer loads (and freezes) in its model thread
        assert gc.get_freeze_count() > 50_000, make  # the libraries alone are > 100k objects


def test_media_types_pinned_to_what_bentoml_derives():
    """Every API's response media type is fixed when the services are defined (BentoML would rebuild a
    JSON schema of the output type per response to find it), and to exactly the value BentoML derives."""
    from components.serving.service import LLMSRecScorer, LLMSRecService

    for service in (LLMSRecScorer, LLMSRecService):
        for name, api in service.apis.items():
            spec = api.output_spec
            pinned, spec.media_type = spec.media_type, None
            try:
                derived = spec.mime_type()
            finally:
                spec.media_type = pinned
            assert pinned == derived == "application/json", (service.name, name)


@pytest.fixture(scope="module")
def catalogue(pipeline_outputs):
    items = pd.read_parquet(pipeline_outputs / "data" / "prepared" / "items.parquet").sort_values("idx")
    users = pd.read_parquet(pipeline_outputs / "data" / "prepared" / "users.parquet")
    lengths = pd.read_parquet(pipeline_outputs / "data" / "prepared" / "sequences.parquet").set_index("user_idx")["items"]
    # users with at least 10 items first: their whole window is history
    users = users.assign(n=users["idx"].map(lengths.map(len))).sort_values("n", ascending=False, kind="stable")
    return items["item_id"].tolist(), dict(zip(items["item_id"], items["title"], strict=True)), users["user_id"].tolist()


def production(home: Path) -> str:
    return json.loads((home / "registry" / "llmsrec.json").read_text())["production"]


def live_package():
    """The package the in-process service (the `client` fixture) is serving."""
    import bentoml

    return bentoml.get_current_service().scorer._scorer.packaged


@pytest.mark.real_llm
def test_recommend_in_process(client, catalogue, promoted_home):
    ids, titles, users = catalogue
    history = ids[:3]
    r = client.post("/recommend", json={"history": history + ["NOT-AN-ITEM"], "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == production(promoted_home) and body["status"] == "passed"
    assert body["unknown_items"] == ["NOT-AN-ITEM"] and body["fallback"] is None and body["history_used"] == 3
    # the history that reached the prompt, with titles, dated the model's last data day (none was sent)
    last_day = live_package().default_timestamp
    assert body["prompt_history"] == [{"item_id": h, "title": titles[h], "timestamp": last_day} for h in history]
    assert len(body["items"]) == 5
    assert all(i["title"] == titles[i["item_id"]] and i["because"] is None for i in body["items"])
    assert not {i["item_id"] for i in body["items"]} & set(history)  # exclude_seen defaults to true
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores), scores

    # The same history named by exact titles (one with stray spaces, as a form might send it) is the same request
    by_title = client.post("/recommend", json={"history": [titles[history[0]], f"  {titles[history[1]]} ",
                                                           history[2], "NOT-AN-ITEM"], "k": 5}).json()
    assert by_title["prompt_history"] == body["prompt_history"] and by_title["unknown_items"] == ["NOT-AN-ITEM"]
    assert [i["item_id"] for i in by_title["items"]] == [i["item_id"] for i in body["items"]]

    # {item_id, timestamp} objects, numeric ids for string catalogues are matched as text, seen items allowed;
    # the whole catalogue's scores are a distribution over it
    r = client.post("/recommend", json={"history": [{"item_id": h, "timestamp": 1_650_000_000 + i}
                                                    for i, h in enumerate(history)],
                                        "k": len(ids), "exclude_seen": False})
    assert r.status_code == 200 and len(r.json()["items"]) == len(ids)
    assert sum(i["score"] for i in r.json()["items"]) == pytest.approx(1, abs=1e-4)
    assert [h["timestamp"] for h in r.json()["prompt_history"]] == [1_650_000_000 + i for i in range(3)]

    # A known user's history comes from the data
    r = client.post("/recommend", json={"user_id": users[0], "k": 3})
    assert r.status_code == 200 and r.json()["history_used"] == 10 and len(r.json()["items"]) == 3
    assert len(r.json()["prompt_history"]) == 10


@pytest.mark.real_llm
def test_explain_names_the_read_items_nearest_in_the_scoring_space(client, catalogue):
    """`because` is, for each item, the history items of the prompt with the highest cosine between their
    item-table vectors and its own (recomputed here from the served model's table), best first."""
    import torch

    from components.serving.packaged import EXPLAIN_TOP
    from components.serving.schema import BECAUSE_DESCRIPTION

    ids, titles, _ = catalogue
    history = ids[5:10] + ids[5:7]  # repeats: an item read twice is named once
    body = client.post("/recommend", json={"history": history, "k": 4, "explain": True}).json()
    table = torch.nn.functional.normalize(live_package().model.item_table.float(), dim=-1)
    index = live_package().index
    assert f"at most {EXPLAIN_TOP}" in BECAUSE_DESCRIPTION
    for item in body["items"]:
        want = sorted(((float(table[index[item["item_id"]]] @ table[index[h]]), h) for h in dict.fromkeys(history)),
                      reverse=True)[:EXPLAIN_TOP]
        got = item["because"]
        assert [g["item_id"] for g in got] == [h for _, h in want], (item, want)
        assert [g["similarity"] for g in got] == pytest.approx([c for c, _ in want], abs=1e-4)
        assert all(g["title"] == titles[g["item_id"]] for g in got)
    # the popularity fallback has no history to point at
    cold = client.post("/recommend", json={"history": [], "k": 2, "explain": True}).json()
    assert [i["because"] for i in cold["items"]] == [[], []]


@pytest.mark.real_llm
def test_history_window_and_fallback(client, catalogue):
    ids, titles, _ = catalogue
    long = (ids * 3)[:35]
    r = client.post("/recommend", json={"history": long, "k": 3})
    assert r.status_code == 200 and r.json()["history_used"] == 10  # truncated to the model's window
    assert [h["item_id"] for h in r.json()["prompt_history"]] == long[-10:]  # the ones that reached the prompt
    # The window is the last 10: the same last 10 items give the same ranking as the long history
    same = client.post("/recommend", json={"history": long[-10:], "k": 3, "exclude_seen": False}).json()
    full = client.post("/recommend", json={"history": long, "k": 3, "exclude_seen": False}).json()
    assert [i["item_id"] for i in same["items"]] == [i["item_id"] for i in full["items"]]

    # An empty history is a cold start: the popularity ranking, flagged, its scores each item's share of the
    # interactions (add-one smoothed) -- the same number GET /items/{id} reports, summing to 1 over the catalogue
    r = client.post("/recommend", json={"history": [], "k": len(ids)})
    assert r.status_code == 200
    body = r.json()
    assert body["fallback"] == "popularity" and body["history_used"] == 0 and body["prompt_history"] == []
    assert body["unknown_items"] == [] and len(body["items"]) == len(ids)
    assert sum(i["score"] for i in body["items"]) == pytest.approx(1, abs=1e-4)
    top = body["items"][0]
    about = client.get(f"/items/{top['item_id']}").json()
    interactions = sum(client.get(f"/items/{i}").json()["interactions"] for i in ids)
    assert about["popularity_rank"] == 1 and about["popularity_score"] == top["score"]
    assert top["score"] == pytest.approx((about["interactions"] + 1) / (interactions + len(ids)), rel=1e-5)

    # A history none of whose entries is known is refused, naming them: a popularity answer would pass for a
    # recommendation from that history (a title with a typo used to get 200 and the fallback)
    r = client.post("/recommend", json={"history": ["nope-1", titles[ids[0]].lower() + "x"], "k": 4})
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith("history: none of its 2 entries is an item of llmsrec:")
    assert "'nope-1', " in r.json()["error"] and "Fix: send item ids or exact titles" in r.json()["error"]


@pytest.mark.real_llm
def test_a_title_several_items_share_is_refused_naming_their_ids(client, catalogue, monkeypatch):
    """A title that names two items (Amazon's catalogues have hundreds) is not guessed at."""
    ids, titles, _ = catalogue
    pm = live_package()
    shared = titles[ids[0]]
    monkeypatch.setitem(pm.by_title, shared, [pm.index[ids[0]], pm.index[ids[1]]])  # as a catalogue with a twin
    r = client.post("/recommend", json={"history": [shared, ids[2]]})
    assert r.status_code == 422, r.text
    assert f"{shared!r} is the title of {ids[0]}, {ids[1]}. Fix: send the item id of the one meant" in r.json()["error"]
    assert client.post("/recommend", json={"history": [ids[0], ids[2]], "k": 1}).status_code == 200  # ids still work


@pytest.mark.real_llm
def test_exclude_seen_returns_fewer_than_k_when_the_catalogue_runs_out(client, catalogue):
    ids, _, _ = catalogue
    r = client.post("/recommend", json={"history": ids[:-3], "k": 10})
    assert r.status_code == 200, r.text
    assert sorted(i["item_id"] for i in r.json()["items"]) == sorted(ids[-3:])  # only the unseen ones, no padding


@pytest.mark.parametrize("payload, status, says", [
    ({"history": ["x"], "k": 0}, 422, "k:"),
    ({"history": ["x"], "k": 101}, 422, "k:"),
    ({"history": ["x"], "k": "ten"}, 422, "k:"),
    # Strict types: nothing is coerced into a value the client did not send.
    ({"history": ["x"], "k": "5"}, 422, "k:"),
    ({"history": ["x"], "k": True}, 422, "k:"),
    ({"history": ["x"], "k": 2.0}, 422, "k:"),
    ({"history": ["x"], "exclude_seen": "no"}, 422, "exclude_seen:"),
    ({"history": ["x"], "exclude_seen": 0}, 422, "exclude_seen:"),
    # A misspelt field is an error, not silently ignored; the message lists the real ones.
    ({"history": ["x"], "exclude_seem": False}, 422, "exclude_seem: unknown field. Fix: use only history, user_id, k, "
                                                    "exclude_seen, explain"),
    ({"history": ["I00001"], "explain": "yes"}, 422, "explain:"),
    ({"history": "I00001"}, 422, "history"),
    ({"history": [{"item": "x"}]}, 422, "history.0.item: unknown field. Fix: use only item_id, timestamp"),
    ({"history": [{"timestamp": 5}]}, 422, "history.0.item_id: required in every history object. Fix:"),
    ({"history": [{"item_id": "x", "timestamp": -5}]}, 422, "timestamp"),
    ({"history": [None]}, 422, "history.0.item_id: an item id is a string or an integer, not null. Fix:"),
    ({"history": [["I00001"]]}, 422, "history.0.item_id: an item id is a string or an integer, not an array"),
    ({"history": ["  "]}, 422, "history.0.item_id: an item id or title is 1 to 1024 characters, this one has 0"),
    ({"history": ["x" * 1025]}, 422, "history.0.item_id: an item id or title is 1 to 1024 characters, this one has 1025"),
    ({"history": ["x", "y"]}, 422, "history: none of its 2 entries is an item of"),
    ({"history": [{"item_id": True}]}, 422, "history.0.item_id: an item id is a string or an integer, not a boolean"),
    ({"k": 5}, 422, "exactly one of"),
    ({"history": ["x"], "user_id": "U1"}, 422, "exactly one of"),
    ({"user_id": "nobody"}, 404, "not in the data"),
])
@pytest.mark.real_llm
def test_bad_input_gets_4xx_with_a_message(client, payload, status, says):
    r = client.post("/recommend", json=payload)
    assert r.status_code == status, r.text
    assert says in r.json()["error"]


@pytest.mark.parametrize(("timestamp", "says"), [
    (-5, "-5 is not Unix seconds between 0 (1970-01-01) and 32503680000 (3000-01-01). Fix: send Unix seconds (UTC) "
         "as a JSON integer"),
    (32_503_680_001, "32503680001 is not Unix seconds between 0 (1970-01-01) and 32503680000 (3000-01-01). Fix:"),
    (1_650_000_000_000, "it looks like milliseconds: send 1650000000. Fix:"),
    (10 ** 40, "is not Unix seconds between 0"),
    ("2024-01-01", "a date string ('2024-01-01') is not Unix seconds. Fix: send 1704067200"),
    ("yesterday", "a string is not Unix seconds. Fix:"),
    (1.5, "1.5 is not Unix seconds. Fix:"),
    (1_650_000_000.0, "1650000000.0 is a number with a fraction part, not an integer. Fix: send it as 1650000000"),
    (True, "a boolean is not Unix seconds. Fix:"),
    ([1650000000], "an array is not Unix seconds. Fix:"),
    ({"s": 1}, "an object is not Unix seconds. Fix:"),
])
@pytest.mark.real_llm
def test_a_bad_timestamp_gets_one_message_naming_the_field_and_the_fix(client, catalogue, timestamp, says):
    """A bad timestamp used to come back as one error per branch of the history entry's union
    (`history.1.constrained-str: ...; history.1.int: ...; history.1.HistoryItem.timestamp: ...`)."""
    ids = catalogue[0]
    r = client.post("/recommend", json={"history": [ids[0], {"item_id": ids[1], "timestamp": timestamp}]})
    assert r.status_code == 422, r.text
    body = r.json()
    assert len(body["detail"]) == 1, body  # one problem, one error
    assert body["error"].startswith("history.1.timestamp: ") and says in body["error"], body["error"]
    assert not any(noise in body["error"] for noise in ("constrained-str", ".int:", "HistoryItem", "Input should"))
    # the good entries around it still work: a valid timestamp, and none at all
    assert client.post("/recommend", json={"history": [ids[0], {"item_id": ids[1], "timestamp": 1_650_000_000}],
                                           "k": 2}).status_code == 200


@pytest.mark.parametrize(("content", "headers", "status", "says"), [
    (b'{"history": ["I00001"]}', {"content-type": "text/plain"}, 415, "Content-Type 'text/plain' is not accepted. Fix:"),
    (b"history=I00001&k=3", {"content-type": "application/x-www-form-urlencoded"}, 415, "Content-Type: application/json"),
    (b"--x\r\n", {"content-type": "multipart/form-data; boundary=x"}, 415, "is not accepted"),
    (b'["I00001", "I00002"]', {"content-type": "application/json"}, 422, "body: the body must be a JSON object. Fix:"),
    (b"null", {"content-type": "application/json"}, 422, "the body must be a JSON object"),
    (b"\xff\xfe\x00garbage", {"content-type": "application/json"}, 400, "malformed JSON body. Fix:"),
    (b'{"history": ' + b"[" * 5000 + b"]" * 5000 + b"}", {"content-type": "application/json"}, 400, "malformed JSON"),
    (b'{"history": ["I00001"]}', {"content-type": "application/json; charset=utf-8"}, 200, None),
    (b'{"history": ["I00001"]}', {}, 200, None),  # no Content-Type: read as JSON, as BentoML does
    # Headers BentoML reads another way than the guard (it takes the first copy, a dict the last)
    (b'{"history": ["I00001"]}', [("content-type", "multipart/form-data; boundary=x"),
                                  ("content-type", "application/json")], 400, "2 Content-Type headers; a request "
                                                                              "has at most one. Fix:"),
    (b'{"history": ["I00001"]}', [("content-type", "application/json"), ("content-type", "text/plain")], 400,
     "2 Content-Type headers"),
    (b'{"history": ["I00001"]}', {"content-type": "APPLICATION/JSON"}, 200, None),
    (b'{"history": ["I00001"]}', {"content-type": "application/problem+json"}, 200, None),
    (b'{"history": ["I00001"]}', {"content-type": "application/json; charset=latin-1"}, 200, None),
    ('{"history": ["I00001"]}'.encode("utf-16"), {"content-type": "application/json; charset=utf-16"}, 400,
     "malformed JSON body. Fix:"),
    # What Python could hold but not write back into a reply (a lone surrogate; an integer past the 4300 digits
    # Python turns into text) is refused by the JSON parser already: a 400, never a 500 while answering.
    (b'{"history": ["\\ud800"]}', {"content-type": "application/json"}, 400, "malformed JSON body. Fix:"),
    (b'{"user_id": "\\udfff"}', {"content-type": "application/json"}, 400, "malformed JSON body. Fix:"),
    (b'{"history": [' + b"9" * 5000 + b"]}", {"content-type": "application/json"}, 400, "malformed JSON body. Fix:"),
    (b'{"history": ["I00001"], "k": ' + b"9" * 5000 + b"}", {"content-type": "application/json"}, 400, "malformed JSON"),
    (b'{"history": [{"item_id": "I00001", "timestamp": ' + b"9" * 4000 + b"}]}", {"content-type": "application/json"},
     422, "history.0.timestamp: "),
])
@pytest.mark.real_llm
def test_malformed_bodies_get_4xx_with_a_message(client, content, headers, status, says):
    r = client.post("/recommend", content=content, headers=headers)
    assert r.status_code == status, r.text
    if says is not None:
        assert says in r.json()["error"], r.text


@pytest.mark.real_llm
def test_malformed_oversized_and_items(client, catalogue):
    r = client.post("/recommend", content=b'{"history": ["a", ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
    r = client.post("/recommend", content=b"x" * (2 << 20), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["error"]

    ids, titles, _ = catalogue
    page = client.post("/items", json={"limit": 5, "offset": 2}).json()
    assert page["total"] == len(ids) and [i["item_id"] for i in page["items"]] == ids[2:7]
    assert all(i["title"] == titles[i["item_id"]] for i in page["items"])
    assert client.post("/items", json={"offset": len(ids)}).json()["items"] == []
    # one item by id; an unknown one is a 404 naming it (and the id, when what was sent is a title)
    one = client.get(f"/items/{ids[3]}")
    assert one.status_code == 200, one.text
    assert one.json()["item_id"] == ids[3] and one.json()["title"] == titles[ids[3]] and one.json()["interactions"] > 0
    assert 1 <= one.json()["popularity_rank"] <= len(ids) and 0 < one.json()["popularity_score"] < 1
    missing = client.get("/items/NOPE-1")
    assert missing.status_code == 404 and missing.json()["error"] == (
        f"item 'NOPE-1' is not in the catalogue of {one.json()['model']} ({len(ids)} items). Fix: use an item id from "
        "POST /items")
    by_title = client.get(f"/items/{titles[ids[3]]}")
    assert by_title.status_code == 404 and f"is the title of {ids[3]}: send that id." in by_title.json()["error"]
    assert client.post("/items", json={"limit": 0}).status_code == 422
    assert client.post("/items", json={"limit": 5000}).status_code == 422
    for bad, says in (({"limit": "5"}, "limit:"), ({"offset": True}, "offset:"),
                      ({"page": 2}, "page: unknown field. Fix: use only limit, offset")):
        r = client.post("/items", json=bad)
        assert r.status_code == 422 and says in r.json()["error"], r.text
    r = client.post("/items", content=b'{"offset": ' + b"9" * 5000 + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"], r.text


@pytest.mark.parametrize(("open_endpoints", "open_paths", "closed_paths"), [
    (None, ["/livez", "/healthz", "/readyz"], ["/docs.json", "/", "/schema.json"]),
    ("none", [], ["/livez", "/readyz", "/docs.json"]),
    ("readyz,metrics", ["/readyz"], ["/livez", "/docs.json"]),
    ("docs", ["/", "/docs.json", "/schema.json"], ["/readyz", "/livez"]),
])
@pytest.mark.real_llm
def test_open_endpoints_are_configurable(client, catalogue, clean_env, monkeypatch, open_endpoints, open_paths,
                                         closed_paths):
    """The bearer token in front of the real app, as LLMSREC_OPEN_ENDPOINTS sets it up; the API is never
    open. (/metrics is left to the served test, test_server_access.py: in-process BentoML's /metrics hangs.)"""
    import secrets

    from starlette.testclient import TestClient

    from components.serving.auth import BearerAuth
    from components.serving.settings import ServingSettings

    token = secrets.token_urlsafe(24)
    monkeypatch.setenv("LLMSREC_API_TOKEN", token)
    if open_endpoints is not None:
        monkeypatch.setenv("LLMSREC_OPEN_ENDPOINTS", open_endpoints)
    settings = ServingSettings.from_env()
    # the app is already started (the `client` fixture): this client shares it, behind its own BearerAuth
    guarded, auth = TestClient(BearerAuth(client.app, settings.token(), settings.open_paths())), \
        {"Authorization": f"Bearer {token}"}
    for path in open_paths:
        assert guarded.get(path).status_code == 200, path
    for path in closed_paths:
        assert guarded.get(path).status_code == 401, path
        assert guarded.get(path, headers=auth).status_code == 200, path
    body = {"history": catalogue[0][:3], "k": 2}
    assert guarded.post("/recommend", json=body).status_code == 401
    assert guarded.post("/items", json={}).status_code == 401
    r = guarded.post("/recommend", json=body, headers=auth)
    assert r.status_code == 200 and len(r.json()["items"]) == 2, r.text


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"bentoml serve exited {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"not ready after {timeout}s")


def docs_page_text(url: str, work: Path) -> str:
    """The served OpenAPI page (Swagger UI, built by script from /docs.json) as headless Chromium renders it:
    its <title> element, then the text of the DOM after the page's scripts ran."""
    import re

    from tests.browser import chromium

    proc = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={work / 'profile'}", "--virtual-time-budget=15000", "--dump-dom", f"{url}/"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "swagger-ui" in proc.stdout, proc.stderr[-2000:]
    title = re.search(r"<title>.*?</title>", proc.stdout, re.S)
    return (title.group(0) if title else "") + re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", proc.stdout))


@pytest.mark.slow
@pytest.mark.real_llm
@pytest.mark.parametrize("batching", ["1", "0"], ids=["batching", "no-batching"])
def test_bentoml_serve_subprocess(promoted_home, catalogue, tmp_path, batching):
    """A real server, with the scorer's model in its dedicated model thread (the CPU default), with the
    adaptive batcher (the default) and without it (LLMSREC_BATCHING=0); its settings come from the
    environment it was started in."""
    import httpx

    ids, _, _ = catalogue
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("w")
    env = stage_env(promoted_home)
    env["LLMSREC_TORCH_THREADS"] = "1"
    env["LLMSREC_BATCHING"] = batching
    env["LLMSREC_MAX_BODY_BYTES"] = "65536"  # read by the served process's middleware, not at import
    # started as a user starts it, `srec serve` (components/cli.py), in one of the two: it becomes `bentoml serve`
    serve = ([str(Path(sys.executable).with_name("srec")), "serve"] if batching == "0"
             else [sys.executable, "-m", "bentoml", "serve"])
    proc = subprocess.Popen([*serve, "--port", str(port), "--host", "127.0.0.1"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(url, proc)
        tag = production(promoted_home)
        assert httpx.get(f"{url}/livez").status_code == 200
        good = httpx.post(f"{url}/recommend", json={"history": ids[:4], "k": 3}, timeout=60)
        assert good.status_code == 200, good.text
        assert good.json()["model"] == production(promoted_home) and len(good.json()["items"]) == 3
        # concurrent calls share the batcher and each gets its own answer
        with httpx.Client(timeout=60) as c:
            import concurrent.futures as cf

            with cf.ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda i: c.post(f"{url}/recommend", json={"history": ids[i:i + 3], "k": 2}),
                                        range(4)))
        assert all(a.status_code == 200 and len(a.json()["items"]) == 2 for a in answers)
        bad = httpx.post(f"{url}/recommend", json={"history": ids[:2], "k": 500})
        assert bad.status_code == 422 and "k:" in bad.json()["error"]
        assert httpx.post(f"{url}/recommend", content=b"{nope", headers={"content-type": "application/json"}
                          ).status_code == 400
        big = httpx.post(f"{url}/recommend", json={"history": ids * (70_000 // len(ids))})
        assert big.status_code == 413 and "larger than 65536 bytes" in big.json()["error"], big.text
        assert httpx.post(f"{url}/items", json={"limit": 2}).json()["items"][0]["item_id"] == ids[0]
        metrics = httpx.get(f"{url}/metrics").text
        assert "bentoml_service_request_total" in metrics or "bentoml_api_server_request_total" in metrics
        # the scorer's own histograms (read as the serving benchmark reads them): every scored request was
        # in some batch, and the model took time
        from benchmarks.serving import scorer_stats

        stats = scorer_stats(url)
        assert stats["llmsrec_batch_size_sum"] >= 6 and stats["llmsrec_model_seconds_sum"] > 0, stats
        log.flush()
        how = "adaptive, up to 16" if batching == "1" else "off"
        assert f"model on cpu, run on the model thread; batching: {how}" in (tmp_path / "serve.log").read_text()
        # GET /items/{id} is mounted (a FastAPI route) and reaches the scorer process
        one = httpx.get(f"{url}/items/{ids[0]}")
        assert one.status_code == 200 and one.json()["item_id"] == ids[0] and one.json()["model"] == tag, one.text
        assert httpx.get(f"{url}/items/NOPE").status_code == 404
        explained = httpx.post(f"{url}/recommend", json={"history": ids[:3], "k": 2, "explain": True}, timeout=60)
        assert all(len(i["because"]) == 3 for i in explained.json()["items"]), explained.text
        spec = httpx.get(f"{url}/docs.json").json()
        assert {"/recommend", "/items", "/items/{item_id}"} <= set(spec["paths"])
        # The page names the service and the model it serves (BentoML's defaults: the service's name,
        # "This is a Machine Learning Service created with BentoML", version "None")
        from components.serving.service import SERVICE_DESCRIPTION, SERVICE_TITLE

        assert spec["info"] == {"title": SERVICE_TITLE, "version": tag, "description": SERVICE_DESCRIPTION}
        # The documented contract is the enforced one: the five fields, nothing else, k within 1..100.
        body = spec["paths"]["/recommend"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert list(body["properties"]) == ["history", "user_id", "k", "exclude_seen", "explain"]
        assert body["additionalProperties"] is False
        assert (body["properties"]["k"]["minimum"], body["properties"]["k"]["maximum"]) == (1, 100)
        item = spec["components"]["schemas"]["RecommendedItem"]["properties"]
        assert "probability" in item["score"]["description"] and "cosine" in item["because"]["description"]
        if batching == "1":  # once is enough: what a person sees on the docs page, rendered by headless Chromium
            page = docs_page_text(url, tmp_path / "chromium")
            assert SERVICE_TITLE in page and tag in page and "Next-item recommendations from LLM-SRec" in page, page
            assert "One item of the served model's catalogue" in page and "created with BentoML" not in page
            # titled for the browser tab, and no third-party tracker in a visitor's browser
            assert f"<title>{SERVICE_TITLE} ({tag})</title>" in page and "googletagmanager" not in page
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.mark.slow
@pytest.mark.real_llm
@pytest.mark.parametrize(("bentofile", "name", "torch_pin"), [("bentofile.yaml", "llmsrec", "torch==2.13.0+cpu"),
                                                            ("bentofile.gpu.yaml", "llmsrec-gpu", "torch==2.13.0")])
def test_bentoml_build(promoted_home, bentofile, name, torch_pin):
    out = subprocess.run([sys.executable, "-m", "bentoml", "build", "-f", bentofile, "--output", "tag"], cwd=REPO,
                         env=stage_env(promoted_home), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    bentos = promoted_home / "bentos" / name
    built = [p for p in bentos.iterdir() if p.is_dir()]
    assert len(built) == 1
    bento = built[0]
    assert (bento / "src" / "components" / "serving" / "service.py").is_file()
    assert not (bento / "src" / "tests").exists() and not (bento / "src" / "data").exists()
    # the scorer declares exactly the production model: `bentoml export`/`containerize` carry it along
    import yaml

    spec = yaml.safe_load((bento / "bento.yaml").read_text())
    scorer = next(s for s in spec["services"] if s["name"] == "llmsrec_scorer")
    assert [m["tag"] for m in scorer["models"]] == [production(promoted_home)]
    assert spec["entry_service"] == "llmsrec_service"
    # the image listens on its own interfaces (docs/serving.md: Exposure); `bentoml serve` from the repository does not
    assert {"name": "BENTOML_HOST", "value": "0.0.0.0"} in [{k: e.get(k) for k in ("name", "value")}
                                                          for e in spec.get("envs") or []], spec.get("envs")
    reqs = (bento / "env" / "python" / "requirements.txt").read_text().splitlines()
    assert torch_pin in reqs and not [r for r in reqs if r.startswith("torch") and r != torch_pin]
    # the CPU index only where the CPU build is pinned: from it, a GPU image would get a CPU torch
    assert any("download.pytorch.org/whl/cpu" in r for r in reqs) == torch_pin.endswith("+cpu")
