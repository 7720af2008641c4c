"""SASRec: exact checkpoint round trip, causality, padding invariance, both losses."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from components.data.histories import Batch, Histories
from components.errors import ConfigError, DataError
from components.llm.checkpoints import load_checkpoint
from components.models import Popularity, SASRec, SASRecConfig

IDS = [f"item{i}" for i in range(1, 31)]


def model(**kw) -> SASRec:
    torch.manual_seed(0)
    return SASRec(SASRecConfig(**{"hidden": 16, "max_len": 8, "dropout": 0.2, **kw}), IDS, "hash0")


def hist(items: list[list[int]]) -> Histories:
    t = torch.tensor(items)
    return Histories(t, t * 100, torch.arange(len(items)))


def test_checkpoint_round_trips_exactly(tmp_path):
    m = model(loss="ce", num_blocks=3, num_heads=2)
    with torch.no_grad():  # make sure trained-looking, non-initial values survive
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    m.save(tmp_path / "ckpt")
    back = load_checkpoint(tmp_path / "ckpt")
    assert isinstance(back, SASRec) and back.config == m.config
    assert back.item_ids == IDS and back.item_mapping_hash == "hash0"
    for k, v in m.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    m.eval()
    h = hist([[0, 0, 3, 4, 5], [1, 2, 3, 4, 30]])
    assert torch.equal(m.score_all(h), back.score_all(h))
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["num_items"] == 30 and config["config"]["num_blocks"] == 3
    assert not list(tmp_path.glob("ckpt/*.pt")) and not list(tmp_path.glob("ckpt/*.pkl"))


def test_popularity_round_trips(tmp_path):
    import numpy as np

    pop = Popularity.fit(np.array([1, 1, 2, 30]), IDS, "hash0")
    pop.save(tmp_path / "pop")
    back = load_checkpoint(tmp_path / "pop")
    assert isinstance(back, Popularity) and torch.equal(back.counts, pop.counts)


def test_output_is_causal_and_ignores_left_padding():
    m = model().eval()
    a = m.sequence_output(hist([[1, 2, 3, 4, 5]]))
    b = m.sequence_output(hist([[1, 2, 3, 9, 7]]))  # only the last two items differ
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6)  # earlier positions cannot see them
    assert not torch.allclose(a[:, 3:], b[:, 3:])
    short = m.user_representation(hist([[4, 5, 6]]))
    padded = m.user_representation(hist([[0, 0, 0, 4, 5, 6]]))
    assert torch.allclose(short, padded, atol=1e-6)
    # Longer than max_len: only the most recent max_len items count.
    long = m.user_representation(hist([[11, 12, 1, 2, 3, 4, 5, 6, 7, 8]]))
    cut = m.user_representation(hist([[1, 2, 3, 4, 5, 6, 7, 8]]))
    assert torch.allclose(long, cut, atol=1e-6)


def test_scores_agree_between_candidates_and_full_catalogue():
    m = model().eval()
    h = hist([[0, 1, 2], [3, 4, 5]])
    cand = torch.tensor([[5, 1, 30], [2, 2, 7]])
    full = m.score_all(h)
    assert full.shape == (2, 31) and torch.isinf(full[:, 0]).all()
    assert torch.allclose(m.score_candidates(h, cand), full.gather(1, cand), atol=1e-5)


def test_ce_loss_is_full_softmax_over_real_items():
    m = model(loss="ce", dropout=0.0)
    items = torch.tensor([[0, 1, 2, 3]])
    targets = torch.tensor([[0, 2, 3, 4]])
    batch = Batch(hist(items.tolist()), targets, torch.zeros(1, 4, 0, dtype=torch.long))
    out = m.sequence_output(batch.histories)[0, 1:]  # [3, H]: the three real positions
    logits = out @ m.item_emb.weight[1:].T
    assert m.loss(batch).item() == pytest.approx(F.cross_entropy(logits, targets[0, 1:] - 1).item(), rel=1e-5)


def test_bce_loss_uses_positive_and_sampled_negative():
    m = model(loss="bce", dropout=0.0)
    assert m.num_negatives == 1
    h = hist([[0, 1, 2]])
    targets = torch.tensor([[0, 2, 3]])
    negs = torch.tensor([[[0], [9], [10]]])
    loss = m.loss(Batch(h, targets, negs))
    out = m.sequence_output(h)[0, 1:]
    pos = (out * m.item_emb.weight[[2, 3]]).sum(-1)
    neg = (out * m.item_emb.weight[[9, 10]]).sum(-1)
    expect = -(F.logsigmoid(pos).mean() + F.logsigmoid(-neg).mean())
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)
    loss.backward()
    assert m.item_emb.weight.grad[[2, 3, 9, 10]].abs().sum() > 0
    assert m.item_emb.weight.grad[[4, 5]].abs().sum() == 0  # untouched items get no gradient


def test_bad_config_is_a_config_error():
    with pytest.raises(ConfigError, match="sasrec.loss"):
        model(loss="hinge")
    with pytest.raises(ConfigError, match="num_heads"):
        model(hidden=10, num_heads=3)


def test_check_data_refuses_another_mapping():
    m = model()
    m.check_data(30, "hash0", "data/prepared", "retrain")
    with pytest.raises(DataError, match="trained on 30 items.*31 items.*Fix: retrain"):
        m.check_data(31, "hash0", "data/prepared", "retrain")
    with pytest.raises(DataError, match="mapping"):
        m.check_data(30, "other", "data/prepared", "retrain")


def test_damaged_checkpoint_is_a_clear_error(tmp_path):
    model().save(tmp_path / "c")
    (tmp_path / "c" / "item_ids.json").write_text(json.dumps(IDS[:-1]))
    with pytest.raises(DataError, match="29 item ids for 30 items"):
        load_checkpoint(tmp_path / "c")
    (tmp_path / "c" / "model.safetensors").unlink()
    with pytest.raises(DataError, match="checkpoint file not found"):
        load_checkpoint(tmp_path / "c")
