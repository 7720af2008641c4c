"""Keys/values of frozen prompt text: a bounded cache keyed by the tokens themselves.

The LLM is frozen, so the keys/values it computes for a token sequence that follows a fixed opening
are a pure function of those tokens. Keying the cache by the token ids makes a hit the same numbers by
construction (to float rounding: a recomputation runs in another batch): an item's title text is computed
once per model instead of once per step, and a validation user's history text once per run instead of
once per validation.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor

#: one row's keys/values: per layer (keys [kv_heads, F, head_dim], values [kv_heads, F, head_dim])
RowKV = list[tuple[Tensor, Tensor]]


class FrozenKVCache:
    """Least-recently-used map from (kind, token ids) to one row's per-layer keys/values, within `max_mb`.

    `max_mb=0` disables it. Entries are copies, never views of a batch's tensors, so evicting one frees
    its memory.
    """

    def __init__(self, max_mb: float):
        self.max_bytes = int(max_mb * 2**20)
        self._rows: OrderedDict[tuple, tuple[RowKV, int]] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: tuple) -> RowKV | None:
        hit = self._rows.get(key)
        if hit is None:
            self.misses += 1
            return None
        self._rows.move_to_end(key)
        self.hits += 1
        return hit[0]

    def put(self, key: tuple, row: RowKV) -> None:
        if self.max_bytes <= 0 or key in self._rows:
            return
        size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in row)
        if size > self.max_bytes:
            return
        while self.bytes + size > self.max_bytes and self._rows:
            _, (_, old) = self._rows.popitem(last=False)
            self.bytes -= old
        self._rows[key] = ([(k.clone(), v.clone()) for k, v in row], size)
        self.bytes += size

    def clear(self) -> None:
        self._rows.clear()
        self.bytes = 0
