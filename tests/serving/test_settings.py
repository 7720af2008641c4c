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
    ("LLMSREC_MODEL_TAG", "abc123", "Fix: set it to a version from `python -m components.serving.registry list`"),
])
def test_a_bad_value_names_the_variable_and_the_fix(clean_env, monkeypatch, name, value, says):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as e:
        ServingSettings.from_env()
    assert says in str(e.value) and "Fix: set it to " in str(e.value), str(e.value)


def test_every_bad_variable_is_named(clean_env, monkeypatch):
    monkeypatch.setenv("LLMSREC_MAX_BATCH", "0")
    monkeypatch.setenv("LLMSREC_DEVICE", "tpu")
    with pytest.raises(ConfigError, match=r"^LLMSREC_MAX_BATCH='0': .*\(also wrong: LLMSREC_DEVICE\)$"):
        ServingSettings.from_env()


def test_the_readme_and_the_bentofiles_point_to_the_settings():
    """The README's serving section has a row per variable with its default; both bentofiles point here and
    pin pydantic-settings as constraints.txt does."""
    readme = (REPO / "README.md").read_text()
    rows = {cells[0].strip("`"): cells for line in readme[readme.index("### Serving"):].splitlines()
            if line.lstrip().startswith("| `LLMSREC_") and (cells := [c.strip() for c in line.split("|")[1:-1]])}
    for field, info in ServingSettings.model_fields.items():
        assert env_name(field) in rows, f"README's serving section has no row for {env_name(field)}"
        default = info.default
        shown = "unset" if default is None else "1" if default is True else str(default)
        assert rows[env_name(field)][1].split()[0].strip("`") == shown, rows[env_name(field)]
    assert set(rows) == {env_name(f) for f in ServingSettings.model_fields}
    pin = next(line for line in (REPO / "constraints.txt").read_text().splitlines()
               if line.startswith("pydantic-settings=="))
    for bentofile in ("bentofile.yaml", "bentofile.gpu.yaml"):
        text = (REPO / bentofile).read_text()
        assert "components/serving/settings.py" in text and pin in yaml.safe_load(text)["python"]["packages"], bentofile
