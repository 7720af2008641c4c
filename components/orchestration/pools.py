"""The Airflow pools the DAG `llm_srec_retraining` names, from params.yaml `orchestration`.

A task whose pool does not exist is never scheduled, so every Airflow installation creates them once:
`python -m components.orchestration pools --apply`, or `components/orchestration/stack.py` for the stacks it starts.
"""

from __future__ import annotations

from components.config import OrchestrationParams

DESCRIPTIONS = {"dvc": "DVC stages: one at a time (DVC's repository lock)", "gpu": "GPU slots on the gpu queue"}


def pools(cfg: OrchestrationParams) -> dict[str, int]:
    """name -> slots. The DVC pool has exactly 1 slot: that is its purpose."""
    out = {cfg.dvc_pool: 1}
    for task in cfg.tasks.values():
        if task.pool and task.pool not in out:
            out[task.pool] = 1
    return out
