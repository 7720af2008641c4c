"""Evaluation: ranking metrics (metrics.py) and running any recommender over a split (runner.py)."""

from components.evaluation.metrics import (
    KS,
    candidate_ranks,
    full_ranks,
    hr_at,
    ndcg_at,
    per_user_metrics,
    relative_drop,
    summarize,
)
from components.evaluation.runner import rank_split

__all__ = ["KS", "candidate_ranks", "full_ranks", "hr_at", "ndcg_at", "per_user_metrics", "rank_split",
           "relative_drop", "summarize"]
