"""`bentoml serve` as an operator starts it: from cold, on this machine only, behind a bearer token.

One real server (the fixture model, the real LLM), probed on /readyz from the moment it is started; then
who may call what on it, and what a client gets for headers the service cannot read one way only. Bad
settings: `bentoml serve` itself must stop with one line naming the variable, before any service starts.
LLMSREC_OPEN_ENDPOINTS is covered in-process (tests/serving/test_service.py), and the token's settings in
tests/serving/test_settings.py.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import REPO
from tests.serving.conftest import free_port, stage_env

TOKEN = secrets.token_urlsafe(32)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: a probe's own limit: far above what an answer takes, far below the 121 s it used to hang
PROBE_TIMEOUT_S = 15
#: what "at once" allows a probe once the public service is up: its own probe of the scorer (READY_PROBE_S,
#: 2 s) and a margin for a 2-core machine that is loading a model meanwhile
ANSWER_S = 3.5


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _serve_env(home: Path, **settings: str) -> dict:
    env = {k: v for k, v in stage_env(home).items() if not k.startswith(("LLMSREC_", "BENTOML_HOST"))}
    return {**env, "LLMSREC_TORCH_THREADS": "1", **settings}


@pytest.fixture(scope="module")
def cold_server(promoted_home, tmp_path_factory):
    """`bentoml serve --port P` (no --host) with a token file, and every /readyz probe sent while it started:
    (seconds since the start, HTTP status or "refused" or "timeout", seconds the probe took)."""
    import httpx

    tmp = tmp_path_factory.mktemp("served")
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o640)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "--port", str(port)], cwd=REPO,
                                env=_serve_env(promoted_home, LLMSREC_API_TOKEN_FILE=str(token_file)),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    probes: list[tuple[float, int | str, float]] = []
    t0 = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"bentoml serve exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            if time.monotonic() - t0 > 300:
                raise AssertionError(f"not ready after 300 s; probes: {probes}")
            sent = time.monotonic()
            try:
                status: int | str = httpx.get(f"{url}/readyz", timeout=PROBE_TIMEOUT_S).status_code
            except httpx.ConnectError:  # before `bentoml serve` has opened its socket
                status = "refused"
            except httpx.TimeoutException:
                status = "timeout"
            probes.append((round(sent - t0, 2), status, round(time.monotonic() - sent, 2)))
            if status == 200:
                break
            time.sleep(0.25)
        yield SimpleNamespace(url=url, port=port, proc=proc, probes=probes, log=log_path)
    finally:
        _stop(proc)


@pytest.mark.slow
@pytest.mark.real_llm
def test_readyz_answers_at_once_while_the_model_loads(cold_server):
    """Probed from the start, /readyz is refused (no socket yet) or answered: 503 while the model loads, then
    200. It used to hang (121 s, then a 500) while the scorer loaded its model. The first probe after the
    socket opens may wait while the public service's process starts (imports), not for the model."""
    probes = cold_server.probes
    statuses = [status for _, status, _ in probes]
    assert set(statuses) <= {"refused", 503, 200}, probes
    answered = next(i for i, status in enumerate(statuses) if isinstance(status, int))
    assert statuses[-1] == 200 and 503 in statuses[answered:], probes  # answers during the load, then ready
    assert "refused" not in statuses[answered:], probes
    # once the public service is up, every probe is answered within its own short probe of the scorer
    assert max(took for _, _, took in probes[answered + 1:]) < ANSWER_S, probes


@pytest.mark.slow
@pytest.mark.real_llm
def test_bentoml_serve_listens_on_this_machine_only(cold_server):
    """No --host: 127.0.0.1 (BentoML's default is every interface, 0.0.0.0), and the log says what is open."""
    import psutil

    listening = {c.laddr.ip for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == cold_server.port}
    assert listening == {"127.0.0.1"}, listening
    log = cold_server.log.read_text()
    assert "bearer token required (open: /livez, /healthz, /readyz)" in log, log[-3000:]
    assert TOKEN not in log


@pytest.mark.slow
@pytest.mark.real_llm
def test_every_endpoint_but_the_probes_needs_the_token(cold_server):
    import httpx

    url = cold_server.url
    page = httpx.post(f"{url}/items", json={"limit": 3}, headers=AUTH, timeout=60)
    assert page.status_code == 200, page.text
    body = {"history": [i["item_id"] for i in page.json()["items"]], "k": 2}

    refused = httpx.post(f"{url}/recommend", json=body, timeout=60)
    assert refused.status_code == 401 and "this endpoint needs a bearer token. Fix: send the header " \
        "Authorization: Bearer TOKEN" in refused.json()["error"], refused.text
    assert refused.headers["www-authenticate"] == 'Bearer realm="llmsrec"'
    for headers, says, code in (
            ({"Authorization": f"Bearer {TOKEN[:-1]}x"}, "the bearer token is not the server's", "invalid_token"),
            ({"Authorization": f"Basic {TOKEN}"}, "is not 'Bearer TOKEN'", "invalid_request"),
            ([("Authorization", f"Bearer {TOKEN}"), ("Authorization", "Bearer other-token-of-enough-length")],
             "2 Authorization headers", "invalid_request")):
        r = httpx.post(f"{url}/recommend", json=body, headers=headers, timeout=60)
        assert r.status_code == 401 and says in r.json()["error"], r.text
        assert r.headers["www-authenticate"] == f'Bearer realm="llmsrec", error="{code}"'
    # no 422, 413 or 415 before authentication: an unauthenticated client learns nothing of the API
    assert httpx.post(f"{url}/recommend", json={"k": 500}, timeout=60).status_code == 401
    assert httpx.post(f"{url}/items", json={"limit": 2}, timeout=60).status_code == 401

    ok = httpx.post(f"{url}/recommend", json=body, headers=AUTH, timeout=60)
    assert ok.status_code == 200 and len(ok.json()["items"]) == 2, ok.text
    # probes open (the default), metrics and the OpenAPI pages not
    for path in ("/readyz", "/livez", "/healthz"):
        assert httpx.get(f"{url}{path}").status_code == 200, path
    for path in ("/metrics", "/docs.json", "/"):
        assert httpx.get(f"{url}{path}").status_code == 401, path
        assert httpx.get(f"{url}{path}", headers=AUTH).status_code == 200, path


@pytest.mark.slow
@pytest.mark.real_llm
@pytest.mark.parametrize("headers", [
    [("content-type", "multipart/form-data; boundary=x"), ("content-type", "application/json")],
    [("content-type", "application/json"), ("content-type", "multipart/form-data; boundary=x")],
    [("content-type", "application/json"), ("content-type", "application/json")],
    [("content-type", "application/json"), ("content-encoding", "gzip"), ("content-encoding", "identity")],
], ids=["multipart-then-json", "json-then-multipart", "json-twice", "encoding-twice"])
def test_a_repeated_header_is_a_400_never_a_500(cold_server, headers):
    """Multipart first and JSON second passed the guard (it read the last Content-Type) and BentoML parsed the
    body as a form (it reads the first): HTTP 500."""
    import httpx

    r = httpx.post(f"{cold_server.url}/recommend", content=b'{"history": [], "k": 2}', headers=[*headers, *AUTH.items()],
                   timeout=60)
    assert r.status_code == 400, r.text
    assert "headers; a request has at most one. Fix: send one" in r.json()["error"], r.text


@pytest.mark.slow
@pytest.mark.parametrize(("setting", "value", "says"), [
    # the GPU case on a GPU host: an index past the last GPU
    ("LLMSREC_DEVICE", "cuda", "LLMSREC_DEVICE='cuda': no CUDA GPU is visible to this process"),
    ("LLMSREC_MAX_BATCH", "0", "LLMSREC_MAX_BATCH='0': input should be greater than or equal to 1"),
    ("LLMSREC_MAX_BODY_BYTES", "10", "LLMSREC_MAX_BODY_BYTES='10': input should be greater than or equal to 1024"),
    ("LLMSREC_DEVCE", "cpu", "LLMSREC_DEVCE: is not a serving setting (did you mean LLMSREC_DEVICE?)"),
    ("LLMSREC_MODEL_TAG", "llmsrec:nosuchversion", "LLMSREC_MODEL_TAG='llmsrec:nosuchversion': no such model in the "
                                                   "store at"),
    ("LLMSREC_API_TOKEN_FILE", "/nonexistent/token", "LLMSREC_API_TOKEN_FILE='/nonexistent/token': cannot be read"),
], ids=["device", "max_batch", "max_body_bytes", "misspelt", "model_tag", "token_file"])
def test_a_bad_setting_stops_bentoml_serve_naming_the_variable(promoted_home, tmp_path, setting, value, says):
    """A bad setting ends `bentoml serve` at once, exit 1, with one line naming the variable, and no service
    process is started. LLMSREC_DEVICE=cuda on a CPU host used to pass the start, then the scorer crashed on
    loading every ~10 s (blaming params.yaml) while the public server stayed up; LLMSREC_MAX_BATCH and
    LLMSREC_MAX_BODY_BYTES likewise crash-looped their service."""
    import torch

    if setting == "LLMSREC_DEVICE" and torch.cuda.is_available():
        value, says = "cuda:99", "LLMSREC_DEVICE='cuda:99': this host has"
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "--port", str(free_port())], cwd=REPO,
                                env=_serve_env(promoted_home, **{setting: value}), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"bentoml serve still running after 90 s with {setting}={value}:\n{log.read_text()[-3000:]}")
    finally:
        _stop(proc)
    text = log.read_text()
    assert proc.returncode == 1, text[-3000:]
    assert f"ERROR [serve] {says}" in text and "Fix: " in text, text[-3000:]
    assert "Traceback" not in text and "Starting production" not in text, text[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(("make_args", "host"), [((), "127.0.0.1"), (("AIRFLOW_HOST=0.0.0.0",), "0.0.0.0")],
                         ids=["default", "exposed"])
def test_make_airflow_listens_on_this_machine_unless_told(tmp_path, make_args, host):
    """`make airflow` starts `airflow standalone`, whose UI and API listened on every interface (Airflow's
    [api] host defaults to 0.0.0.0). What make would run, with Airflow's own reading of the host it gets."""
    plan = subprocess.run(["make", "-n", "airflow", *make_args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert plan.returncode == 0, plan.stderr
    standalone = next(line for line in plan.stdout.splitlines() if line.rstrip().endswith("airflow standalone"))
    env = dict(word.split("=", 1) for word in standalone.split() if word.startswith("AIRFLOW"))
    assert env["AIRFLOW__API__HOST"] == host, standalone
    env["AIRFLOW_HOME"] = str(tmp_path)  # never the repository's .airflow
    read = subprocess.run([sys.executable, "-m", "airflow", "config", "get-value", "api", "host"], cwd=tmp_path,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    # The value is the last line: the Kubernetes provider 10.5 (the newest kfp's kubernetes<31 allows) has every
    # `airflow` command log a compatibility warning to stdout first (docs/deploy.md: Kubernetes).
    assert read.returncode == 0 and read.stdout.strip().splitlines()[-1] == host, read.stdout + read.stderr
