"""Preprocessing shared by `prepare` and its tests: k-core filtering, user subsampling, ordering."""

from __future__ import annotations

import numpy as np
import pandas as pd


def kcore(df: pd.DataFrame, min_user: int, min_item: int) -> tuple[pd.DataFrame, int]:
    """Drop users/items below the thresholds, repeatedly, until nothing changes (the paper's 5-core).

    Returns the filtered frame and the number of passes it took.
    """
    passes = 0
    while True:
        passes += 1
        keep = (df.groupby("user_id")["user_id"].transform("size") >= min_user) & \
               (df.groupby("item_id")["item_id"].transform("size") >= min_item)
        if keep.all():
            return df, passes
        df = df[keep]


def subsample_users(df: pd.DataFrame, max_users: int | None, seed: int) -> pd.DataFrame:
    """Rows of `max_users` users drawn without replacement (seeded), each with all their rows; all rows
    when `max_users` is falsy or not below the user count."""
    if not max_users:
        return df
    users = np.sort(df["user_id"].unique())
    if len(users) <= max_users:
        return df
    chosen = np.random.default_rng(seed).choice(users, size=max_users, replace=False)
    return df[df["user_id"].isin(chosen)]


def chronological(df: pd.DataFrame) -> pd.DataFrame:
    """Sort by user, then time; same-second ties keep their source order, so the result is deterministic."""
    order_cols = ["user_id", "timestamp", "_source", "_row"]
    cols = [c for c in order_cols if c in df.columns]
    return df.sort_values(cols, kind="stable").reset_index(drop=True)
