"""Serving settings: every `LLMSREC_*` environment variable `bentoml serve` (or a built Bento) reads.

This model is their one definition: a field `max_batch` is the variable `LLMSREC_MAX_BATCH`, with the
field's type, bounds, default and description. An empty variable counts as unset. The services read them
when BentoML creates them (`ServingSettings.from_env()` in their `__init__`), never at import, so a test
or a benchmark sets a variable before it starts a service. A bad value stops that start with a
ConfigError naming the variable, what is wrong and the value to use instead; `bentoml serve` checks them
all, and the device against the host, before it starts any service process (`LLMSRecService.preflight`),
so a bad one ends it with that one line instead of a service process restarted every few seconds.
The token (`LLMSREC_API_TOKEN`) is never shown, in an error or anywhere else.

`LLMSREC_MODEL_TAG` too is read here only: components/serving/registry.py (`serving_candidates`), which
owns the rule "a pinned version has no fallback", takes it from `ServingSettings.from_env()`. Variables of the pipeline (`LLMSREC_CACHE`, `LLMSREC_SHARED_DATA`, ...) are not serving
settings and are not read here. What BentoML itself is told in the service decorators (workers, request
timeout, `max_concurrency`, the scorer client's connection settings) is fixed in
components/serving/service.py, not set here; `bentoml serve`'s own flags and BentoML's configuration file
override those.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from components.errors import ConfigError
from components.serving.integrity import describe_access

ENV_PREFIX = "LLMSREC_"
#: a bearer token's length bounds: shorter ones can be guessed, longer ones are a mistake (a whole file)
MIN_TOKEN_CHARS, MAX_TOKEN_CHARS = 16, 4096
#: RFC 6750's b64token: what may follow "Bearer " in an Authorization header
TOKEN_PATTERN = r"^[A-Za-z0-9._~+/-]+=*$"
#: settings whose values are never repeated in an error message or a log line
SECRET = frozenset({"api_token"})
#: `LLMSREC_*` variables of the pipeline, not of the service (never taken for a misspelt setting)
PIPELINE_VARIABLES = frozenset({"LLMSREC_CACHE", "LLMSREC_SHARED_DATA", "LLMSREC_REPO", "LLMSREC_PROMOTED_TAG"})
#: the paths each name of LLMSREC_OPEN_ENDPOINTS opens (BentoML's probes, metrics and OpenAPI pages)
ENDPOINT_PATHS = {"livez": ("/livez", "/healthz"), "readyz": ("/readyz",), "metrics": ("/metrics",),
                  "docs": ("/", "/docs.json", "/schema.json", "/static_content/", "/assets/")}


def _setting(default: Any, description: str, accepted: str, **bounds: Any) -> Any:
    """A field whose error message says what to set instead (`accepted`)."""
    return Field(default, description=description, json_schema_extra={"accepted": accepted}, **bounds)


class ServingSettings(BaseSettings):
    """The scorer's and the public service's settings, from `LLMSREC_<FIELD>` environment variables."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True)

    model_tag: str | None = _setting(
        None, "serve this packaged version instead of the registry's production one; a pinned version has no "
              "fallback (damaged, it is an error)",
        "a version from `srec models`, e.g. llmsrec:abc123",
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
    api_token: str | None = _setting(
        None, "the bearer token every request but the open endpoints must send (`Authorization: Bearer "
              "TOKEN`); unset (and no LLMSREC_API_TOKEN_FILE): no authentication, so keep the server on "
              "127.0.0.1. A token in a file is safer: the environment of a process is visible to its user "
              "and in `docker inspect`", f"a random string of at least {MIN_TOKEN_CHARS} characters, e.g. from "
              "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`",
        min_length=MIN_TOKEN_CHARS, max_length=MAX_TOKEN_CHARS, pattern=TOKEN_PATTERN)
    api_token_file: Path | None = _setting(
        None, "a file holding the bearer token (a Docker or Kubernetes secret, mode 0600 or 0640); read once "
              "at startup, surrounding whitespace ignored", "the path of a readable file that holds the token")
    open_endpoints: str = _setting(
        "livez,readyz", "with a token set, the endpoints answered without one (comma-separated: livez (and "
                        "healthz), readyz, metrics, docs (the OpenAPI page and spec)); none: every endpoint "
                        "needs the token. /recommend and /items always need it",
        "a comma-separated list of livez, readyz, metrics, docs, or none",
        pattern=r"^(none|(livez|readyz|metrics|docs)(,(livez|readyz|metrics|docs))*)$")

    @classmethod
    def from_env(cls) -> ServingSettings:
        """The settings from the environment now. Raises ConfigError for the first bad variable, naming it,
        its value (a token's only by its length) and what to set (other bad ones are listed in the fix);
        for both LLMSREC_API_TOKEN and LLMSREC_API_TOKEN_FILE at once; and for an unknown `LLMSREC_*`
        variable whose name is one letter or two off a setting's (a typo would otherwise be ignored)."""
        _refuse_misspelt()
        try:
            settings = cls()
        except ValidationError as e:
            errors = e.errors(include_url=False)
        else:
            if settings.api_token is not None and settings.api_token_file is not None:
                raise ConfigError(env_name("api_token_file"), f"is set together with {env_name('api_token')}",
                                  "set only one of the two (the file is safer)")
            return settings
        names = [env_name(str(err["loc"][0])) for err in errors]
        first, field = errors[0], cls.model_fields[str(errors[0]["loc"][0])]
        accepted = (field.json_schema_extra or {}).get("accepted", "a valid value")
        also = f" (also wrong: {', '.join(names[1:])})" if len(names) > 1 else ""
        shown = (f"(hidden, {len(str(first['input']))} characters)" if first["loc"][0] in SECRET
                 else repr(first["input"]))
        problem = first["msg"][0].lower() + first["msg"][1:]
        if first["loc"][0] in SECRET and first["type"] == "string_pattern_mismatch":
            problem = "a token has only letters, digits and . _ ~ + / - (then = padding), no spaces"
        raise ConfigError(f"{names[0]}={shown}", problem,
                          f"set it to {accepted}, or unset it for the default ({field.default!r}){also}") from None

    def token(self) -> str | None:
        """The bearer token requests must send: LLMSREC_API_TOKEN, or the content of LLMSREC_API_TOKEN_FILE
        (surrounding whitespace stripped), or None (no authentication). Raises ConfigError naming the
        variable and the file when the file cannot be read or does not hold a valid token; never shows
        the token."""
        if self.api_token_file is None:
            return self.api_token
        path, name = self.api_token_file, env_name("api_token_file")
        try:
            text = path.read_text(encoding="utf-8").strip()
        except PermissionError:
            raise ConfigError(f"{name}={str(path)!r}", f"cannot be read by this process ({describe_access(path)})",
                              "make the file readable by the service's user or group (e.g. chmod 0640 and "
                              "chgrp to the service's group)") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{name}={str(path)!r}", f"cannot be read ({getattr(e, 'strerror', None) or e})",
                              "point it at the file that holds the token") from None
        try:
            type(self).model_validate({"api_token": text})
        except ValidationError as e:
            err = e.errors(include_url=False)[0]
            problem = ("is not a token: a token has only letters, digits and . _ ~ + / - (then = padding), one line"
                       if err["type"] == "string_pattern_mismatch" else
                       f"holds {len(text)} characters, not a token of {MIN_TOKEN_CHARS} to {MAX_TOKEN_CHARS}")
            raise ConfigError(f"{name}={str(path)!r}", problem,
                              f"write {self.model_fields['api_token'].json_schema_extra['accepted']} into it") from None
        return text

    def open_paths(self) -> tuple[str, ...]:
        """The paths answered without the token (LLMSREC_OPEN_ENDPOINTS); a path ending in / opens its subtree."""
        if self.open_endpoints == "none":
            return ()
        return tuple(p for name in self.open_endpoints.split(",") for p in ENDPOINT_PATHS[name])

    def check_device(self) -> None:
        """Refuse a device or precision this host cannot run, naming the variable (LLMSREC_DEVICE,
        LLMSREC_DTYPE): a CUDA device without a visible GPU, a GPU index past the last one, bf16 on a GPU
        without it. Imports torch only for a CUDA device (`auto` and `cpu` always run). Raises ConfigError."""
        if not self.device.startswith("cuda"):
            return
        import torch

        shown = f"{env_name('device')}={self.device!r}"
        if not torch.cuda.is_available():
            raise ConfigError(shown, "no CUDA GPU is visible to this process (torch.cuda.is_available() is False"
                              f"{'; torch is a CPU build' if torch.version.cuda is None else ''})",
                              f"set {env_name('device')}=auto (CUDA when there is a GPU, else the CPU) or cpu, or "
                              "run where a GPU is visible (the NVIDIA driver, `docker run --gpus all`)")
        count, index = torch.cuda.device_count(), int(self.device.partition(":")[2] or 0)
        if index >= count:
            raise ConfigError(shown, f"this host has {count} visible GPU(s), numbered from 0",
                              f"set it to cuda:0 .. cuda:{count - 1}, or cuda")
        if self.dtype in ("bf16", "bfloat16") and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"{env_name('dtype')}={self.dtype!r}", f"GPU {index} ({torch.cuda.get_device_name(index)}) "
                              "does not support bf16", f"set {env_name('dtype')}=fp16 or auto")


def env_name(field: str) -> str:
    """The environment variable of a ServingSettings field: `max_batch` -> `LLMSREC_MAX_BATCH`."""
    return ENV_PREFIX + field.upper()


def _refuse_misspelt() -> None:
    """An `LLMSREC_*` variable that is no setting but nearly spells one (LLMSREC_DEVCE) is a ConfigError
    naming both. Others are left alone: the pipeline has variables of its own (LLMSREC_CACHE, ...)."""
    import difflib
    import os

    settings = [env_name(f) for f in ServingSettings.model_fields]
    for var in sorted(os.environ):
        if var.startswith(ENV_PREFIX) and var not in settings and var not in PIPELINE_VARIABLES:
            near = difflib.get_close_matches(var, settings, n=2, cutoff=0.85)
            if near:
                names = " or ".join(near)
                raise ConfigError(var, f"is not a serving setting (did you mean {names}?); it would be ignored",
                                  f"rename it to {names}, or unset it")

