"""The paper's prompts, and their tokenization.

User (last `history_len` items, oldest first):
    This user has made a series of purchases in the following order: Item No.1, Time: 2022-03-04,
    "<title>"[HistoryEmb], Item No.2, ... . Based on this sequence of purchases, generate user
    representation token:[UserOut]
Item:
    The item title and item embedding are as follows: "<title>"[HistoryEmb], then generate item
    representation token:[ItemOut]

`[HistoryEmb]`, `[UserOut]`, `[ItemOut]` are added to the tokenizer as special tokens, so each is one
id that cannot be produced by text. Their ids lie beyond the LLM's embedding table: the model
replaces them with injected vectors and never looks them up, so the LLM's own rows stay untouched.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import torch
from torch import Tensor

HISTORY, USER_OUT, ITEM_OUT = "[HistoryEmb]", "[UserOut]", "[ItemOut]"
SPECIAL_TOKENS = (HISTORY, USER_OUT, ITEM_OUT)
USER_PREFIX = "This user has made a series of purchases in the following order: "
USER_SUFFIX = ". Based on this sequence of purchases, generate user representation token:" + USER_OUT
ITEM_PREFIX = "The item title and item embedding are as follows: "
ITEM_SUFFIX = ", then generate item representation token:" + ITEM_OUT


def clean_title(title: str, max_chars: int) -> str:
    """Titles are data: they must not contain our special tokens, and very long ones are cut."""
    for tok in SPECIAL_TOKENS:
        title = title.replace(tok, "")
    title = title.replace('"', "'")  # the prompt quotes titles
    return title if len(title) <= max_chars else title[: max_chars - 1].rstrip() + "…"


def user_prompt(titles: list[str], timestamps: list[int]) -> str:
    entries = [
        f'Item No.{k}, Time: {datetime.fromtimestamp(int(t), UTC):%Y-%m-%d}, "{title}"{HISTORY}'
        for k, (title, t) in enumerate(zip(titles, timestamps, strict=True), start=1)
    ]
    return USER_PREFIX + ", ".join(entries) + USER_SUFFIX


def item_prompt(title: str) -> str:
    return f'{ITEM_PREFIX}"{title}"{HISTORY}{ITEM_SUFFIX}'


class PromptTokenizer:
    """Builds and tokenizes prompts for batches of histories and items.

    Item prompts never change, so they are tokenized once for the whole catalogue and only padded
    per batch. User prompts depend on the history, dates included, and are tokenized per batch with
    the fast tokenizer (milliseconds, next to seconds of LLM compute).
    """

    def __init__(self, tokenizer, titles: list[str], max_title_chars: int = 120, padding_side: str = "right"):
        self.tok = tokenizer
        self.tok.add_tokens(list(SPECIAL_TOKENS), special_tokens=True)
        self.history_id, self.user_out_id, self.item_out_id = self.tok.convert_tokens_to_ids(list(SPECIAL_TOKENS))
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self.padding_side = padding_side
        self.titles = [clean_title(t, max_title_chars) for t in titles]  # idx 0 = padding, unused
        self._item_ids = [self._ids(item_prompt(t)) for t in self.titles]
        # Tokens every item prompt starts with (compared as tokens, not text: a tokenizer may merge
        # across the boundary). Kept one short of the shortest prompt, so every row has tokens left.
        real = self._item_ids[1:] or self._item_ids
        first = real[0]
        n = min(len(r) for r in real) - 1
        for r in real[1:]:
            n = min(n, next((i for i, (a, b) in enumerate(zip(first, r, strict=False)) if a != b), n))
        self.item_prefix_len = max(n, 0)
        self.item_prefix_ids = first[: self.item_prefix_len]

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def pad(self, rows: list[list[int]]) -> tuple[Tensor, Tensor]:
        """[B, T] ids and attention mask, padded on `padding_side`."""
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for b, r in enumerate(rows):
            sl = slice(0, len(r)) if self.padding_side == "right" else slice(T - len(r), T)
            ids[b, sl] = torch.tensor(r, dtype=torch.long)
            mask[b, sl] = 1
        return ids, mask

    def users(self, items: np.ndarray, timestamps: np.ndarray) -> tuple[Tensor, Tensor]:
        """Prompts for right-aligned histories [B, L] (0 = padding): one [HistoryEmb] per real item."""
        texts = []
        for row_items, row_ts in zip(items, timestamps, strict=True):
            keep = row_items != 0
            texts.append(user_prompt([self.titles[i] for i in row_items[keep]], row_ts[keep].tolist()))
        rows = self.tok(texts, add_special_tokens=False)["input_ids"]
        return self.pad(rows)

    def items(self, idx: np.ndarray, skip: int = 0) -> tuple[Tensor, Tensor]:
        """Item prompts, without their first `skip` tokens when a cached prefix stands for them."""
        return self.pad([self._item_ids[i][skip:] for i in idx])

    def special_ids(self) -> list[int]:
        return [self.history_id, self.user_out_id, self.item_out_id]
