"""LLM-SRec's warm start (components/stages/distill.py `warm_start`): adapters staged from a champion are the
ones training starts from, and adapters that do not fit are refused or skipped per the policy.

On the tiny random-weight Llama: the mechanics, not the quality (benchmarks/llmsrec_warm_start.py measures that).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from components.data.sequences import Prepared
from components.errors import ConfigError
from components.models.sasrec import SASRec, SASRecConfig
from components.stages.distill import build_model, train_adapters, validate_ndcg, warm_start
from tests.llm.conftest import paper

#: a few steps and a small validation set: enough for trained adapters that differ from a fresh model's
QUICK = {"max_steps": 3, "valid_users": 24, "eval_every": 1.0, "batch_size": 8, "kv_cache_mb": 0}


@pytest.fixture(scope="module")
def champion(prepared_dir, teacher, tiny_backbone, tmp_path_factory):
    """An LLM-SRec checkpoint trained a few steps (the production package's adapters, as staged), and the
    validation NDCG@10 it scores on the valid users training validates on."""
    import pandas as pd

    data = Prepared.load(prepared_dir)
    titles = [""] + pd.read_parquet(prepared_dir / "items.parquet").sort_values("idx")["title"].tolist()
    torch.manual_seed(1)
    model = build_model(data, copy.deepcopy(teacher), tiny_backbone, paper(**QUICK), titles)
    train_adapters(model, data, paper(**QUICK), seed=1)
    model.build_item_table()
    out = model.save(tmp_path_factory.mktemp("champion") / "llmsrec")
    rows = valid_rows(data, QUICK["valid_users"], seed=7)
    return out, model, validate_ndcg(model, data, rows, 16, 64)


def valid_rows(data: Prepared, n: int, seed: int) -> np.ndarray:
    """The validation users `train_adapters` draws for `seed`."""
    total = len(data.candidates["valid"].user_idx)
    return np.sort(np.random.default_rng(seed).choice(total, min(total, n), replace=False))


def test_staged_adapters_are_where_training_starts(champion, prepared_dir, teacher, tiny_backbone, titles):
    path, trained, champion_ndcg = champion
    data = Prepared.load(prepared_dir)
    torch.manual_seed(99)  # other initial weights than the champion's: the warm start must replace them all
    model = build_model(data, copy.deepcopy(teacher), tiny_backbone, paper(**QUICK), titles)
    assert not torch.equal(model.adapters.f_I[0].weight, trained.adapters.f_I[0].weight)

    report = warm_start(model, path, "error")
    assert "skipped" not in report and report["new_items"] == 0 and not report["teacher_changed"], report
    for name, value in trained.adapters.state_dict().items():
        assert torch.equal(model.adapters.state_dict()[name], value), name
    assert model.item_table is None  # computed for this catalogue, never copied from the checkpoint

    # Step 0 of the new run is the champion's own score on the same users, and it is the best so far: the
    # new curve starts there (a fresh Adam, the old run's best score not carried over).
    result = train_adapters(model, data, paper(**QUICK), seed=7, warm=True)
    assert result["initial_valid_ndcg@10"] == round(champion_ndcg, 5)
    assert result["best_valid_ndcg@10"] >= result["initial_valid_ndcg@10"]
    assert result["steps"] == QUICK["max_steps"]


def test_adapters_that_do_not_fit_error_or_train_fresh(champion, prepared_dir, teacher, tiny_backbone, titles):
    path, _, _ = champion
    data = Prepared.load(prepared_dir)
    other_prompt = build_model(data, copy.deepcopy(teacher), tiny_backbone, paper(**QUICK, prompt="compact"), titles)
    with pytest.raises(ConfigError, match=r"prompt paper vs compact.*warm_start_mismatch: fresh"):
        warm_start(other_prompt, path, "error")
    before = copy.deepcopy(other_prompt.adapters.state_dict())
    report = warm_start(other_prompt, path, "fresh")
    assert "prompt paper vs compact" in report["skipped"]
    assert all(torch.equal(v, other_prompt.adapters.state_dict()[k]) for k, v in before.items())  # left fresh

    other_llm = build_model(data, copy.deepcopy(teacher), dataclasses.replace(tiny_backbone, fingerprint="other"),
                            paper(**QUICK), titles)
    with pytest.raises(ConfigError, match="another backbone"):
        warm_start(other_llm, path, "error")

    narrow = SASRec(SASRecConfig(hidden=8, max_len=20), data.item_ids, data.item_mapping_hash).eval()
    other_width = build_model(data, narrow, tiny_backbone, paper(**QUICK), titles)
    assert "other shapes" in warm_start(other_width, path, "fresh")["skipped"]

    (path.parent / "empty").mkdir(exist_ok=True)
    with pytest.raises(ConfigError, match="not a readable LLM-SRec checkpoint"):
        warm_start(other_prompt, path.parent / "empty", "error")
