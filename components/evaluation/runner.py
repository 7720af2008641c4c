"""Run any `Recommender` over a split of the prepared data and rank each user's positive.

Model-agnostic by construction: it calls only `score_candidates` / `score_all` and reads
`max_history` (how many recent items the model reads) to cut and, for the shuffle diagnostic,
permute exactly the window the model sees.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from components.data.histories import shuffle_window
from components.data.sequences import Prepared, flat_ranges
from components.evaluation.metrics import candidate_ranks, full_ranks
from components.models.base import Recommender


def history_pairs(data: Prepared, split: str, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch row, item) of every item in each row's full history for the split: what full ranking excludes."""
    starts, ends = data.bounds(split, rows)
    return (torch.from_numpy(np.repeat(np.arange(len(rows)), ends - starts)),
            torch.from_numpy(data.flat_items[flat_ranges(starts, ends)]))


@torch.no_grad()
def rank_split(model: Recommender, data: Prepared, split: str, *, batch_size: int = 256,
               full_catalogue: bool = False, shuffle_seed: int | None = None) -> pd.DataFrame:
    """Per-user ranks of the positive: `rank` among the 1+K candidates, `full_rank` in the catalogue.

    With `shuffle_seed`, each history's order inside the model's window is permuted (seeded).
    """
    cand = data.candidates[split]
    rows_all = data.rows(cand.user_idx)
    generator = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
    was_training = model.training
    model.eval()
    ranks, fulls = [], []
    try:
        for lo in range(0, len(rows_all), batch_size):
            rows = rows_all[lo: lo + batch_size]
            hist = data.histories(split, rows, model.max_history)
            if generator is not None:
                hist.items = shuffle_window(hist.items, model.shuffle_len, generator)  # [B, L]
            items = torch.from_numpy(cand.items[lo: lo + batch_size])  # [B, 1+K]
            if full_catalogue:
                # One user pass serves both protocols: for an LLM the user pass is the whole cost.
                scores = model.score_all(hist).cpu()  # [B, N+1]; ranks are counted on the CPU
                ranks.append(candidate_ranks(scores.gather(1, items)).numpy())
                ex_rows, ex_items = history_pairs(data, split, rows)
                fulls.append(full_ranks(scores, items[:, 0], ex_rows, ex_items).numpy())
            else:
                ranks.append(candidate_ranks(model.score_candidates(hist, items).cpu()).numpy())
    finally:
        model.train(was_training)
    out = pd.DataFrame({"user_idx": cand.user_idx, "rank": np.concatenate(ranks) if ranks else []})
    if full_catalogue:
        out["full_rank"] = np.concatenate(fulls) if fulls else []
    return out
