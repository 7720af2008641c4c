"""Fixtures for the LLM side: a tiny random-weight Llama (for speed) with SmolLM2's real tokenizer,
and small prepared synthetic data with a quickly trained SASRec teacher."""

from __future__ import annotations

import pytest
import torch

from components.config import CandidateParams, DataParams, DistillParams, SyntheticParams
from components.data.sources.synthetic import generate
from components.io import write_json, write_parquet
from components.stages.prepare import prepare

#: The paper's distill settings (and the reference's validation cadence and patience) where params.yaml's
#: defaults go beyond them: the LLM-SRec mechanics these tests check ([UserOut]/[ItemOut] readout,
#: sampled negatives, one example per user). A test of a beyond-the-paper switch sets it on top.
PAPER = {"targets": "last", "negatives": "sampled", "num_negatives": 3, "prompt": "paper", "readout": "token",
         "text_layer": None, "cf_dropout": 0.0,
         "eval_every": 0.1, "valid_users": 200, "patience": 3, "max_minutes": None}


def paper(**changes) -> DistillParams:
    """DistillParams at the paper's settings, with `changes` on top."""
    return DistillParams(**{**PAPER, **changes})


@pytest.fixture(autouse=True)
def one_thread_for_tiny_models(request):
    """Tiny models gain nothing from threads, and spinning OpenMP threads collapse when the machine is
    busy (measured 100x slower). Tests of the real backbone (marked `real_llm`) keep the default."""
    if request.node.get_closest_marker("real_llm"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smollm2_dir():
    from components.llm.backbone import dense_from_gguf, packaged_gguf

    return dense_from_gguf(packaged_gguf("smollm2-135m"))[0]


@pytest.fixture(scope="session")
def tiny_backbone(smollm2_dir):
    """Random weights, real tokenizer: tests the mechanics, never the quality."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    from components.llm.backbone import Backbone

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    model = LlamaModel(cfg).eval().requires_grad_(False)
    return Backbone(model=model, tokenizer=tok, name="tiny-llama", fingerprint="tiny", hidden_size=32,
                    dtype=torch.float32, device=torch.device("cpu"))


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    inter, items = generate(SyntheticParams(num_users=120, num_items=100, num_topics=6, max_length=40), seed=5)
    res = prepare(inter, items, DataParams(), CandidateParams(num_negatives=30), seed=5)
    for name in ("items", "users", "sequences", "candidates"):
        write_parquet(res[name], out / f"{name}.parquet")
    write_json(out / "meta.json", res["summary"])
    return out


@pytest.fixture(scope="session")
def teacher(prepared_dir):
    from components.data.sequences import Prepared
    from components.models.sasrec import SASRec, SASRecConfig

    data = Prepared.load(prepared_dir)
    torch.manual_seed(0)
    return SASRec(SASRecConfig(hidden=16, max_len=20), data.item_ids, data.item_mapping_hash).eval()


@pytest.fixture
def titles(prepared_dir):
    import pandas as pd

    return [""] + pd.read_parquet(prepared_dir / "items.parquet").sort_values("idx")["title"].tolist()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_dir):
    """A tiny random-weight Llama saved as a local HF directory: what `llm.backbone: <path>` loads."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(out)
    tok.save_pretrained(out)
    return out
