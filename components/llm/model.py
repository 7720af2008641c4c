"""LLM-SRec: a frozen SASRec distilled into a frozen LLM through small MLPs and two token vectors.

Shapes: d = SASRec hidden (64), H = LLM hidden, d' = 128.
- f_I      : d -> H -> H  (Linear, LayerNorm, LeakyReLU, Linear) SASRec item embedding -> LLM input
- f_user   : H -> 2048 -> d' on the last hidden state at [UserOut]
- f_item   : H -> 2048 -> d' on the last hidden state at [ItemOut]
- f_CF-user: d -> 128 -> d' (Linear, LayerNorm, GELU, Linear) on SASRec's user representation O_u
- two learnable H-vectors: the input embeddings of [UserOut] and [ItemOut]
Only these are trained (and saved). The LLM and SASRec are frozen and never saved here.

Loss = L_retrieval (softmax over positive + negatives of s = f_item(h_i) . f_user(h_u))
     + L_distill (MSE between normalized f_CF-user(O_u) and f_user(h_u))
     + L_uniform (mean exp(-2 ||a - b||^2) over pairs in the batch, for both normalized sets).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from components.errors import DataError
from components.io import write_json
from components.llm.backbone import Backbone
from components.llm.prompts import PromptTokenizer
from components.models.base import Batch, Histories, Recommender, neg_inf_padding, register

ADAPTERS, ITEM_TABLE, TITLES = "adapters.safetensors", "item_table.safetensors", "titles.json"


@dataclass
class LLMSRecConfig:
    backbone: str = "smollm2-135m"
    history_len: int = 10  # the prompt shows the last 10 items
    proj_hidden: int = 2048  # f_user / f_item inner width
    out_dim: int = 128  # d'
    cf_hidden: int = 128  # f_CF-user inner width
    num_negatives: int = 3  # training candidates: positive + 3 random negatives
    use_distill_loss: bool = True
    use_uniform_loss: bool = True
    max_title_chars: int = 120
    # Item prompts share their opening text: compute its keys/values once and reuse them. Same
    # results; measured +39% items/s for the item table (benchmarks/results/throughput/distill_throughput.json).
    item_prefix_cache: bool = True


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
        # Initialised at the scale of real token embeddings so the LLM sees in-distribution inputs.
        self.user_token = nn.Parameter(torch.randn(H) * 0.02)
        self.item_token = nn.Parameter(torch.randn(H) * 0.02)


@register("llmsrec")
class LLMSRec(Recommender):
    def __init__(self, config: LLMSRecConfig, cfsrec: Recommender, backbone: Backbone, titles: list[str],
                 item_ids: list[str], item_mapping_hash: str, padding_side: str = "right",
                 cfsrec_path: str | None = None):
        super().__init__(item_ids, item_mapping_hash)
        if len(titles) != len(item_ids) + 1:
            raise DataError("titles", f"{len(titles)} titles for {len(item_ids)} items (+ padding)",
                            "pass one title per item idx 0..N")
        self.config = config
        self.max_history = config.history_len
        self.num_negatives = config.num_negatives
        self.cfsrec = cfsrec
        self.cfsrec.requires_grad_(False).eval()
        self.cfsrec_path = cfsrec_path  # recorded so the checkpoint can find its teacher again
        # The LLM is held outside the module tree: it is frozen, shared, never saved and never
        # handed to an optimizer, DDP or state_dict.
        object.__setattr__(self, "backbone", backbone)
        d = int(cfsrec.item_embeddings.shape[1])
        self.adapters = Adapters(d, backbone.hidden_size, config)
        self.prompts = PromptTokenizer(backbone.tokenizer, titles, config.max_title_chars, padding_side)
        self.item_table: Tensor | None = None  # [N+1, d'] f_item for the catalogue, once computed
        self.infer_batch_size = 16  # prompts per LLM pass when scoring
        self._prefix_kv: list[tuple[Tensor, Tensor]] | None = None
        self._table_copy: tuple[Tensor, Tensor] | None = None  # (item_table, its copy on the scoring device)

    def train(self, mode: bool = True) -> LLMSRec:
        """Only the adapters ever train: the frozen teacher keeps dropout off in every mode."""
        super().train(mode)
        self.cfsrec.eval()
        return self

    # -- the LLM pass -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.adapters.user_token.device

    def llm_states(self, ids: Tensor, mask: Tensor, hist_items: Tensor, hist_valid: Tensor,
                   out_id: int, out_vec: Tensor, prefix: list[tuple[Tensor, Tensor]] | None = None) -> Tensor:
        """Last hidden state at the single `out_id` position of every row: [B, H] (fp32).

        hist_items [B, K] are the items whose f_I(E_i) go, in order, into the row's [HistoryEmb]
        slots; hist_valid [B, K] marks the real ones. One masked scatter fills every slot of the
        batch; positions come from the attention mask, so left and right padding give the same states.
        With `prefix` (per-layer keys/values of a token prefix shared by every row), `ids` are the
        tokens after it and attend to the cached prefix instead of recomputing it.
        """
        llm, dev = self.backbone.model, self.backbone.device
        ids, mask = ids.to(dev), mask.to(dev)
        emb = self.backbone.embed_tokens
        special = ids >= emb.num_embeddings  # our token ids lie beyond the LLM's table
        x = emb(ids.masked_fill(special, 0))  # [B, T, H]
        hist_slots = ids == self.prompts.history_id  # [B, T]
        vecs = self.adapters.f_I(self.cfsrec.item_embeddings[hist_items[hist_valid].to(self.device)])  # [M, H]
        if int(hist_slots.sum()) != vecs.shape[0]:
            raise RuntimeError(f"{int(hist_slots.sum())} [HistoryEmb] slots for {vecs.shape[0]} items")
        x = x.masked_scatter(hist_slots.unsqueeze(-1), vecs.to(device=dev, dtype=x.dtype))  # [B, T, H]
        out_slots = ids == out_id  # [B, T], exactly one per row
        x = torch.where(out_slots.unsqueeze(-1), out_vec.to(device=dev, dtype=x.dtype), x)  # [B, T, H]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]
        kwargs: dict[str, Any] = {"use_cache": False}
        if prefix is not None:
            from transformers import DynamicCache

            B, P = ids.shape[0], prefix[0][0].shape[-2]
            # Expanded views: the cache appends by concatenation, so the stored prefix is never mutated.
            cache = DynamicCache([(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in prefix],
                                 config=llm.config)
            kwargs = {_cache_kwarg(llm): cache, "use_cache": True}
            mask = torch.cat([mask.new_ones(B, P), mask], 1)  # [B, P+T]
            positions = positions + P
        h = llm(inputs_embeds=x, attention_mask=mask, position_ids=positions, **kwargs).last_hidden_state
        return h[out_slots].float().to(self.device)  # [B, H]

    def _prompt_window(self, histories: Histories) -> tuple[Tensor, Tensor]:
        window = histories.last(self.config.history_len)
        return window.items, window.timestamps  # [B, K]

    def user_vectors(self, histories: Histories) -> Tensor:
        items, ts = self._prompt_window(histories)
        ids, mask = self.prompts.users(items.cpu().numpy(), ts.cpu().numpy())
        h = self.llm_states(ids, mask, items, items != 0, self.prompts.user_out_id, self.adapters.user_token)
        return self.adapters.f_user(h)  # [B, d']

    def item_vectors(self, idx: Tensor) -> Tensor:
        """f_item(h_i) for item idx [M] -> [M, d']."""
        use_cache = self.config.item_prefix_cache and self.prompts.padding_side == "right"
        prefix = self._item_prefix() if use_cache else None
        ids, mask = self.prompts.items(idx.cpu().numpy(), skip=self.prompts.item_prefix_len if prefix else 0)
        h = self.llm_states(ids, mask, idx.unsqueeze(1), torch.ones_like(idx.unsqueeze(1), dtype=torch.bool),
                            self.prompts.item_out_id, self.adapters.item_token, prefix=prefix)
        return self.adapters.f_item(h)  # [M, d']

    @torch.no_grad()
    def _item_prefix(self) -> list[tuple[Tensor, Tensor]]:
        """Keys/values of the text every item prompt starts with. The LLM is frozen and the text is
        fixed, so they are constants: computed once per model, reused by every item pass."""
        llm = self.backbone.model
        if self._prefix_kv is None:
            ids = torch.tensor([self.prompts.item_prefix_ids], device=self.backbone.device)  # [1, P]
            out = llm(input_ids=ids, use_cache=True)
            cache = getattr(out, "cache", None) or out.past_key_values
            self._prefix_kv = [(layer.keys, layer.values) for layer in cache.layers]
        return self._prefix_kv

    # -- the interface --------------------------------------------------------------------------------
    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        """Reads the last column: history -> targets[:, -1] (positive), negatives[:, -1, :K]."""
        u = self.user_vectors(batch.histories)  # [B, d']
        cands = torch.cat([batch.targets[:, -1:], batch.negatives[:, -1, : self.num_negatives]], 1)  # [B, 1+K]
        iv = self.item_vectors(cands.reshape(-1)).view(*cands.shape, -1)  # [B, 1+K, d']
        logits = torch.einsum("bd,bcd->bc", u, iv)  # [B, 1+K]
        terms = {"retrieval": F.cross_entropy(logits, torch.zeros(len(u), dtype=torch.long, device=u.device))}
        u_n = F.normalize(u, dim=-1)
        if self.config.use_distill_loss or self.config.use_uniform_loss:
            with torch.no_grad():
                o_u = self.cfsrec.user_representation(batch.histories)  # [B, d]
            cf_n = F.normalize(self.adapters.f_cf_user(o_u), dim=-1)  # [B, d']
            if self.config.use_distill_loss:
                terms["distill"] = F.mse_loss(cf_n, u_n)
            if self.config.use_uniform_loss:
                terms["uniform"] = uniformity(cf_n) + uniformity(u_n)
        return terms

    def loss(self, batch: Batch) -> Tensor:
        return sum(self.loss_terms(batch).values())

    @torch.no_grad()
    def build_item_table(self, batch_size: int = 64, progress: bool = False) -> Tensor:
        """f_item for the whole catalogue, once per model, in batches: what scoring and serving use."""
        from tqdm import tqdm

        rows = [torch.zeros(1, self.config.out_dim)]
        idx = torch.arange(1, self.num_items + 1)
        for chunk in tqdm(idx.split(batch_size), desc="item table", disable=not progress, leave=False):
            rows.append(self.item_vectors(chunk).cpu())
        self.item_table = torch.cat(rows)  # [N+1, d']
        return self.item_table

    def _users_for_scoring(self, histories: Histories) -> Tensor:
        """User vectors in chunks of `infer_batch_size`: callers may pass hundreds of users at once."""
        if self.item_table is None:
            self.build_item_table()
        n = self.infer_batch_size
        chunks = [Histories(histories.items[i:i + n], histories.timestamps[i:i + n], histories.users[i:i + n])
                  for i in range(0, len(histories), n)]
        return torch.cat([self.user_vectors(c) for c in chunks])  # [B, d']

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
        write_json(directory / TITLES, self.prompts.titles)
        write_json(directory / "item_ids.json", self.item_ids)
        write_json(directory / "config.json", {
            "format_version": 1, "model": self.name, "config": self.config_dict(),
            "num_items": self.num_items, "item_mapping_hash": self.item_mapping_hash,
            "backbone": {"name": self.backbone.name, "fingerprint": self.backbone.fingerprint,
                         "hidden_size": self.backbone.hidden_size},
            "cfsrec": {"model": self.cfsrec.name, "weights_hash": state_hash(self.cfsrec), "path": self.cfsrec_path},
        })
        return directory

    @classmethod
    def load(cls, directory: Path, cfsrec: Recommender | None = None, backbone: Backbone | None = None,
             cfsrec_dir: Path | None = None, **backbone_kwargs) -> LLMSRec:
        """Rebuild from adapters + config + item table, the SASRec teacher and the (re)loaded LLM.

        The teacher and the backbone are checked against what the adapters were trained with: other
        weights would feed the adapters inputs they have never seen.
        """
        from components.llm.backbone import load_backbone
        from components.models.base import load_checkpoint

        directory = Path(directory)
        for name in ("config.json", ADAPTERS, "item_ids.json", TITLES):
            if not (directory / name).is_file():
                raise DataError(directory / name, "LLM-SRec checkpoint file not found",
                                "point at a directory written by the distill stage")
        meta = json.loads((directory / "config.json").read_text())
        config = LLMSRecConfig(**meta["config"])
        if cfsrec is None:
            cfsrec_dir = cfsrec_dir or meta["cfsrec"].get("path")
            if cfsrec_dir is None:
                raise DataError(directory, "no SASRec teacher given", "pass cfsrec_dir= the pretrain_cfsrec checkpoint")
            cfsrec = load_checkpoint(cfsrec_dir)
        if state_hash(cfsrec) != meta["cfsrec"]["weights_hash"]:
            raise DataError(cfsrec_dir or "cfsrec", "this SASRec checkpoint is not the one LLM-SRec was distilled from",
                            "use the SASRec checkpoint of the same pipeline run, or re-run the distill stage")
        if backbone is None:
            backbone = load_backbone(config.backbone, **backbone_kwargs)
        if backbone.fingerprint != meta["backbone"]["fingerprint"]:
            raise DataError(config.backbone, f"backbone weights differ from the ones used in training "
                                             f"({backbone.fingerprint[:24]} vs {meta['backbone']['fingerprint'][:24]})",
                            "load the same backbone, or re-run the distill stage with this one")
        titles = json.loads((directory / TITLES).read_text())
        item_ids = json.loads((directory / "item_ids.json").read_text())
        model = cls(config, cfsrec, backbone, titles, item_ids, meta["item_mapping_hash"],
                    cfsrec_path=str(cfsrec_dir) if cfsrec_dir else meta["cfsrec"].get("path"))
        model.adapters.load_state_dict(load_file(str(directory / ADAPTERS)))
        if (directory / ITEM_TABLE).is_file():
            model.item_table = load_file(str(directory / ITEM_TABLE))["item_table"]
        model.eval()
        return model

