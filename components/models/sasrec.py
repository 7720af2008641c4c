"""SASRec (Kang & McAuley, ICDM 2018): the paper's CF-SRec, teacher and baseline of LLM-SRec.

The block structure follows the reference implementation: the query is layer-normalised and the
keys/values are not, the attention adds a residual to the *normalised* query, and a final LayerNorm
produces the sequence output. The user representation O_u is the output at the last position.
Positions are counted inside the right-aligned window of `max_len`, so the most recent item always
has position `max_len - 1` whatever the history length.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.config import SASRecParams, parse
from components.data.histories import Batch, Histories
from components.models.base import Recommender, neg_inf_padding

_DEFAULTS = SASRecParams()


@dataclass
class SASRecConfig:
    """The architecture a SASRec checkpoint stores in its config.json; defaults from params `sasrec`."""

    hidden: int = _DEFAULTS.hidden
    num_blocks: int = _DEFAULTS.num_blocks
    num_heads: int = _DEFAULTS.num_heads
    dropout: float = _DEFAULTS.dropout
    max_len: int = _DEFAULTS.max_len
    loss: str = _DEFAULTS.loss  # ce: full softmax | bce: one sampled negative per position (the reference)

    def check(self) -> None:
        """Raises ConfigError naming `sasrec.<key>` when a value is out of what params `sasrec` allows."""
        parse(SASRecParams, asdict(self), at="sasrec")

    @classmethod
    def from_params(cls, params: SASRecParams) -> SASRecConfig:
        return cls(**{k: getattr(params, k) for k in cls.__dataclass_fields__})


class CausalSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(hidden, hidden)
        self.kv = nn.Linear(hidden, 2 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, queries: Tensor, keys: Tensor, allowed: Tensor) -> Tensor:
        B, L, H = queries.shape
        q = self.q(queries).view(B, L, self.heads, -1).transpose(1, 2)  # [B, h, L, H/h]
        k, v = self.kv(keys).view(B, L, 2, self.heads, -1).permute(2, 0, 3, 1, 4)  # 2 x [B, h, L, H/h]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,  # allowed: [B, 1, L, L]
                                           dropout_p=self.dropout if self.training else 0.0)  # [B, h, L, H/h]
        return self.out(y.transpose(1, 2).reshape(B, L, H))  # [B, L, H]


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.attn_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.attn = CausalSelfAttention(hidden, heads, dropout)
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-8)
        # The reference's point-wise feed-forward: two width-preserving layers, dropout after each.
        self.ffn = nn.Sequential(nn.Linear(hidden, hidden), nn.Dropout(dropout), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.Dropout(dropout))

    def forward(self, x: Tensor, allowed: Tensor, keep: Tensor) -> Tensor:
        q = self.attn_norm(x)  # [B, L, H]
        x = q + self.attn(q, x, allowed)  # [B, L, H]
        x = self.ffn_norm(x)
        x = x + self.ffn(x)  # [B, L, H]
        return x * keep  # padding positions stay exactly zero, as in the reference


class SASRec(Recommender):
    name = "sasrec"
    adam_betas = (0.9, 0.98)  # the SASRec reference's

    def __init__(self, config: SASRecConfig, item_ids: list[str], item_mapping_hash: str):
        super().__init__(item_ids, item_mapping_hash)
        config.check()
        self.config = config
        self.max_history = config.max_len
        self.num_negatives = 1 if config.loss == "bce" else 0
        H = config.hidden
        self.item_emb = nn.Embedding(self.num_items + 1, H, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len, H)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(H, config.num_heads, config.dropout) for _ in range(config.num_blocks))
        self.final_norm = nn.LayerNorm(H, eps=1e-8)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The PyTorch reference initialises every matrix Xavier-normal; LayerNorms keep 1/0.
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)
            else:
                nn.init.zeros_(p)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    # -- what LLM-SRec distils from -------------------------------------------------------------
    @property
    def item_embeddings(self) -> Tensor:
        """E: [N+1, H] item embedding table (row 0 is padding)."""
        return self.item_emb.weight

    def sequence_output(self, histories: Histories) -> Tensor:
        """[B, L, H] output at every position of the (at most max_len) most recent items."""
        # Histories come from the data loaders on the CPU; the model may live on a GPU (as LLM-SRec's teacher).
        items = histories.last(self.config.max_len).items.to(self.item_emb.weight.device)  # [B, L]
        B, L = items.shape
        keep = (items != 0).unsqueeze(-1)  # [B, L, 1]
        x = self.item_emb(items) * math.sqrt(self.config.hidden)  # [B, L, H]
        pos = torch.arange(self.config.max_len - L, self.config.max_len, device=items.device)  # [L]
        x = self.emb_dropout(x + self.pos_emb(pos)) * keep  # [B, L, H]
        # Causal, padding keys masked; every position may attend to itself so all-padding rows stay finite.
        causal = torch.ones(L, L, dtype=torch.bool, device=items.device).tril()  # [L, L]
        allowed = causal & (keep.transpose(1, 2) | torch.eye(L, dtype=torch.bool, device=items.device))  # [B, L, L]
        allowed = allowed.unsqueeze(1)  # [B, 1, L, L]
        for block in self.blocks:
            x = block(x, allowed, keep)
        return self.final_norm(x)  # [B, L, H]

    def user_representation(self, histories: Histories) -> Tensor:
        """O_u: [B, H] the output at the last (most recent) position."""
        return self.sequence_output(histories)[:, -1]

    # -- the interface ----------------------------------------------------------------------------
    def loss(self, batch: Batch) -> Tensor:
        out = self.sequence_output(batch.histories)  # [B, L, H]
        targets = batch.targets[:, -out.shape[1]:]  # [B, L]
        mask = targets != 0  # [B, L]
        if self.config.loss == "ce":
            # Only real positions, only real items (idx 1..N): padding is neither an input nor a class.
            logits = out[mask] @ self.item_emb.weight[1:].T  # [M, N]
            return F.cross_entropy(logits, targets[mask] - 1)
        negatives = batch.negatives[:, -out.shape[1]:, 0]  # [B, L]
        pos = (out * self.item_emb(targets)).sum(-1)[mask]  # [M]
        neg = (out * self.item_emb(negatives)).sum(-1)[mask]  # [M]
        return (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
                + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg)))

    def score_all(self, histories: Histories) -> Tensor:
        return neg_inf_padding(self.user_representation(histories) @ self.item_emb.weight.T)  # [B, N+1]

    def score_candidates(self, histories: Histories, candidates: Tensor) -> Tensor:
        u = self.user_representation(histories)  # [B, H]
        return torch.einsum("bh,bch->bc", u, self.item_emb(candidates.to(u.device)))  # [B, C]

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    @classmethod
    def from_config(cls, config: dict[str, Any], item_ids: list[str], item_mapping_hash: str) -> SASRec:
        return cls(SASRecConfig(**config), item_ids, item_mapping_hash)

