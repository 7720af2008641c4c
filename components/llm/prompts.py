"""LLM-SRec's prompts, and their tokenization into a frozen part and a live part.

The paper's prompts (Kim et al., KDD 2025, section 3.2; last `history_len` items, oldest first):

    User: This user has made a series of purchases in the following order: Item No.1, Time: 2022-03-04,
          "<title>"[HistoryEmb], Item No.2, ... . Based on this sequence of purchases, generate user
          representation token:[UserOut]
    Item: The item title and item embedding are as follows: "<title>"[HistoryEmb], then generate item
          representation token:[ItemOut]

`distill.prompt` picks the user prompt's layout (the item prompt is the paper's in every layout):

| layout               | what the LLM reads                                                                 |
|----------------------|------------------------------------------------------------------------------------|
| `paper`              | the paper's: each item's number, date and title, then its `[HistoryEmb]`            |
| `compact`            | beyond the paper: titles and `[HistoryEmb]` interleaved, no numbers or dates         |
| `text_first`         | beyond the paper: the paper's numbers, dates and titles first, then the K slots       |
| `text_first_compact` | beyond the paper: titles first, then the K slots                                    |
| `slots`              | beyond the paper: the K slots alone, no text (with `distill.text_layer` the titles'  |
|                      | frozen states enter through the slots, so the prompt is ~15 tokens, not ~200)        |

Every prompt is tokenized as three parts, so the model can spend gradients only where they are needed:
- `opening`: the fixed first sentence, the same ids for every row of a kind (its keys/values are
  computed once per model);
- `frozen`: the row's text before its first injected slot. It depends on nothing trained, so the frozen
  LLM's keys/values for it are constants (computed without gradients, cacheable across steps). In the
  text-first layouts that is all of the history's text;
- `live`: from the first `[HistoryEmb]` to `[UserOut]`/`[ItemOut]`: what runs with gradients.

Special ids are never produced by tokenizing text: each text piece is tokenized on its own and the
special ids are inserted between them. They lie beyond the LLM's embedding table (the model replaces them
with injected vectors), and they are not registered with the tokenizer, so a title that spells
`[HistoryEmb]` stays ordinary text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import get_args

import numpy as np

from components.config import PromptLayout

HISTORY, USER_OUT, ITEM_OUT = "[HistoryEmb]", "[UserOut]", "[ItemOut]"
SPECIAL_TOKENS = (HISTORY, USER_OUT, ITEM_OUT)
LAYOUTS = get_args(PromptLayout)  # paper, compact, text_first, text_first_compact, slots

PAPER_OPENING = "This user has made a series of purchases in the following order:"
PAPER_CLOSING = ". Based on this sequence of purchases, generate user representation token:"
COMPACT_OPENING = "Purchases in order:"
COMPACT_CLOSING = ". User representation:"
SLOTS_INTRO = ". Their item embeddings, in the same order:"
SLOTS_OPENING = "Item embeddings of the purchases, in order:"
USER_SLOT_TEXT = ". Sequence embedding:"  # the user slot's label (`distill.user_slot`, beyond the paper)
ITEM_OPENING = "The item title and item embedding are as follows:"
ITEM_CLOSING = ", then generate item representation token:"


def clean_title(title: str, max_chars: int) -> str:
    """Titles are quoted in the prompt, so their own double quotes become single ones; long ones are cut."""
    title = title.replace('"', "'")
    return title if len(title) <= max_chars else title[: max_chars - 1].rstrip() + "…"


def _date(ts: int) -> str:
    return f"{datetime.fromtimestamp(int(ts), UTC):%Y-%m-%d}"


def user_pieces(layout: str, titles: list[str], timestamps: list[int],
                user_slot: str | None = None) -> tuple[str, list[str | None]]:
    """(opening text, pieces): each piece is text, or None for a `[HistoryEmb]` slot; `[UserOut]` ends it.

    With `user_slot` (beyond the paper) one more slot, for SASRec's user representation, comes `before`
    the history (right after the opening) or `after` its slots (just before the closing sentence)."""
    opening, pieces = _history_pieces(layout, titles, timestamps)
    if user_slot == "before":
        pieces = [USER_SLOT_TEXT.removeprefix("."), None, ".", *pieces]
    elif user_slot == "after":
        pieces = [*pieces[:-1], USER_SLOT_TEXT, None, pieces[-1]]
    elif user_slot is not None:
        raise ValueError(f"user_slot={user_slot!r}: use before, after or None")
    return opening, pieces


def _history_pieces(layout: str, titles: list[str], timestamps: list[int]) -> tuple[str, list[str | None]]:
    if layout in ("paper", "text_first"):
        opening, closing = PAPER_OPENING, PAPER_CLOSING
        texts = [f'{"," if k > 1 else ""} Item No.{k}, Time: {_date(t)}, "{title}"'
                 for k, (title, t) in enumerate(zip(titles, timestamps, strict=True), start=1)]
    elif layout == "slots":
        return SLOTS_OPENING, [*([None] * len(titles)), COMPACT_CLOSING]
    elif layout in ("compact", "text_first_compact"):
        opening, closing = COMPACT_OPENING, COMPACT_CLOSING
        texts = [f'{"," if k > 1 else ""} "{title}"' for k, title in enumerate(titles, start=1)]
    else:
        raise ValueError(f"unknown prompt layout {layout!r}; use one of {LAYOUTS}")
    if layout.startswith("text_first"):
        pieces: list[str | None] = ["".join(texts) + SLOTS_INTRO, *([None] * len(texts)), " " + closing.lstrip(". ")]
    else:
        pieces = [p for text in texts for p in (text, None)] + [closing]
    return opening, pieces


def user_prompt(layout: str, titles: list[str], timestamps: list[int], user_slot: str | None = None) -> str:
    """The whole user prompt as text (for reading and logging; the model never tokenizes this string)."""
    opening, pieces = user_pieces(layout, titles, timestamps, user_slot)
    return opening + "".join(HISTORY if p is None else p for p in pieces) + USER_OUT


def item_prompt(title: str) -> str:
    return f'{ITEM_OPENING} "{title}"{HISTORY}{ITEM_CLOSING}{ITEM_OUT}'


@dataclass
class Prompts:
    """A batch of tokenized prompts of one kind, split as the module docstring says."""

    opening: list[int]  # shared by every row
    frozen: list[list[int]]  # per row: the text before the first injected slot
    live: list[list[int]]  # per row: first [HistoryEmb] .. [UserOut]/[ItemOut]

    def __len__(self) -> int:
        return len(self.live)

    def full(self, b: int) -> list[int]:
        return self.opening + self.frozen[b] + self.live[b]

    def num_tokens(self) -> int:
        return sum(len(self.opening) + len(f) + len(v) for f, v in zip(self.frozen, self.live, strict=True))


class PromptTokenizer:
    """Builds and tokenizes prompts for batches of histories and items.

    Item prompts never change, so they are tokenized once for the whole catalogue. User prompts depend on
    the history, dates included, and are tokenized per batch (one batched call of the fast tokenizer:
    milliseconds, next to the LLM's compute).

    `special_base`: the first id past the LLM's embedding table; `[HistoryEmb]`, `[UserOut]` and
    `[ItemOut]` get `special_base + 0, 1, 2`. With `user_slot` (before | after), every user prompt holds one
    more `[HistoryEmb]`, for SASRec's user representation, before or after the history's.
    """

    def __init__(self, tokenizer, titles: list[str], special_base: int, max_title_chars: int = 120,
                 layout: str = "paper", user_slot: str | None = None):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown prompt layout {layout!r}; use one of {LAYOUTS}")
        self.tok = tokenizer
        self.layout = layout
        self.user_slot = user_slot
        self.history_id, self.user_out_id, self.item_out_id = (special_base + k for k in range(3))
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self.titles = [clean_title(t, max_title_chars) for t in titles]  # idx 0 = padding, unused
        opening = {"paper": PAPER_OPENING, "text_first": PAPER_OPENING, "slots": SLOTS_OPENING}.get(layout, COMPACT_OPENING)
        self.user_opening = self._ids([opening])[0]
        self.item_opening = self._ids([ITEM_OPENING])[0]
        closing = self._ids([ITEM_CLOSING])[0]
        frozen = self._ids([f' "{t}"' for t in self.titles])
        self._item_frozen = frozen
        self._item_live = [self.history_id, *closing, self.item_out_id]

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tok(texts, add_special_tokens=False)["input_ids"] if texts else []

    def users(self, items: np.ndarray, timestamps: np.ndarray) -> Prompts:
        """Prompts for right-aligned histories [B, L] (0 = padding): one [HistoryEmb] per real item, in order."""
        rows = []
        for row_items, row_ts in zip(items, timestamps, strict=True):
            keep = row_items != 0
            rows.append(user_pieces(self.layout, [self.titles[i] for i in row_items[keep]], row_ts[keep].tolist(),
                                    self.user_slot)[1])
        texts = [p for pieces in rows for p in pieces if p is not None]
        ids = iter(self._ids(texts))
        frozen, live = [], []
        for pieces in rows:
            first_slot = pieces.index(None) if None in pieces else len(pieces)
            frozen.append([t for p in pieces[:first_slot] for t in next(ids)])
            row: list[int] = []
            for p in pieces[first_slot:]:
                row.extend([self.history_id] if p is None else next(ids))
            live.append(row + [self.user_out_id])
        return Prompts(self.user_opening, frozen, live)

    def items(self, idx: np.ndarray) -> Prompts:
        return Prompts(self.item_opening, [self._item_frozen[i] for i in idx], [self._item_live for _ in idx])

    def special_ids(self) -> list[int]:
        return [self.history_id, self.user_out_id, self.item_out_id]
