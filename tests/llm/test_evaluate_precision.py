"""`evaluate` scores LLM-SRec on `llm.device` in `llm.dtype`, as `gate` scores the champion: the challenger
and the champion must never be compared at different precisions."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from components.config import DistillParams, parse_params
from components.llm.backbone import load_backbone, resolve_dtype
from components.stages import evaluate
from components.stages.distill import build_from_params
from tests.conftest import REPO


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, prepared_dir, teacher, tiny_llama_dir):
    """A saved SASRec teacher and an LLM-SRec checkpoint on the tiny random-weight Llama (a local HF dir)."""
    import pandas as pd

    from components.data.sequences import Prepared

    root = tmp_path_factory.mktemp("checkpoints")
    teacher.save(root / "sasrec")
    data = Prepared.load(prepared_dir)
    titles = [""] + pd.read_parquet(prepared_dir / "items.parquet").sort_values("idx")["title"].tolist()
    backbone = load_backbone(str(tiny_llama_dir), device="cpu", dtype="fp32")
    torch.manual_seed(0)
    # params' defaults, title states included (read after all of the tiny LLM's layers)
    model = build_from_params(data, copy.deepcopy(teacher), backbone, DistillParams(), titles, None, str(root / "sasrec"))
    assert model.text_states is not None and model.config.text_layer == backbone.num_layers
    model.save(root / "llmsrec")
    return {"sasrec": root / "sasrec", "llmsrec": root / "llmsrec"}


@pytest.mark.parametrize("dtype, expected", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_evaluate_loads_the_llm_with_the_params_dtype(prepared_dir, checkpoints, dtype, expected):
    """One of the two differs from what `auto` picks on any CPU, so ignoring llm.dtype fails here."""
    from components.data.sequences import Prepared

    params = parse_params({"llm": {"device": "cpu", "dtype": dtype},
                           "evaluate": {"models": ["popularity", "sasrec", "llmsrec"], "shuffle": []}})
    models = evaluate.load_models(params, Prepared.load(prepared_dir), checkpoints)
    backbone = models["llmsrec"].backbone
    assert backbone.dtype == expected and {p.dtype for p in backbone.model.parameters()} == {expected}
    assert backbone.device == torch.device("cpu")
    assert resolve_dtype(torch.device("cpu"), dtype) == expected  # the same resolution `gate` gets


def test_evaluate_and_gate_declare_the_llm_params_they_read():
    """DVC re-runs a stage when a declared param changes: a new llm.dtype must re-score both models."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in ("distill", "evaluate", "gate"):
        assert "llm" in stages[name]["params"], name
    assert "seed" in stages["gate"]["params"]  # champion_users draws a seeded subset
