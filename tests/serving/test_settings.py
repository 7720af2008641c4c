"""Serving settings: LLMSREC_* variables, their defaults, the errors bad values get, and their docs."""

from __future__ import annotations

import pytest
import yaml

from components.errors import ConfigError
from components.serving.settings import ServingSettings, env_name
from tests.conftest import REPO


def test_defaults_and_values_from_the_environment(clean_env, monkeypatch):
    s = ServingSettings.from_env()
    assert (s.model_tag, s.batching, s.max_batch, s.max_body_bytes, s.torch_threads, s.device, s.dtype) == (
        None, True, 16, 1 << 20, None, "auto", "auto")
    for name, value in {"LLMSREC_BATCHING": "0", "LLMSREC_MAX_BATCH": "4", "LLMSREC_TORCH_THREADS": "2",
                        "LLMSREC_DEVICE": "cuda:1", "LLMSREC_DTYPE": "bf16", "LLMSREC_MODEL_TAG": "llmsrec:abc123",
                        "LLMSREC_MAX_BODY_BYTES": ""}.items():  # empty: unset
        monkeypatch.setenv(name, value)
    s = ServingSettings.from_env()
    assert (s.batching, s.max_batch, s.torch_threads, s.device, s.dtype, s.model_tag, s.max_body_bytes) == (
        False, 4, 2, "cuda:1", "bf16", "llmsrec:abc123", 1 << 20)


@pytest.mark.parametrize(("name", "value", "says"), [
    ("LLMSREC_BATCHING", "bentoml", "LLMSREC_BATCHING='bentoml': input should be a valid boolean, unable to interpret "
                                    "input. Fix: set it to 1 (on) or 0 (off), or unset it for the default (True)"),
    ("LLMSREC_MAX_BATCH", "0", "LLMSREC_MAX_BATCH='0': input should be greater than or equal to 1. Fix: set it to an "
                               "integer from 1 to 256, or unset it for the default (16)"),
    ("LLMSREC_MAX_BATCH", "lots", "LLMSREC_MAX_BATCH='lots': input should be a valid integer"),
    ("LLMSREC_MAX_BODY_BYTES", "100", "LLMSREC_MAX_BODY_BYTES='100': input should be greater than or equal to 1024"),
    ("LLMSREC_TORCH_THREADS", "-1", "Fix: set it to an integer from 1 to 1024, or unset it for the default (None)"),
    ("LLMSREC_DEVICE", "gpu", "LLMSREC_DEVICE='gpu': string should match pattern"),
    ("LLMSREC_DTYPE", "int8", "LLMSREC_DTYPE='int8': input should be 'auto', 'bf16'"),
    ("LLMSREC_MODEL_TAG", "abc123", "Fix: set it to a version from `srec models`"),
])
def test_a_bad_value_names_the_variable_and_the_fix(clean_env, monkeypatch, name, value, says):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as e:
        ServingSettings.from_env()
    assert says in str(e.value) and "Fix: set it to " in str(e.value), str(e.value)


def test_the_registry_takes_the_pinned_version_from_the_settings(clean_env, monkeypatch, tmp_path):
    """LLMSREC_MODEL_TAG is read in one place, the settings: the registry's serving rule takes the pin from
    them, so a pin they refuse is refused there too, with the same message (not looked up as a version)."""
    from components.serving.registry import serving_candidates

    monkeypatch.setenv("LLMSREC_MODEL_TAG", "abc123")
    with pytest.raises(ConfigError, match=r"^LLMSREC_MODEL_TAG='abc123': string should match pattern .* Fix: set "
                                          r"it to a version from `srec models`"):
        serving_candidates(tmp_path / "home")


def test_every_bad_variable_is_named(clean_env, monkeypatch):
    monkeypatch.setenv("LLMSREC_MAX_BATCH", "0")
    monkeypatch.setenv("LLMSREC_DEVICE", "tpu")
    with pytest.raises(ConfigError, match=r"^LLMSREC_MAX_BATCH='0': .*\(also wrong: LLMSREC_DEVICE\)$"):
        ServingSettings.from_env()


def test_the_serving_docs_and_the_bentofiles_point_to_the_settings():
    """docs/serving.md has a row per variable with its default; both bentofiles point here and
    pin pydantic-settings as constraints.txt does."""
    readme = (REPO / "docs" / "serving.md").read_text()
    rows = {cells[0].strip("`"): cells for line in readme.splitlines()
            if line.lstrip().startswith("| `LLMSREC_") and (cells := [c.strip() for c in line.split("|")[1:-1]])}
    for field, info in ServingSettings.model_fields.items():
        assert env_name(field) in rows, f"docs/serving.md has no row for {env_name(field)}"
        default = info.default
        shown = "unset" if default is None else "1" if default is True else str(default)
        assert rows[env_name(field)][1].split()[0].strip("`") == shown, rows[env_name(field)]
    assert set(rows) == {env_name(f) for f in ServingSettings.model_fields}
    pin = next(line for line in (REPO / "constraints.txt").read_text().splitlines()
               if line.startswith("pydantic-settings=="))
    for bentofile in ("bentofile.yaml", "bentofile.gpu.yaml"):
        text = (REPO / bentofile).read_text()
        assert "components/serving/settings.py" in text and pin in yaml.safe_load(text)["python"]["packages"], bentofile


TOKEN = "Xy7-kP2_qR9.tV4~wZ8+bN1/mL6="  # a valid b64token, 28 characters


def test_a_bad_token_is_refused_without_showing_it(clean_env, monkeypatch):
    """The token is a secret: an error about it gives its length, never its value."""
    for value, says in (("short-secret", "LLMSREC_API_TOKEN=(hidden, 12 characters): string should have at least 16"),
                        ("has a space in it, not a token", "LLMSREC_API_TOKEN=(hidden, 30 characters): a token has only")):
        monkeypatch.setenv("LLMSREC_API_TOKEN", value)
        with pytest.raises(ConfigError) as e:
            ServingSettings.from_env()
        assert says in str(e.value) and value not in str(e.value), str(e.value)


def test_the_token_comes_from_the_variable_or_a_file_never_both(clean_env, monkeypatch, tmp_path):
    assert ServingSettings.from_env().token() is None  # no token: no authentication
    monkeypatch.setenv("LLMSREC_API_TOKEN", TOKEN)
    assert ServingSettings.from_env().token() == TOKEN
    secret = tmp_path / "token"
    secret.write_text(f"  {TOKEN}\n")  # as `echo` or a secret mount leaves it: surrounding whitespace ignored
    monkeypatch.setenv("LLMSREC_API_TOKEN_FILE", str(secret))
    with pytest.raises(ConfigError, match=r"^LLMSREC_API_TOKEN_FILE: is set together with LLMSREC_API_TOKEN\. "
                                          r"Fix: set only one"):
        ServingSettings.from_env()
    monkeypatch.delenv("LLMSREC_API_TOKEN")
    assert ServingSettings.from_env().token() == TOKEN


@pytest.mark.parametrize(("content", "says"), [
    (None, "cannot be read (No such file or directory). Fix: point it at the file that holds the token"),
    ("", "holds 0 characters, not a token of 16 to 4096. Fix: write a random string"),
    ("tooshort\n", "holds 8 characters, not a token of 16 to 4096"),
    (f"{TOKEN}\n{TOKEN}\n", "is not a token: a token has only letters, digits and . _ ~ + / - (then = padding), one line"),
])
def test_a_bad_token_file_names_the_variable_and_the_file(clean_env, monkeypatch, tmp_path, content, says):
    secret = tmp_path / "token"
    if content is not None:
        secret.write_text(content)
    monkeypatch.setenv("LLMSREC_API_TOKEN_FILE", str(secret))
    with pytest.raises(ConfigError) as e:
        ServingSettings.from_env().token()
    assert str(e.value).startswith(f"LLMSREC_API_TOKEN_FILE={str(secret)!r}: ") and says in str(e.value), str(e.value)
    assert TOKEN not in str(e.value)


@pytest.mark.parametrize(("value", "paths"), [
    (None, ("/livez", "/healthz", "/readyz")),
    ("none", ()),
    ("readyz,metrics", ("/readyz", "/metrics")),
    ("docs", ("/", "/docs.json", "/schema.json", "/static_content/", "/assets/")),
])
def test_open_endpoints(clean_env, monkeypatch, value, paths):
    if value is not None:
        monkeypatch.setenv("LLMSREC_OPEN_ENDPOINTS", value)
    assert ServingSettings.from_env().open_paths() == paths


def test_open_endpoints_never_include_the_api(clean_env, monkeypatch):
    monkeypatch.setenv("LLMSREC_OPEN_ENDPOINTS", "readyz,recommend")
    with pytest.raises(ConfigError, match=r"^LLMSREC_OPEN_ENDPOINTS='readyz,recommend': string should match pattern.*"
                                          r"Fix: set it to a comma-separated list of livez, readyz, metrics, docs"):
        ServingSettings.from_env()


@pytest.mark.parametrize(("name", "says"), [
    ("LLMSREC_DEVCE", "LLMSREC_DEVCE: is not a serving setting (did you mean LLMSREC_DEVICE?); it would be ignored"),
    ("LLMSREC_MAXBATCH", "(did you mean LLMSREC_MAX_BATCH?)"),
    ("LLMSREC_API_TOKEN_PATH", "(did you mean LLMSREC_API_TOKEN?)"),
])
def test_a_misspelt_setting_is_refused_not_ignored(clean_env, monkeypatch, name, says):
    monkeypatch.setenv(name, "1")
    with pytest.raises(ConfigError) as e:
        ServingSettings.from_env()
    assert says in str(e.value), str(e.value)


def test_pipeline_variables_are_not_taken_for_misspelt_settings(clean_env, monkeypatch):
    for name in ("LLMSREC_PROMOTED_TAG", "LLMSREC_CACHE", "LLMSREC_SHARED_DATA", "LLMSREC_REPO"):
        monkeypatch.setenv(name, "x")
    assert ServingSettings.from_env().device == "auto"


def test_a_device_this_host_lacks_names_the_variable(clean_env, monkeypatch):
    """LLMSREC_DEVICE=cuda on a host without a GPU used to pass the settings and fail in the scorer, blaming
    params.yaml's llm.device; cuda:N past the last GPU was not checked at all."""
    import torch

    if torch.cuda.is_available():
        value, says = "cuda:99", f"LLMSREC_DEVICE='cuda:99': this host has {torch.cuda.device_count()} visible GPU(s)"
        fix = "Fix: set it to cuda:0"
    else:
        value, says = "cuda", "LLMSREC_DEVICE='cuda': no CUDA GPU is visible to this process"
        fix = "Fix: set LLMSREC_DEVICE=auto (CUDA when there is a GPU, else the CPU) or cpu"
    monkeypatch.setenv("LLMSREC_DEVICE", value)
    settings = ServingSettings.from_env()
    with pytest.raises(ConfigError) as e:
        settings.check_device()
    assert str(e.value).startswith(says) and fix in str(e.value), str(e.value)
    assert "params.yaml" not in str(e.value)
    monkeypatch.setenv("LLMSREC_DEVICE", "cpu")
    ServingSettings.from_env().check_device()  # cpu and auto always run
