"""Serving settings: every `LLMSREC_*` environment variable `bentoml serve` (or a built Bento) reads.

This model is their one definition: a field `max_batch` is the variable `LLMSREC_MAX_BATCH`, with the
field's type, bounds, default and description. An empty variable counts as unset. The services read them
when BentoML creates them (`ServingSettings.from_env()` in their `__init__`), never at import, so a test
or a benchmark sets a variable before it starts a service. A bad value stops that start with a
ConfigError naming the variable, what is wrong and the value to use instead.

`LLMSREC_MODEL_TAG` is applied by components/serving/registry.py (`serving_candidates`), which owns the
rule "a pinned version has no fallback"; it is declared here so that it is documented and checked with
the others. Variables of the pipeline (`LLMSREC_CACHE`, `LLMSREC_SHARED_DATA`, ...) are not serving
settings and are not read here. What BentoML itself is told in the service decorators (workers, request
timeout, `max_concurrency`, the scorer client's connection settings) is fixed in
components/serving/service.py, not set here; `bentoml serve`'s own flags and BentoML's configuration file
override those.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from components.errors import ConfigError

ENV_PREFIX = "LLMSREC_"


def _setting(default: Any, description: str, accepted: str, **bounds: Any) -> Any:
    """A field whose error message says what to set instead (`accepted`)."""
    return Field(default, description=description, json_schema_extra={"accepted": accepted}, **bounds)


class ServingSettings(BaseSettings):
    """The scorer's and the public service's settings, from `LLMSREC_<FIELD>` environment variables."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True)

    model_tag: str | None = _setting(
        None, "serve this packaged version instead of the registry's production one; a pinned version has no "
              "fallback (damaged, it is an error)",
        "a version from `python -m components.serving.registry list`, e.g. llmsrec:abc123",
        pattern=r"^llmsrec:[A-Za-z0-9_.-]+$")
    batching: bool = _setting(
        True, "merge concurrent /recommend calls into one model call (components/serving/batcher.py); "
              "0: one model call per request", "1 (on) or 0 (off)")
    max_batch: int = _setting(16, "the most requests merged into one model call", "an integer from 1 to 256",
                              ge=1, le=256)
    max_body_bytes: int = _setting(
        1 << 20, "request bodies larger than this many bytes are refused with 413",
        "a byte count from 1024 to 1073741824, e.g. 1048576 (1 MiB)", ge=1024, le=1 << 30)
    torch_threads: int | None = _setting(
        None, "torch threads of the scorer; unset: torch's default (one per core)", "an integer from 1 to 1024",
        ge=1, le=1024)
    device: str = _setting(
        "auto", "where the scorer runs the LLM: auto (CUDA when a GPU is visible, else the CPU), cpu, cuda or "
                "cuda:N. On CUDA the model runs on the scorer's event loop, on a CPU in one dedicated thread",
        "auto, cpu, cuda or cuda:N", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    dtype: Literal["auto", "bf16", "bfloat16", "fp16", "float16", "fp32", "float32"] = _setting(
        "auto", "the LLM's precision; auto: bf16 on CUDA (fp16 where bf16 is unsupported) and on a CPU with "
                "bf16 support, else fp32", "auto, bf16, fp16 or fp32")

    @classmethod
    def from_env(cls) -> ServingSettings:
        """The settings from the environment now. Raises ConfigError for the first bad variable, naming it,
        its value and what to set (other bad ones are listed in the fix)."""
        try:
            return cls()
        except ValidationError as e:
            errors = e.errors(include_url=False)
        names = [env_name(str(err["loc"][0])) for err in errors]
        first, field = errors[0], cls.model_fields[str(errors[0]["loc"][0])]
        accepted = (field.json_schema_extra or {}).get("accepted", "a valid value")
        also = f" (also wrong: {', '.join(names[1:])})" if len(names) > 1 else ""
        raise ConfigError(f"{names[0]}={first['input']!r}", first["msg"][0].lower() + first["msg"][1:],
                          f"set it to {accepted}, or unset it for the default ({field.default!r}){also}") from None


def env_name(field: str) -> str:
    """The environment variable of a ServingSettings field: `max_batch` -> `LLMSREC_MAX_BATCH`."""
    return ENV_PREFIX + field.upper()
