"""LLM-SRec: a frozen SASRec distilled into a frozen LLM through small MLPs and two token vectors.

Shapes: d = SASRec hidden (64), H = LLM hidden, d' = 128.
- f_I      : d -> H -> H  (Linear, LayerNorm, LeakyReLU, Linear) SASRec item embedding -> LLM input
- f_user   : H -> 2048 -> d' on the last hidden state at [UserOut]
- f_item   : H -> 2048 -> d' on the last hidden state at [ItemOut]
- f_CF-user: d -> 128 -> d' (Linear, LayerNorm, GELU, Linear) on SASRec's user representation O_u
- two learnable H-vectors: the input embeddings of [UserOut] and [ItemOut]
- f_T      : H -> H -> H  beyond the paper (`text_layer`): each title's frozen LLM state (components/llm/
             text_states.py) into the LLM input space, added to f_I's vector in every [HistoryEmb] slot
- f_U      : d -> H -> H  beyond the paper (`user_slot`): SASRec's user representation O_u (its whole
             window) into one more slot before or after the history's (after: `readout: slot` reads
             there); the way CoLLM (Zhang et al. 2023) and A-LLMRec (Kim et al., KDD 2024) hand an LLM a
             CF user embedding
Only these are trained (and saved, with the frozen title states when used). The LLM and SASRec are frozen
and never saved here.

Loss = L_retrieval (softmax over positive + negatives of s = f_item(h_i) . f_user(h_u))
     + L_distill (MSE between normalized f_CF-user(O_u) and f_user(h_u))
     + L_uniform (mean exp(-2 ||a - b||^2) over pairs in the batch, for both normalized sets).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from components.config import DistillParams, parse
from components.data.histories import Batch, Histories
from components.errors import CheckpointError, DataError, PipelineError
from components.io import write_json
from components.llm.backbone import Backbone, load_backbone, truncate_layers
from components.llm.kv import FrozenKVCache
from components.llm.prompts import Prompts, PromptTokenizer
from components.models.base import (
    Recommender,
    check_shapes,
    neg_inf_padding,
    read_checkpoint_json,
    read_weights,
)
from components.models.parallel import Shard
from components.models.sasrec import SASRec
from components.progress import track

ADAPTERS, ITEM_TABLE, TITLES = "adapters.safetensors", "item_table.safetensors", "titles.json"
TEXT_STATES = "text_states.safetensors"


#: What a checkpoint written before a config field existed was trained with: the paper's settings, and the
#: switches that go beyond the paper (each measured in docs/benchmarks.md) off. Read only by `LLMSRec.load`,
#: for the keys an older config.json lacks; new checkpoints record every field. A run-only knob (`RUN_ONLY`
#: in components.config: the key/value cache's) never changed the weights, so it takes the schema's default.
CHECKPOINT_DEFAULTS: dict[str, Any] = {
    "backbone": "smollm2-135m", "num_layers": None, "history_len": 10, "num_negatives": 3, "negatives": "sampled",
    "logq_correction": False, "use_distill_loss": True, "use_uniform_loss": True,
    "weights": {"retrieval": 1.0, "distill": 1.0, "uniform": 1.0}, "max_title_chars": 120, "prompt": "paper",
    "center": "none", "readout": "token", "match_token_norm": False, "text_layer": None, "llm_pass": True,
    "cf_dropout": 0.0, "user_slot": None,
}


@dataclass
class LLMSRecConfig:
    """What an LLM-SRec checkpoint needs to be rebuilt (its config.json): params `distill`'s knobs of that
    name (components.config.DistillParams says what each means and allows), the backbone, and the
    adapters' widths. Built once by `from_params`; `LLMSRec.load` reads it back (`CHECKPOINT_DEFAULTS`)."""

    backbone: str  # llm.backbone: what `load_backbone` reloads
    num_layers: int | None  # llm.num_layers: the LLM's first L layers only, None = all (beyond the paper)
    history_len: int
    num_negatives: int
    negatives: str
    logq_correction: bool
    use_distill_loss: bool
    use_uniform_loss: bool
    weights: dict[str, float]
    max_title_chars: int
    prompt: str
    kv_reuse: str
    kv_cache_mb: float
    center: str
    readout: str
    match_token_norm: bool
    text_layer: int | None  # resolved: `all` is recorded as the whole LLM's depth
    llm_pass: bool
    cf_dropout: float
    user_slot: str | None
    # The paper's adapter widths: architecture, not knobs.
    proj_hidden: int = 2048  # f_user / f_item inner width
    out_dim: int = 128  # d'
    cf_hidden: int = 128  # f_CF-user inner width

    @classmethod
    def from_params(cls, distill: DistillParams, backbone: Backbone, full_depth: int | None = None) -> LLMSRecConfig:
        """The config params `distill` describes, on `backbone` (the LLM the prompt pass runs on: its name,
        and the layers `truncate_layers` kept, are recorded). `distill.text_layer: all` means `full_depth`,
        the whole LLM's depth. Raises ValueError when `all` is given without `full_depth`."""
        knobs = distill.model_dump()
        if knobs["text_layer"] == "all":
            if full_depth is None:
                raise ValueError("distill.text_layer: 'all' must be resolved to the backbone's depth (pass full_depth=)")
            knobs["text_layer"] = full_depth
        return cls(backbone=backbone.name, num_layers=backbone.cut_to,
                   **{f.name: knobs[f.name] for f in fields(cls) if f.name in knobs})

    def check(self) -> None:
        """Raises ConfigError naming `distill.<key>` when a value is outside what params `distill` allows (a
        checkpoint's config was not read through params.yaml): one set of rules, the schema's."""
        knobs = {k: v for k, v in asdict(self).items() if k in DistillParams.model_fields}
        parse(DistillParams, knobs, source="config", at="distill")


def _cache_kwarg(llm: nn.Module) -> str:
    """transformers renamed the forward argument `past_key_values` to `cache`; accept both."""
    import inspect

    return "cache" if "cache" in inspect.signature(llm.forward).parameters else "past_key_values"


def mlp(d_in: int, d_hidden: int, d_out: int, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.LayerNorm(d_hidden), act, nn.Linear(d_hidden, d_out))


def uniformity(x: Tensor) -> Tensor:
    """mean over pairs a != b of exp(-2 ||a - b||^2), x already L2-normalised [B, D]."""
    if x.shape[0] < 2:
        return x.new_zeros(())
    return torch.pdist(x, p=2).pow(2).mul(-2).exp().mean()


def state_hash(module: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class Adapters(nn.Module):
    """Everything LLM-SRec trains. Kept in fp32 (master weights) whatever the LLM's dtype."""

    def __init__(self, d: int, H: int, cfg: LLMSRecConfig):
        super().__init__()
        self.f_I = mlp(d, H, H, nn.LeakyReLU())
        self.f_user = mlp(H, cfg.proj_hidden, cfg.out_dim, nn.LeakyReLU())
        self.f_item = mlp(H, cfg.proj_hidden, cfg.out_dim, nn.LeakyReLU())
        self.f_cf_user = mlp(d, cfg.cf_hidden, cfg.out_dim, nn.GELU())
        # beyond the paper: the frozen title states (H) into the LLM's input space, beside f_I
        self.f_T = mlp(H, H, H, nn.LeakyReLU()) if cfg.text_layer is not None else None
        # beyond the paper: SASRec's user representation (d) into the LLM's input space, for the user slot
        self.f_U = mlp(d, H, H, nn.LeakyReLU()) if cfg.user_slot is not None else None
        # Initialised at the scale of real token embeddings so the LLM sees in-distribution inputs.
        self.user_token = nn.Parameter(torch.randn(H) * 0.02)
        self.item_token = nn.Parameter(torch.randn(H) * 0.02)
        # The frozen LLM's output states share one dominant direction (cosine 0.92-0.99 across inputs):
        # centring them per batch leaves the adapters the part that differs.
        centre = cfg.center == "batchnorm"
        self.norm_user = nn.BatchNorm1d(H, affine=False) if centre else nn.Identity()
        self.norm_item = nn.BatchNorm1d(H, affine=False) if centre else nn.Identity()


def _layers(out) -> list[tuple[Tensor, Tensor]]:
    """Per-layer (keys, values) of a forward's cache, [B, kv_heads, T, head_dim] each."""
    cache = getattr(out, "cache", None) or out.past_key_values
    return [(layer.keys, layer.values) for layer in cache.layers]


def _cache_from(llm: nn.Module, layers: list[tuple[Tensor, Tensor]]) -> dict[str, Any]:
    from transformers import DynamicCache

    return {_cache_kwarg(llm): DynamicCache(layers, config=llm.config), "use_cache": True}


def _every_row_has_a_slot(slots_per_row: Tensor) -> None:
    """`readout: slot` reads each row's last [HistoryEmb]: a row without one is bad input, named as such."""
    if bool((slots_per_row == 0).any()):
        raise DataError("history", "a user with no history item reached LLM-SRec (readout: slot needs one)",
                        "score users with at least one known item; the service falls back to popularity")


def _pad(rows: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """[B, T] ids and attention mask, right-padded."""
    T = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[b, : len(r)] = 1
    return ids, mask


class LLMSRec(Recommender):
    """LLM-SRec (Kim et al., KDD 2025): a frozen SASRec distilled into a frozen LLM (module docstring).

    Histories in, scores out, through the `Recommender` interface: `score_candidates` [B, C],
    `score_all` [B, N+1]; `loss_terms` for training. Raises DataError on mismatched titles.
    """

    name = "llmsrec"

    def __init__(self, config: LLMSRecConfig, sasrec: Recommender, backbone: Backbone, titles: list[str],
                 item_ids: list[str], item_mapping_hash: str, sasrec_path: str | None = None,
                 text_states: Tensor | None = None):
        super().__init__(item_ids, item_mapping_hash)
        if len(titles) != len(item_ids) + 1:
            raise DataError("titles", f"{len(titles)} titles for {len(item_ids)} items (+ padding)",
                            "pass one title per item idx 0..N")
        config.check()
        self.config = config
        # The prompt shows `history_len` items; with the user slot SASRec reads its whole window as well.
        self.max_history = (max(config.history_len, sasrec.max_history or 0) if config.user_slot is not None
                            else config.history_len)
        self.shuffle_len = config.history_len  # the shuffle diagnostic reorders the prompt's items, never swaps them
        self.num_negatives = config.num_negatives
        self.sasrec = sasrec
        self.sasrec.requires_grad_(False).eval()
        self.sasrec_path = sasrec_path  # recorded so the checkpoint can find its teacher again
        # The LLM is held outside the module tree: it is frozen, shared, never saved and never
        # handed to an optimizer, DDP or state_dict.
        object.__setattr__(self, "backbone", backbone)
        d = int(sasrec.item_embeddings.shape[1])
        self.adapters = Adapters(d, backbone.hidden_size, config)
        special_base = max(int(backbone.embed_tokens.num_embeddings), len(backbone.tokenizer))
        self.prompts = PromptTokenizer(backbone.tokenizer, titles, special_base, config.max_title_chars, config.prompt,
                                       config.user_slot)
        self.token_norm = float(backbone.embed_tokens.weight.float().norm(dim=-1).mean())
        self.item_table: Tensor | None = None  # [N+1, d'] f_item for the catalogue, once computed
        self.infer_batch_size = 16  # prompts per LLM pass when scoring
        self.frozen_batch_size = 32  # rows per no-grad pass over frozen text
        self._openings: dict[str, list[tuple[Tensor, Tensor]]] = {}
        # Items and validation users in separate bounds: a scan over thousands of users never evicts the items.
        self.kv_cache = FrozenKVCache(config.kv_cache_mb)  # item titles
        self.user_kv_cache = FrozenKVCache(config.kv_cache_mb)  # validation users' history text
        self.cache_users = False  # set while validating: the same users' text comes back at every validation
        self._table_copy: tuple[Tensor, Tensor] | None = None  # (item_table, its copy on the scoring device)
        if (config.text_layer is None) != (text_states is None):
            raise DataError("text_states", f"text_layer={config.text_layer} but text states were "
                                           f"{'not ' if text_states is None else ''}given",
                            "compute them with components.llm.text_states.title_states (the distill stage does)")
        if text_states is not None and tuple(text_states.shape) != (len(item_ids) + 1, backbone.hidden_size):
            raise DataError("text_states", f"shape {list(text_states.shape)}, expected "
                                           f"{[len(item_ids) + 1, backbone.hidden_size]}", "recompute them for this data")
        # [N+1, H] frozen title states: never trained, outside state_dict; save() writes them to TEXT_STATES
        self.register_buffer("text_states", None if text_states is None else text_states.float(), persistent=False)
        # [N+1] training-target counts, for the logQ correction; set by the trainer, never saved
        self.register_buffer("target_counts", None, persistent=False)

    def train(self, mode: bool = True) -> LLMSRec:
        """Only the adapters ever train: the frozen teacher keeps dropout off in every mode."""
        super().train(mode)
        self.sasrec.eval()
        return self

    # -- the LLM pass -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.adapters.user_token.device

    @torch.no_grad()
    def _opening_kv(self, kind: str, opening: list[int]) -> list[tuple[Tensor, Tensor]]:
        """Keys/values of the sentence every prompt of `kind` starts with: [1, kv_heads, P, head_dim] per
        layer. The LLM is frozen and the text fixed, so they are constants, computed once per model."""
        if kind not in self._openings:
            ids = torch.tensor([opening], device=self.backbone.device)  # [1, P]
            self._openings[kind] = _layers(self.backbone.model(input_ids=ids, use_cache=True))
        return self._openings[kind]

    @torch.no_grad()
    def _frozen_kv(self, kind: str, prompts: Prompts) -> tuple[list[tuple[Tensor, Tensor]], Tensor]:
        """Keys/values of each row's frozen text (after the opening): per layer [B, kv_heads, F, head_dim],
        right-padded to the longest row F, and the rows' lengths [B]. Rows found in `kv_cache` are
        reused; the others run without gradients in length-sorted batches and are added to it.

        Item prompts are always cached (the catalogue is a bounded set that every step and validation
        reads again), in `kv_cache`. User prompts only while `cache_users` is set, as validation does, in
        `user_kv_cache`: training examples come back once per epoch, a working set far beyond any sensible
        bound. A hit equals a recomputation to float rounding (the same tokens, another batch)."""
        use_cache = kind == "item" or self.cache_users
        cache = self.kv_cache if kind == "item" else self.user_kv_cache
        llm, dev = self.backbone.model, self.backbone.device
        opening = self._opening_kv(kind, prompts.opening)
        P = len(prompts.opening)
        rows: list[list[tuple[Tensor, Tensor]] | None] = [None] * len(prompts)
        todo = []
        for b, f in enumerate(prompts.frozen):
            if f:
                rows[b] = cache.get((kind, tuple(f))) if use_cache else None
                if rows[b] is None:
                    todo.append(b)
        todo.sort(key=lambda b: len(prompts.frozen[b]))
        for lo in range(0, len(todo), self.frozen_batch_size):
            part = todo[lo: lo + self.frozen_batch_size]
            ids, mask = _pad([prompts.frozen[b] for b in part], self.prompts.pad_id)
            n = len(part)
            kw = _cache_from(llm, [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in opening])
            out = llm(input_ids=ids.to(dev), attention_mask=torch.cat([mask.new_ones(n, P), mask], 1).to(dev),
                      position_ids=(P + torch.arange(ids.shape[1])).expand(n, -1).to(dev), **kw)
            layers = _layers(out)
            for j, b in enumerate(part):
                f = len(prompts.frozen[b])
                rows[b] = [(k[j, :, P:P + f], v[j, :, P:P + f]) for k, v in layers]
                if use_cache:
                    cache.put((kind, tuple(prompts.frozen[b])), rows[b])
        lens = torch.tensor([len(f) for f in prompts.frozen])
        F_max = int(lens.max()) if len(lens) else 0
        out_layers = []
        for layer, (ok, ov) in enumerate(opening):
            K = ok.new_zeros(len(prompts), ok.shape[1], F_max, ok.shape[3])
            V = ov.new_zeros(len(prompts), ov.shape[1], F_max, ov.shape[3])
            for b, row in enumerate(rows):
                if row is not None:
                    K[b, :, : row[layer][0].shape[1]] = row[layer][0]
                    V[b, :, : row[layer][1].shape[1]] = row[layer][1]
            out_layers.append((K, V))
        return out_layers, lens

    def llm_states(self, kind: str, prompts: Prompts, hist_vecs: Tensor, out_vec: Tensor) -> Tensor:
        """Last hidden state at each row's `[UserOut]`/`[ItemOut]`: [B, H] (fp32).

        hist_vecs [M, H] go, in order, into the [HistoryEmb] slots of the rows (row-major); out_vec [H]
        is the output token's input embedding. With `kv_reuse` the opening (and, for `frozen`, each row's
        text before its first slot) attend as cached keys/values and only the rest runs with gradients;
        positions are explicit, so the states equal one pass over the whole prompt (tested).
        """
        if not self.config.llm_pass:
            return self._identity_states(prompts, hist_vecs, out_vec)
        llm, dev = self.backbone.model, self.backbone.device
        reuse = self.config.kv_reuse
        if self.config.readout == "slot":
            # Nothing after the last [HistoryEmb] can change its state (causal attention): drop those tokens.
            h_id = self.prompts.history_id
            prompts = Prompts(prompts.opening, prompts.frozen,
                              [row[: len(row) - row[::-1].index(h_id)] for row in prompts.live])
        if reuse == "none":
            ids, mask = _pad([prompts.full(b) for b in range(len(prompts))], self.prompts.pad_id)
            prefix, prefix_mask, start = None, None, torch.zeros(len(prompts), dtype=torch.long)
        else:
            P = len(prompts.opening)
            opening = self._opening_kv(kind, prompts.opening)
            B = len(prompts)
            if reuse == "frozen":
                frozen, lens = self._frozen_kv(kind, prompts)
                prefix = [(torch.cat([ok.expand(B, -1, -1, -1), fk], 2), torch.cat([ov.expand(B, -1, -1, -1), fv], 2))
                          for (ok, ov), (fk, fv) in zip(opening, frozen, strict=True)]
                fmask = (torch.arange(frozen[0][0].shape[2])[None] < lens[:, None]).long()  # [B, F]
                ids, mask = _pad(prompts.live, self.prompts.pad_id)
                start = P + lens
            else:
                prefix = [(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in opening]
                fmask = torch.zeros(B, 0, dtype=torch.long)
                ids, mask = _pad([f + v for f, v in zip(prompts.frozen, prompts.live, strict=True)], self.prompts.pad_id)
                start = torch.full((B,), P)
            prefix_mask = torch.cat([torch.ones(B, P, dtype=torch.long), fmask], 1)
        emb = self.backbone.embed_tokens
        special = ids >= emb.num_embeddings  # our token ids lie beyond the LLM's table
        x = emb(ids.masked_fill(special, 0).to(dev))  # [B, T, H]
        hist_slots = (ids == self.prompts.history_id).to(dev)  # [B, T]
        if int(hist_slots.sum()) != hist_vecs.shape[0]:
            raise RuntimeError(f"{int(hist_slots.sum())} [HistoryEmb] slots for {hist_vecs.shape[0]} items")
        x = x.masked_scatter(hist_slots.unsqueeze(-1), hist_vecs.to(device=dev, dtype=x.dtype))  # [B, T, H]
        out_id = self.prompts.user_out_id if kind == "user" else self.prompts.item_out_id
        out_slots = (ids == out_id).to(dev)  # [B, T], exactly one per row (none with readout: slot)
        x = torch.where(out_slots.unsqueeze(-1), out_vec.to(device=dev, dtype=x.dtype), x)  # [B, T, H]
        positions = start[:, None] + (mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]
        kwargs: dict[str, Any] = {"use_cache": False}
        if prefix is not None:
            kwargs = _cache_from(llm, prefix)
            mask = torch.cat([prefix_mask, mask], 1)  # [B, P+F+T]
        h = llm(inputs_embeds=x, attention_mask=mask.to(dev), position_ids=positions.to(dev), **kwargs).last_hidden_state
        if self.config.readout == "slot":  # beyond the paper: the state at the row's last [HistoryEmb]
            _every_row_has_a_slot(hist_slots.sum(1))
            T = hist_slots.shape[1]
            last = T - 1 - hist_slots.flip(1).int().argmax(1)  # [B]
            read = h[torch.arange(len(last), device=dev), last]  # [B, H]
        else:
            read = h[out_slots]  # [B, H]
        return read.to(device=self.device, dtype=self.adapters.user_token.dtype)

    def _identity_states(self, prompts: Prompts, hist_vecs: Tensor, out_vec: Tensor) -> Tensor:
        """The no-LLM control: the LLM pass replaced by the identity, so the state read at a position is
        what entered there. `readout: slot` reads each row's last injected vector, `token` the output
        token's vector (the same for every row: the control is meant for `slot`). [B, H]"""
        if self.config.readout == "token":
            return out_vec.to(self.device).expand(len(prompts), -1)
        counts = torch.tensor([row.count(self.prompts.history_id) for row in prompts.live])  # [B]
        _every_row_has_a_slot(counts)
        return hist_vecs[(counts.cumsum(0) - 1).to(hist_vecs.device)].to(self.device)  # [B, H]

    def cf_keep(self, n: int) -> Tensor | None:
        """[n, 1] bool: which of `n` injected vectors keep their SASRec part this step (`cf_dropout`), drawn
        from torch's generator; None when nothing is dropped (not training, no `text_layer`, p = 0)."""
        if not (self.training and self.adapters.f_T is not None and self.config.cf_dropout > 0):
            return None
        return torch.rand(n, 1, device=self.device) >= self.config.cf_dropout

    def inject(self, items: Tensor, keep: Tensor | None = None) -> Tensor:
        """f_I(E_i) (+ f_T(t_i) with `text_layer`) for item idx [M] -> [M, H]: what goes into the [HistoryEmb] slots.

        With `cf_dropout` p (beyond the paper), while training each row keeps f_I(E_i) with probability
        1 - p and is f_T(t_i) alone otherwise (no rescaling: at inference both parts are always there).
        SASRec's embeddings were fit to the sequences distillation trains on, so on them they look more
        telling than they are on new users; the title states were fit to nothing here. `keep` [M, 1]
        (`cf_keep`) gives the draw, drawn here when None: several processes share one batch's draw."""
        items = items.to(self.device)
        v = self.adapters.f_I(self.sasrec.item_embeddings[items])  # [M, H]
        if self.adapters.f_T is not None:
            keep = self.cf_keep(len(v)) if keep is None else keep
            if keep is not None:
                v = v * keep.to(v.device, v.dtype)
            v = v + self.adapters.f_T(self.text_states[items.to(self.text_states.device)].to(v))
        if self.config.match_token_norm:
            v = v * (self.token_norm / v.norm(dim=-1, keepdim=True).clamp(min=1e-6))
        return v

    def _prompt_window(self, histories: Histories) -> tuple[Tensor, Tensor]:
        window = histories.last(self.config.history_len)
        return window.items, window.timestamps  # [B, K]

    def user_states(self, histories: Histories, keep: Tensor | None = None) -> Tensor:
        """The LLM state read for each user prompt: [B, H] (at [UserOut], or at the last slot with
        `readout: slot`), before f_user.

        The prompt shows the last `history_len` items; with `user_slot`, SASRec's O_u over the whole of
        `histories` (its own window) fills one more slot before or after theirs. `keep`: `inject`'s, for
        the window's items row by row."""
        items, ts = self._prompt_window(histories)
        prompts = self.prompts.users(items.cpu().numpy(), ts.cpu().numpy())
        present = items != 0  # [B, K]
        vecs = self.inject(items[present], keep)  # [M, H], row-major: each row's items, oldest first
        if self.adapters.f_U is not None:
            with torch.no_grad():
                o_u = self.sasrec.user_representation(histories).to(self.device)  # [B, d]
            B, K = items.shape
            first = self.config.user_slot == "before"
            hist_cols = slice(1, K + 1) if first else slice(0, K)
            rows = torch.zeros(B, K + 1, vecs.shape[-1], device=vecs.device, dtype=vecs.dtype)  # [B, K+1, H]
            rows[:, hist_cols][present.to(vecs.device)] = vecs
            rows[:, 0 if first else K] = self.adapters.f_U(o_u).to(vecs.dtype)
            slot = present.new_ones(B, 1)
            vecs = rows[torch.cat([slot, present] if first else [present, slot], 1).to(vecs.device)]  # [M+B, H]
        return self.llm_states("user", prompts, vecs, self.adapters.user_token)

    def user_vectors(self, histories: Histories, keep: Tensor | None = None) -> Tensor:
        """f_user of `user_states` for histories [B, L] -> [B, d']."""
        return self.adapters.f_user(self.adapters.norm_user(self.user_states(histories, keep)))  # [B, d']

    def item_vectors(self, idx: Tensor, keep: Tensor | None = None) -> Tensor:
        """f_item(h at [ItemOut]) for item idx [M] -> [M, d']."""
        h = self.llm_states("item", self.prompts.items(idx.cpu().numpy()), self.inject(idx, keep),
                            self.adapters.item_token)
        return self.adapters.f_item(self.adapters.norm_item(h))  # [M, d']

    # -- the interface --------------------------------------------------------------------------------
    def loss_terms(self, batch: Batch, shard: Shard | None = None) -> dict[str, Tensor]:
        """The paper's losses (section 3.3) for the last column: history -> targets[:, -1], negatives[:, -1, :K].

        L_retrieval: softmax over the positive and the K sampled negatives (`negatives: sampled`, the paper);
        beyond the paper, `in_batch` adds every other example's positive, `shared` every other example's
        sampled negatives, `mixed` both, and `logq_correction` subtracts log q_j, the expected number of times
        item j is drawn into the candidates (Yi et al., RecSys 2019). L_distill and L_uniform as in the
        module docstring. Each item's prompt runs once per step however many users share it. Returns
        unweighted terms.

        With a `shard` of several processes (each holding the whole batch), this process runs the LLM for
        its share of the users and of the unique items only and gathers the rest (components/models/
        parallel.py): every process returns the whole batch's terms, and the sum of its gradients over
        processes is one process's gradient. The `cf_dropout` draw is the whole batch's, made here in one
        process's order, so each process applies the same masks one process would.
        """
        shard = shard or Shard()
        hist = batch.histories
        B = len(hist)
        pos = batch.targets[:, -1]  # [B]
        neg = batch.negatives[:, -1, : self.num_negatives]  # [B, K]
        cands = torch.cat([pos[:, None], neg], 1)  # [B, 1+K]
        uniq, inverse = torch.unique(cands, return_inverse=True)  # [U], [B, 1+K]
        per_row = (self._prompt_window(hist)[0] != 0).sum(1)  # [B] injected history items of each prompt
        keep_users, keep_items = self.cf_keep(int(per_row.sum())), self.cf_keep(len(uniq))
        rows, mine = shard.part(B), shard.part(len(uniq))
        first, last = int(per_row[: rows.start].sum()), int(per_row[: rows.stop].sum())

        def shared(n: int, share: slice, vectors) -> Tensor:  # [n, d'] gathered; a share may be empty
            local = vectors() if share.stop > share.start else torch.zeros(0, self.config.out_dim, device=self.device)
            return shard.gather(local, n)

        u = shared(B, rows, lambda: self.user_vectors(
            Histories(hist.items[rows], hist.timestamps[rows], hist.users[rows]),
            None if keep_users is None else keep_users[first:last]))  # [B, d']
        iv = shared(len(uniq), mine, lambda: self.item_vectors(
            uniq[mine], None if keep_items is None else keep_items[mine]))  # [U, d']
        mode = self.config.negatives
        if mode == "sampled" and not self.config.logq_correction:
            logits = torch.einsum("bd,bcd->bc", u, iv[inverse])  # [B, 1+K]
            target = torch.zeros(len(u), dtype=torch.long, device=u.device)
        else:
            logits = u @ iv.T  # [B, U]
            dev = logits.device
            allowed = torch.zeros_like(logits, dtype=torch.bool)
            B, K = neg.shape
            if mode in ("in_batch", "mixed"):  # every example's positive (duplicates share a column)
                allowed[:, inverse[:, 0].unique().to(dev)] = True
            if mode in ("shared", "mixed") and K:  # every example's uniform negatives
                allowed[:, inverse[:, 1:].unique().to(dev)] = True
            # ...but not an item of this example's own history, nor another example's positive of the same
            # user (targets: all puts several of a user's positions in one batch): those are not negatives.
            hist = batch.histories.items.to(uniq.device)  # [B, L]
            allowed &= ~(hist[:, :, None] == uniq[None, None, :]).any(1).to(dev)  # [B, U]
            users = batch.histories.users
            same_user = (users[:, None] == users[None, :]) & ~torch.eye(len(users), dtype=torch.bool)  # [B, B]
            allowed[same_user.nonzero()[:, 0].to(dev), inverse[same_user.nonzero()[:, 1], 0].to(dev)] = False
            allowed.scatter_(1, inverse.to(dev), True)  # this example's own candidates, always
            if self.config.logq_correction:
                logits = logits - self._log_q(uniq, B, K, mode).to(dev)[None, :]
            logits = logits.masked_fill(~allowed, float("-inf"))
            target = inverse[:, 0].to(dev)
        terms = {"retrieval": F.cross_entropy(logits, target)}
        u_n = F.normalize(u, dim=-1)
        if self.config.use_distill_loss or self.config.use_uniform_loss:
            with torch.no_grad():
                o_u = self.sasrec.user_representation(batch.histories)  # [B, d]
            cf_n = F.normalize(shared(B, rows, lambda: self.adapters.f_cf_user(o_u[rows])), dim=-1)  # [B, d']
            if self.config.use_distill_loss:
                terms["distill"] = F.mse_loss(cf_n, u_n)
            if self.config.use_uniform_loss:
                terms["uniform"] = uniformity(cf_n) + uniformity(u_n)
        return terms

    def _log_q(self, uniq: Tensor, B: int, K: int, mode: str) -> Tensor:
        """log of the expected number of times each item of `uniq` [U] is drawn into one example's
        candidates: B positives drawn by training-target frequency when other examples' positives are
        candidates (otherwise 1, the example's own positive), plus K or B*K uniform draws. [U]"""
        if self.target_counts is None:
            raise RuntimeError("logq_correction needs the training-target counts: call set_target_counts first")
        counts = self.target_counts.to(uniq.device).float()
        p_pop = (counts[uniq] + 1.0) / (counts[1:].sum() + self.num_items)  # add-one: no item has probability 0
        n_pos = B if mode in ("in_batch", "mixed") else 1
        n_uni = B * K if mode in ("shared", "mixed") else K
        return torch.log(n_pos * p_pop + n_uni / self.num_items)

    def set_target_counts(self, counts: Tensor) -> None:
        """[N+1] how often each item is a training target: the popularity that in-batch negatives follow."""
        if counts.shape != (self.num_items + 1,):
            raise ValueError(f"target counts of shape {list(counts.shape)}, expected [{self.num_items + 1}]")
        self.target_counts = counts.float()

    def loss(self, batch: Batch) -> Tensor:
        """sum of `loss_terms`, each times its `config.weights` entry (the paper: all 1)."""
        return sum(self.config.weights.get(k, 1.0) * v for k, v in self.loss_terms(batch).items())

    @torch.no_grad()
    def build_item_table(self, batch_size: int = 64, progress: bool = False, shard: Shard | None = None) -> Tensor:
        """f_item for the whole catalogue, once per model: [N+1, d'], row 0 zeros. What scoring and serving use.

        Items run in order of prompt length, so a batch pads little. With a `shard` of several processes
        (a collective: every process calls it), each runs every world-th batch, the very batches one
        process would, and all get the whole table."""
        shard = shard or Shard()
        idx = torch.arange(1, self.num_items + 1)
        lengths = torch.tensor([len(f) for f in self.prompts.items(idx.numpy()).frozen])
        chunks = idx[lengths.argsort(stable=True)].split(batch_size)
        table = torch.zeros(self.num_items + 1, self.config.out_dim)
        for i in track(shard.share(len(chunks)), "item table", enabled=progress):
            table[chunks[i]] = self.item_vectors(chunks[i]).cpu()
        self.item_table = shard.sum_(table)  # [N+1, d']: each row filled by one process, zeros elsewhere
        return self.item_table

    def _users_for_scoring(self, histories: Histories) -> Tensor:
        """User vectors in chunks of `infer_batch_size`, in order of prompt length (little padding):
        callers may pass hundreds of users at once."""
        if self.item_table is None:
            self.build_item_table()
        items, _ = self._prompt_window(histories)
        order = (items != 0).sum(1).argsort(stable=True)  # [B]: prompt length follows the history length
        out = torch.empty(len(histories), self.config.out_dim, device=self.device)
        chunks = order.split(self.infer_batch_size)
        # Evaluation passes hundreds of users per call, each a full LLM pass: show how far it is.
        for chunk in track(chunks, "LLM-SRec users", enabled=len(chunks) >= 4):
            out[chunk.to(self.device)] = self.user_vectors(
                Histories(histories.items[chunk], histories.timestamps[chunk], histories.users[chunk]))
        return out  # [B, d']

    def _table_on(self, device: torch.device) -> Tensor:
        """The item table on the scoring device, copied once per table: scoring is called per request in
        serving and per 16 users in evaluation, and a fresh copy each time is a host-to-GPU transfer of the
        whole catalogue (1.9 MB for ML-1M's 3,706 items, 51 MB for 100k) before every product."""
        table = self.item_table
        if self._table_copy is None or self._table_copy[0] is not table or self._table_copy[1].device != device:
            self._table_copy = (table, table.to(device))
        return self._table_copy[1]

    def score_all(self, histories: Histories) -> Tensor:
        u = self._users_for_scoring(histories)  # [B, d']
        return neg_inf_padding(u @ self._table_on(u.device).T)  # [B, N+1]

    def score_candidates(self, histories: Histories, candidates: Tensor) -> Tensor:
        u = self._users_for_scoring(histories)  # [B, d']
        return torch.einsum("bd,bcd->bc", u, self._table_on(u.device)[candidates.to(u.device)])  # [B, C]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.adapters.parameters())

    # -- checkpoints: adapters, config, item table; never the LLM, never SASRec ------------------------
    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    @classmethod
    def from_config(cls, config, item_ids, item_mapping_hash):
        raise TypeError("LLM-SRec needs its SASRec teacher and LLM backbone: use LLMSRec.load(directory, ...)")

    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().contiguous().cpu() for k, v in self.adapters.state_dict().items()}
        save_file(state, str(directory / ADAPTERS))
        if self.item_table is not None:
            save_file({"item_table": self.item_table.contiguous().cpu()}, str(directory / ITEM_TABLE))
        if self.text_states is not None:
            save_file({"text_states": self.text_states.float().contiguous().cpu()}, str(directory / TEXT_STATES))
        write_json(directory / TITLES, self.prompts.titles)
        write_json(directory / "item_ids.json", self.item_ids)
        write_json(directory / "config.json", {
            "format_version": 1, "model": self.name, "config": self.config_dict(),
            "num_items": self.num_items, "item_mapping_hash": self.item_mapping_hash,
            "backbone": {"name": self.backbone.name, "fingerprint": self.backbone.fingerprint,
                         "hidden_size": self.backbone.hidden_size},
            "sasrec": {"model": self.sasrec.name, "weights_hash": state_hash(self.sasrec), "path": self.sasrec_path},
        })
        return directory

    @classmethod
    def load(cls, directory: Path, sasrec: Recommender | None = None, backbone: Backbone | None = None,
             sasrec_dir: Path | None = None, backbone_dir: Path | None = None, **backbone_kwargs) -> LLMSRec:
        """Rebuild from adapters + config + item table, the SASRec teacher and the (re)loaded LLM.

        Every file of `directory` is read and checked first (`read_checkpoint`: present, readable, config
        within the schema, item table and text states of the right shape), so a damaged one is a
        CheckpointError naming it before the LLM loads; the adapters' shapes need the LLM's width and the
        teacher's, so they are checked once the model is built. The teacher (`sasrec`, else loaded from `sasrec_dir`,
        else from the path the checkpoint recorded) and the backbone (`resolve_backbone`) are then checked
        against what the adapters were trained with: other weights would feed the adapters inputs they have
        never seen (DataError).
        """
        ck = read_checkpoint(directory)
        teacher_dir = sasrec_dir if sasrec_dir is not None else ck.meta["sasrec"].get("path")
        if sasrec is None:
            if teacher_dir is None:
                raise DataError(ck.directory, "no SASRec teacher given", "pass sasrec_dir= the pretrain_sasrec checkpoint")
            sasrec = SASRec.load(teacher_dir)
        if state_hash(sasrec) != ck.meta["sasrec"].get("weights_hash"):
            raise DataError(sasrec_dir or "sasrec", "this SASRec checkpoint is not the one LLM-SRec was distilled from",
                            "use the SASRec checkpoint of the same pipeline run, or re-run the distill stage")
        backbone = resolve_backbone(ck.config, backbone, backbone_dir, **backbone_kwargs)
        if backbone.fingerprint != ck.meta["backbone"].get("fingerprint"):
            raise DataError(ck.config.backbone, f"backbone weights differ from the ones used in training "
                                                f"({backbone.fingerprint[:24]} vs "
                                                f"{str(ck.meta['backbone'].get('fingerprint'))[:24]})",
                            "load the same backbone, or re-run the distill stage with this one")
        model = cls(ck.config, sasrec, backbone, ck.titles, ck.item_ids, ck.meta["item_mapping_hash"],
                    sasrec_path=str(teacher_dir) if teacher_dir is not None else None, text_states=ck.text_states)
        check_shapes(ck.directory / ADAPTERS, ck.adapters, model.adapters.state_dict(), ck.fix)
        model.adapters.load_state_dict(ck.adapters)
        model.item_table = ck.item_table
        model.eval()
        return model


# -- reading a checkpoint back ----------------------------------------------------------------------------------
def rename_cfsrec(meta: dict[str, Any]) -> None:
    """Checkpoints written before the teacher had one name everywhere call it `cfsrec`."""
    if "sasrec" not in meta and isinstance(meta.get("cfsrec"), dict):
        meta["sasrec"] = meta.pop("cfsrec")


def item_prefix_cache_to_kv_reuse(meta: dict[str, Any]) -> None:
    """Checkpoints from before `kv_reuse` say `item_prefix_cache`: the same math as `kv_reuse: opening`."""
    config = meta.get("config")
    if isinstance(config, dict) and config.pop("item_prefix_cache", None) is not None:
        config.setdefault("kv_reuse", "opening")


#: config.json migrations of older checkpoints, applied in this order before the config is read
MIGRATIONS = (rename_cfsrec, item_prefix_cache_to_kv_reuse)


@dataclass
class CheckpointFiles:
    """Every file of an LLM-SRec checkpoint, read and checked (`read_checkpoint`); the LLM and the
    teacher are not in it."""

    directory: Path
    fix: str  # what to do when a later check refuses it
    meta: dict[str, Any]  # config.json, migrated
    config: LLMSRecConfig
    titles: list[str]  # [N+1], index 0 padding
    item_ids: list[str]  # [N]
    adapters: dict[str, Tensor]
    item_table: Tensor | None  # [N+1, d']
    text_states: Tensor | None  # [N+1, H], with text_layer


def read_checkpoint(directory: Path) -> CheckpointFiles:
    """Read every file of an LLM-SRec checkpoint and check them against each other, without the LLM.

    Raises CheckpointError naming the file when one is missing, unreadable, of another version (a config
    this version cannot build, `LLMSRecConfig.check`) or of the wrong shape."""
    directory = Path(directory)
    fix = ("the LLM-SRec checkpoint is damaged or from another version: re-run the distill stage "
           "(`dvc repro -f -s distill`, or `dvc checkout models/llmsrec`)")
    for name in ("config.json", ADAPTERS, "item_ids.json", TITLES):
        if not (directory / name).is_file():
            raise CheckpointError(directory / name, "LLM-SRec checkpoint file not found",
                                  "point at a directory written by the distill stage")
    meta = read_checkpoint_json(directory / "config.json", fix)
    if isinstance(meta, dict):
        for migrate in MIGRATIONS:
            migrate(meta)
    if not isinstance(meta, dict) or not all(isinstance(meta.get(k), dict) for k in ("config", "sasrec", "backbone")) \
            or "item_mapping_hash" not in meta:
        raise CheckpointError(directory / "config.json", "is not an LLM-SRec checkpoint config (config, sasrec, "
                                                         "backbone, item_mapping_hash)", fix)
    try:
        speed = {k: getattr(DistillParams(), k) for k in DistillParams.run_only_knobs()
                 if k in LLMSRecConfig.__dataclass_fields__}
        config = LLMSRecConfig(**{**CHECKPOINT_DEFAULTS, **speed, **meta["config"]})
        config.check()
    except TypeError as e:  # a key this version does not know
        raise CheckpointError(directory / "config.json", f"its config does not build LLM-SRec ({e})", fix) from None
    except PipelineError as e:  # a value this version does not allow
        raise CheckpointError(directory / "config.json", f"its config does not build LLM-SRec ({e.problem})",
                              fix) from None
    titles = read_checkpoint_json(directory / TITLES, fix)
    item_ids = read_checkpoint_json(directory / "item_ids.json", fix)
    if not isinstance(item_ids, list) or not isinstance(titles, list) or len(titles) != len(item_ids) + 1:
        raise CheckpointError(directory / TITLES, f"{len(titles) if isinstance(titles, list) else 'no'} titles for "
                                                  f"{len(item_ids) if isinstance(item_ids, list) else 'no'} item "
                                                  "ids (+ padding)", fix)
    adapters = read_weights(directory / ADAPTERS, fix)
    item_table = None
    if (directory / ITEM_TABLE).is_file():
        item_table = read_weights(directory / ITEM_TABLE, fix).get("item_table")
        want = [len(item_ids) + 1, config.out_dim]
        if item_table is None or list(item_table.shape) != want:
            raise CheckpointError(directory / ITEM_TABLE, f"item table of shape "
                                                          f"{list(item_table.shape) if item_table is not None else 'none'}"
                                                          f", the checkpoint needs {want}", fix)
    text_states = None
    if config.text_layer is not None:
        if not (directory / TEXT_STATES).is_file():
            raise CheckpointError(directory / TEXT_STATES, "LLM-SRec checkpoint file not found (text_layer is set)", fix)
        text_states = read_weights(directory / TEXT_STATES, fix).get("text_states")
        if text_states is None or list(text_states.shape) != [len(item_ids) + 1,
                                                              int(meta["backbone"].get("hidden_size", -1))]:
            raise CheckpointError(directory / TEXT_STATES, "text states of the wrong shape for this checkpoint", fix)
    return CheckpointFiles(directory, fix, meta, config, titles, item_ids, adapters, item_table, text_states)


def resolve_backbone(config: LLMSRecConfig, backbone: Backbone | None = None, backbone_dir: Path | None = None,
                     **backbone_kwargs) -> Backbone:
    """The LLM a checkpoint's prompt pass runs on, cut to `config.num_layers`: `backbone` when given (the
    whole LLM or already cut), else loaded from `backbone_dir` (a package's own copy of a non-default LLM,
    recorded under `config.backbone`'s name), else `config.backbone` itself; `backbone_kwargs` (`device`,
    `dtype`) go to `load_backbone`."""
    if backbone is None:
        source = str(backbone_dir) if backbone_dir is not None else config.backbone
        backbone = load_backbone(source, **backbone_kwargs)
        backbone.name = config.backbone
    if config.num_layers is not None and backbone.num_layers != config.num_layers:
        backbone = truncate_layers(backbone, config.num_layers)
    return backbone
