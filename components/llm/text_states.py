"""Frozen title states: what the LLM reads in each item's title, computed once per item, without gradients.

Beyond the paper (`distill.text_layer`). LLM-SRec's item text only ever reaches the LLM inside a prompt,
and on a CPU the prompt pass reads only the first `llm.num_layers` layers, where a title's meaning is
least formed. A title is frozen text read by a frozen LLM, so its states at any depth are constants:
run each title alone through the first `layer` layers once, mean-pool over its tokens, and standardise
each dimension over the catalogue (the raw states share a few dominant directions). The adapters then
add `f_T(t_i)` to every `[HistoryEmb]` vector, so both prompts carry the deep reading of every title.

Cost: one forward pass per title, no backward (about a second per thousand titles for SmolLM2-135M
in bf16 on two CPU cores at full depth); serving reads the saved table and never runs this.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import Tensor

from components.errors import ConfigError
from components.llm.backbone import Backbone, cache_root, truncate_layers
from components.llm.prompts import clean_title
from components.progress import track


@torch.no_grad()
def title_states(backbone: Backbone, titles: list[str], layer: int, max_title_chars: int = 120,
                 batch_size: int = 64, progress: bool = False) -> Tensor:
    """[N+1, H] fp32: row i the standardised mean state of title i after `layer` layers (then the final
    norm, as `truncate_layers` reads a cut model); row 0 (padding) is zeros.

    `titles[0]` is the padding entry and is not read. `backbone` must hold at least `layer` layers (load
    it whole: `load_backbone(..., num_layers=None)`). Raises ConfigError when it does not.
    """
    if layer > backbone.num_layers:
        raise ConfigError("params.yaml", f"distill.text_layer={layer}, the backbone holds {backbone.num_layers} "
                                         "layers", f"use at most {backbone.num_layers}, or load the whole backbone")
    cut = truncate_layers(backbone, layer)
    tok = backbone.tokenizer
    texts = [f'"{clean_title(t, max_title_chars)}"' for t in titles[1:]]
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # little padding per batch
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    out = torch.zeros(len(titles), backbone.hidden_size)
    chunks = [order[lo: lo + batch_size] for lo in range(0, len(order), batch_size)]
    for chunk in track(chunks, f"title states (layer {layer})", enabled=progress):
        T = max(len(ids[i]) for i in chunk)
        x = torch.full((len(chunk), T), int(pad), dtype=torch.long)
        mask = torch.zeros((len(chunk), T), dtype=torch.long)
        for b, i in enumerate(chunk):
            x[b, : len(ids[i])] = torch.tensor(ids[i])
            mask[b, : len(ids[i])] = 1
        h = cut.model(input_ids=x.to(backbone.device), attention_mask=mask.to(backbone.device)).last_hidden_state
        h = h.float()  # sum in fp32: a bf16 sum over 30 tokens loses digits
        m = mask.to(h.device, h.dtype)[..., None]  # [B, T, 1]
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)  # [B, H]
        out[torch.tensor(chunk) + 1] = pooled.float().cpu()
    return standardise(out)


def cached_title_states(backbone: Backbone, titles: list[str], layer: int, max_title_chars: int = 120,
                        batch_size: int = 64, progress: bool = False, cache: Path | None = None) -> Tensor:
    """`title_states`, kept on disk (under `cache_root()/text_states`) by what determines them: the
    backbone's weights and dtype, the layer, the title cut and every title. A retraining run on the same
    catalogue, or a comparison of adapters settings, reads them back in a fraction of a second."""
    from safetensors.torch import load_file, save_file

    h = hashlib.sha256(json.dumps([backbone.fingerprint, str(backbone.dtype), layer, max_title_chars, titles]).encode())
    path = (cache or cache_root()) / "text_states" / f"{h.hexdigest()[:24]}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))["text_states"]
        except Exception:  # a damaged cache entry is recomputed, never trusted
            path.unlink(missing_ok=True)
    states = title_states(backbone, titles, layer, max_title_chars, batch_size, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    save_file({"text_states": states.contiguous()}, str(tmp))
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old entry or the whole new one
    return states


def standardise(states: Tensor) -> Tensor:
    """Each dimension of rows 1..N to zero mean and unit variance over the catalogue; row 0 stays zeros. [N+1, H]"""
    body = states[1:]
    if len(body) == 0:
        return states
    z = (body - body.mean(0)) / body.std(0, unbiased=False).clamp(min=1e-6)
    return torch.cat([torch.zeros_like(states[:1]), z])
