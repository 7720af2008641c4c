"""LLM-SRec mechanics on a tiny random-weight Llama: shapes, injection, padding, gradients, frozen LLM."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from components.config import parse_params
from components.data.examples import Examples
from components.data.sequences import Prepared
from components.errors import ConfigError
from components.llm.model import LLMSRec
from components.llm.prompts import LAYOUTS
from components.stages.distill import build_model, train_adapters
from tests.llm.conftest import paper


@pytest.fixture
def data(prepared_dir):
    return Prepared.load(prepared_dir)


@pytest.fixture
def model(data, teacher, tiny_backbone, titles):
    torch.manual_seed(1)
    return build_model(data, copy.deepcopy(teacher), tiny_backbone, paper(), titles)


def test_shapes_and_prompt_slots(model, data):
    batch = Examples(data, window=20, seed=0).batch(np.arange(6), 3, shuffle=False)
    terms = model.loss_terms(batch)
    assert set(terms) == {"retrieval", "distill", "uniform"} and all(torch.isfinite(v) for v in terms.values())
    hist = data.histories("valid", np.arange(6), model.max_history)
    assert hist.items.shape[1] <= 10
    assert model.user_vectors(hist).shape == (6, 128)
    assert model.item_vectors(torch.tensor([1, 2, 3])).shape == (3, 128)
    p = model.prompts.users(hist.items.numpy(), hist.timestamps.numpy())
    rows = [p.full(b) for b in range(6)]
    assert [r.count(model.prompts.history_id) for r in rows] == (hist.items != 0).sum(1).tolist()
    assert [r.count(model.prompts.user_out_id) for r in rows] == [1] * 6
    assert all(r[-1] == model.prompts.user_out_id for r in rows)
    assert all(model.prompts.history_id not in f for f in p.frozen)  # the frozen part holds text only
    assert all(v[0] == model.prompts.history_id for v in p.live)  # the live part starts at the first slot
    # the injected ids lie beyond the LLM's own table, so its embedding rows are never used for them
    assert min(model.prompts.special_ids()) >= model.backbone.embed_tokens.num_embeddings


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_batch_gives_each_row_what_it_gives_alone(data, teacher, tiny_backbone, titles, layout):
    """Padding (of frozen text and of the live part) never leaks into a row's state, in every layout."""
    torch.manual_seed(2)
    m = build_model(data, copy.deepcopy(teacher), tiny_backbone, paper(prompt=layout), titles)
    hist = data.histories("valid", np.arange(8), 10)
    hist.items[0, :-2] = 0  # one very short history forces heavy padding in the batch
    with torch.no_grad():
        batched = m.user_vectors(hist)
        m.kv_cache.clear()
        alone = torch.cat([m.user_vectors(type(hist)(hist.items[i:i + 1], hist.timestamps[i:i + 1],
                                                      hist.users[i:i + 1])) for i in range(8)])
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=1e-4)
    # a different item in a [HistoryEmb] slot changes the output: the injection is really read
    hist2 = copy.deepcopy(hist)
    hist2.items[1, -1] = 1 if hist.items[1, -1] != 1 else 2
    with torch.no_grad():
        changed = m.user_vectors(hist2)
    assert not torch.allclose(changed[1], batched[1])
    torch.testing.assert_close(changed[2], batched[2], atol=1e-5, rtol=1e-5)


def test_gradients_reach_only_adapters_and_llm_stays_bit_identical(model, data):
    llm_before = {k: v.clone() for k, v in model.backbone.model.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in model.sasrec.state_dict().items()}
    batch = Examples(data, window=20, seed=0).batch(np.arange(8), 3, shuffle=False)
    model.loss(batch).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("adapters.") for n in trainable)
    assert model.adapters.user_token.grad is not None and model.adapters.item_token.grad is not None
    assert model.adapters.f_I[0].weight.grad.abs().sum() > 0  # through the LLM back to the injection
    assert all(p.grad is None for p in model.backbone.model.parameters())
    assert all(p.grad is None for p in model.sasrec.parameters())
    train_adapters(model, data, paper(max_steps=3, eval_every=1.0, valid_users=10, epochs=1), seed=0, log=lambda *_: None)
    for k, v in model.backbone.model.state_dict().items():
        assert torch.equal(v, llm_before[k]), k
    for k, v in model.sasrec.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k


def test_loss_falls_over_a_few_steps(model, data):
    batch = Examples(data, window=20, seed=0).batch(np.arange(20), 3, shuffle=False)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=3e-4)
    losses = []
    for _ in range(20):
        loss = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def test_ablation_switches_drop_the_loss_terms(data, teacher, tiny_backbone, titles):
    opts = paper(use_distill_loss=False, use_uniform_loss=False)
    m = build_model(data, copy.deepcopy(teacher), tiny_backbone, opts, titles)
    batch = Examples(data, window=20, seed=0).batch(np.arange(4), 3, shuffle=False)
    assert set(m.loss_terms(batch)) == {"retrieval"}


def test_shuffle_train_moves_items_but_not_dates(data):
    ex = Examples(data, window=20, seed=0)
    plain = ex.batch(np.arange(10), 3, shuffle=False)
    shuffled = ex.batch(np.arange(10), 3, shuffle=True)
    assert torch.equal(plain.histories.timestamps, shuffled.histories.timestamps)
    assert torch.equal(plain.histories.items.sort(1).values, shuffled.histories.items.sort(1).values)
    assert not torch.equal(plain.histories.items, shuffled.histories.items)


def test_checkpoint_round_trip_saves_only_trained_parts(model, data, tmp_path):
    train_adapters(model, data, paper(max_steps=2, eval_every=1.0, valid_users=10, epochs=1), seed=0, log=lambda *_: None)
    model.build_item_table(16)
    model.save(tmp_path / "ckpt")
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert files == {"adapters.safetensors", "config.json", "item_table.safetensors", "titles.json", "item_ids.json"}
    loaded = LLMSRec.load(tmp_path / "ckpt", sasrec=model.sasrec, backbone=model.backbone)
    torch.testing.assert_close(loaded.item_table, model.item_table)
    for k, v in model.adapters.state_dict().items():
        assert torch.equal(loaded.adapters.state_dict()[k], v)
    hist = data.histories("test", np.arange(5), 10)
    cands = torch.from_numpy(data.candidates["test"].items[:5])
    with torch.no_grad():
        torch.testing.assert_close(loaded.score_candidates(hist, cands), model.score_candidates(hist, cands))
    # the adapters hold nothing of the LLM
    size = (tmp_path / "ckpt" / "adapters.safetensors").stat().st_size
    assert size < 4 * sum(p.numel() for p in model.trainable_parameters()) + 100_000


def test_item_table_is_copied_to_the_scoring_device_once_per_table(model, data):
    """Scoring reuses one device copy of the item table (a GPU copy per request or per 16 users would move
    the whole catalogue each time), and a rebuilt table is never scored through a stale copy. The meta
    device stands in for a GPU: on the CPU `.to` returns the table itself, so nothing would be tested."""
    model.build_item_table(16)
    meta = torch.device("meta")
    first = model._table_on(meta)
    assert first.device == meta and first.shape == model.item_table.shape
    assert model._table_on(meta) is first  # no second transfer
    model.item_table = model.item_table * 2  # a new table (a re-built or re-loaded one)
    assert model._table_on(meta) is not first
    hist = data.histories("test", np.arange(3), 10)
    with torch.no_grad():  # and scoring on the CPU uses the new table
        u = model._users_for_scoring(hist)
        torch.testing.assert_close(model.score_all(hist)[:, 1:], u @ model.item_table[1:].T)


def test_wrong_teacher_is_refused(model, data, tmp_path, teacher):
    from components.errors import DataError

    model.save(tmp_path / "ckpt")
    other = copy.deepcopy(teacher)
    with torch.no_grad():
        other.item_emb.weight.add_(1.0)
    with pytest.raises(DataError, match="not the one LLM-SRec was distilled from"):
        LLMSRec.load(tmp_path / "ckpt", sasrec=other, backbone=model.backbone)


def test_nan_loss_names_the_step(model, data):
    from components.errors import PipelineError

    with torch.no_grad():
        model.adapters.f_user[3].weight.fill_(float("nan"))
    with pytest.raises(PipelineError, match=r"distill.lr: .*step 1 of"):
        train_adapters(model, data, paper(max_steps=2, valid_users=5), seed=0, log=lambda *_: None)


@pytest.fixture(scope="module")
def tiny_backbone_fp64(smollm2_dir):
    """The tiny Llama in float64: the cached and the one-pass paths then agree to rounding, not to fp32 noise."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    from components.llm.backbone import Backbone

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    model = LlamaModel(cfg).double().eval().requires_grad_(False)
    return Backbone(model=model, tokenizer=tok, name="tiny-llama-fp64", fingerprint="tiny64", hidden_size=32,
                    dtype=torch.float64, device=torch.device("cpu"))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cached_keys_values_give_the_same_losses_and_gradients_as_one_pass(data, teacher, tiny_backbone_fp64,
                                                                          titles, layout):
    """kv_reuse (the opening once; each row's frozen text without gradients, cached across steps) is
    exact: the loss and every adapter gradient equal those of one pass over the whole prompt."""
    torch.manual_seed(4)
    m = build_model(data, copy.deepcopy(teacher).double(), tiny_backbone_fp64, paper(prompt=layout),
                    titles).double()
    batch = Examples(data, window=20, seed=0).batch(np.arange(10), 3, shuffle=False)
    m.cache_users = True  # as in validation: user text is cached too
    got = {}
    for reuse in ("none", "opening", "frozen", "frozen-cached"):
        m.config.kv_reuse = reuse.split("-")[0]
        if reuse == "frozen":
            m.kv_cache.clear()
            m.user_kv_cache.clear()
        m.adapters.zero_grad()
        loss = m.loss(batch)
        loss.backward()
        got[reuse] = (loss.detach(), [p.grad.clone() for p in m.adapters.parameters() if p.grad is not None])
        if reuse == "none":  # the reference really is one pass: it neither filled nor read a cache
            assert len(m.kv_cache) == len(m.user_kv_cache) == m.kv_cache.hits == m.user_kv_cache.hits == 0
    # The last pass read both caches (`slots` has no user text before its first slot: nothing to cache).
    if layout == "slots":
        assert m.user_kv_cache.hits == 0 and len(m.user_kv_cache) == 0 and m.kv_cache.hits > 0
    else:
        assert m.user_kv_cache.hits >= len(batch.histories) and m.kv_cache.hits > 0
    m.cache_users, hits = False, m.user_kv_cache.hits
    m.user_vectors(batch.histories)
    assert m.user_kv_cache.hits == hits  # training's user prompts never touch it
    for reuse in ("opening", "frozen", "frozen-cached"):
        torch.testing.assert_close(got[reuse][0], got["none"][0], atol=1e-10, rtol=1e-10)
        assert len(got[reuse][1]) == len(got["none"][1]) > 0
        for a, b in zip(got[reuse][1], got["none"][1], strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def test_frozen_text_cache_stays_within_its_bound(data, teacher, tiny_backbone, titles):
    m = build_model(data, copy.deepcopy(teacher), tiny_backbone, paper(kv_cache_mb=0.05), titles)
    with torch.no_grad():
        m.build_item_table(16)
    assert 0 < m.kv_cache.bytes <= 0.05 * 2**20 and len(m.kv_cache) < m.num_items  # the oldest were evicted
    off = build_model(data, copy.deepcopy(teacher), tiny_backbone, paper(kv_cache_mb=0), titles)
    with torch.no_grad():
        off.item_vectors(torch.tensor([1, 2]))
    assert len(off.kv_cache) == 0


def test_teacher_stays_in_eval_mode_while_training(model, data):
    model.train()
    assert model.adapters.training and not model.sasrec.training
    batch = Examples(data, window=20, seed=0).batch(np.arange(6), 3, shuffle=False)
    with torch.no_grad():
        a = model.loss_terms(batch)["distill"]
        b = model.loss_terms(batch)["distill"]
    assert torch.equal(a, b)  # no dropout noise in O_u


def test_wall_clock_budget_validates_keeps_the_best_and_stops(model, data):
    result = train_adapters(model, data, paper(max_minutes=1e-6, epochs=5, eval_every=1.0, valid_users=5), seed=0,
                 log=lambda *_: None)
    assert result["steps"] == 1 and result["stopped_by"] == "max_minutes"
    assert result["curve"][-1]["valid_ndcg@10"] is not None and result["best_step"] == 1


@pytest.mark.parametrize("bad", [0, -1.5, "ten"])
def test_bad_wall_clock_budget_is_refused(bad):
    with pytest.raises(ConfigError, match="distill.max_minutes"):
        parse_params({"distill": {"max_minutes": bad}})


def test_targets_all_gives_every_position_its_own_window(data):
    last = Examples(data, window=20, seed=0)
    every = Examples(data, window=20, seed=0, targets="all")
    assert len(every) == int(every.set.lengths.sum()) > len(last)
    rows = np.flatnonzero(every.rows == 3)  # all examples of one user, newest first
    b = every.batch(rows, 3, shuffle=False)
    seq = every.set.inputs[3][every.set.inputs[3] != 0]
    for j, hist in enumerate(b.histories.items):
        h = hist[hist != 0].numpy()
        assert np.array_equal(h, seq[: len(seq) - j])  # the prefix before the target...
        assert int(b.targets[j, 0]) == int(every.set.targets[3, -1 - j])  # ...and the item that followed it
    # the newest example of each user is the paper's one
    newest = every.batch(np.flatnonzero(every.pos == every.set.inputs.shape[1] - 1)[:5], 3, shuffle=False)
    paper = last.batch(np.arange(5), 3, shuffle=False)
    assert torch.equal(newest.histories.items, paper.histories.items) and torch.equal(newest.targets, paper.targets)


def test_in_batch_negatives_add_every_other_positive(data, teacher, tiny_backbone, titles):
    torch.manual_seed(5)
    m = build_model(data, copy.deepcopy(teacher), tiny_backbone,
                    paper(negatives="in_batch", num_negatives=1, use_distill_loss=False,
                                   use_uniform_loss=False), titles)
    batch = Examples(data, window=20, seed=0).batch(np.arange(6), 1, shuffle=False)
    batch.targets[1, 0] = batch.targets[0, 0]  # two examples share a positive: it is not a negative of either
    batch.histories.users[3] = batch.histories.users[2]  # two positions of one user: neither's positive is a negative
    batch.targets[4, 0] = batch.histories.items[5, -1]  # an item of example 5's own history: not its negative
    with torch.no_grad():
        got = m.loss_terms(batch)["retrieval"]
        u = m.user_vectors(batch.histories)
        pos, neg, users = batch.targets[:, 0], batch.negatives[:, 0, 0], batch.histories.users
        expected = []
        for b in range(6):
            own_history = {int(i) for i in batch.histories.items[b] if i != 0}
            others = {int(pos[j]) for j in range(6) if users[j] != users[b]} - own_history
            cands = [int(pos[b])] + sorted((others | {int(neg[b])}) - {int(pos[b])})
            logits = u[b] @ m.item_vectors(torch.tensor(cands)).T
            expected.append(-torch.log_softmax(logits, 0)[0])
    torch.testing.assert_close(got, torch.stack(expected).mean(), atol=1e-5, rtol=1e-5)


def test_loss_weights_scale_the_terms(model, data):
    batch = Examples(data, window=20, seed=0).batch(np.arange(6), 3, shuffle=False)
    with torch.no_grad():
        terms = model.loss_terms(batch)
        model.config.weights = {"retrieval": 1.0, "distill": 0.0, "uniform": 2.0}
        weighted = model.loss(batch)
    torch.testing.assert_close(weighted, terms["retrieval"] + 2 * terms["uniform"])
    with pytest.raises(ConfigError, match=r"unknown key 'distill\.weights\.retrival'. Fix: did you mean "
                                          r"'distill\.weights\.retrieval'"):
        parse_params({"distill": {"weights": {"retrival": 1.0}}})


def test_first_layers_only(data, teacher, tiny_backbone, titles, tmp_path):
    from components.llm.backbone import truncate_layers

    cut = truncate_layers(tiny_backbone, 1)
    assert cut.num_layers == 1 and tiny_backbone.num_layers == 2  # the original is left whole
    assert cut.fingerprint != tiny_backbone.fingerprint and cut.model.layers[0] is tiny_backbone.model.layers[0]
    with pytest.raises(ConfigError, match="llm.num_layers"):
        truncate_layers(tiny_backbone, 3)
    torch.manual_seed(6)
    m = build_model(data, copy.deepcopy(teacher), cut, paper(), titles)
    assert m.config.num_layers == 1
    m.eval()
    m.build_item_table(32)
    m.save(tmp_path / "ckpt")
    loaded = LLMSRec.load(tmp_path / "ckpt", sasrec=m.sasrec, backbone=tiny_backbone)  # given the whole LLM
    assert loaded.backbone.num_layers == 1
    hist = data.histories("test", np.arange(4), 10)
    with torch.no_grad():
        loaded.item_table = None  # recomputed through the loaded (cut) backbone
        torch.testing.assert_close(loaded.score_all(hist), m.score_all(hist), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_no_title_can_produce_a_special_token(data, teacher, tiny_backbone, titles, seed):
    """Markers nested, split and repeated inside titles stay text: each prompt holds exactly its own slots."""
    from components.llm.prompts import SPECIAL_TOKENS

    rng = np.random.default_rng(seed)
    evil = list(titles)
    for i in range(1, len(evil)):
        marker = SPECIAL_TOKENS[rng.integers(3)]
        cut = int(rng.integers(1, len(marker)))
        evil[i] = rng.choice([f"Best {marker[:cut]}{marker}{marker[cut:]} ever", f"{marker}{marker}",
                              f"x{marker[:cut]} {marker[cut:]}", marker]) + evil[i]
    m = build_model(data, copy.deepcopy(teacher), tiny_backbone, paper(), evil)
    specials = set(m.prompts.special_ids())
    items = m.prompts.items(np.arange(1, m.num_items + 1))
    for b in range(len(items)):
        row = items.full(b)
        assert row.count(m.prompts.history_id) == 1 and row.count(m.prompts.item_out_id) == 1
        assert not specials & set(items.frozen[b]) and not specials & set(items.opening)
    hist = data.histories("valid", np.arange(10), 10)
    users = m.prompts.users(hist.items.numpy(), hist.timestamps.numpy())
    for b in range(len(users)):
        assert users.full(b).count(m.prompts.history_id) == int((hist.items[b] != 0).sum())
    with torch.no_grad():
        m.build_item_table(64)  # would raise "N [HistoryEmb] slots for M items" on a smuggled marker


def test_the_reference_schedule_decays_the_learning_rate_at_each_validation(model, data):
    result = train_adapters(model, data, paper(max_steps=3, epochs=1, eval_every=0.01, valid_users=5, lr=1e-3,
                                             lr_decay=0.5), seed=0, log=lambda *_: None)
    assert [r["lr"] for r in result["curve"]] == pytest.approx([1e-3, 5e-4, 2.5e-4])  # lr used in each round
    assert all(r["valid_ndcg@10"] is not None for r in result["curve"])


@pytest.mark.parametrize("layout", ["paper", "text_first_compact"])
def test_slot_readout_reads_the_last_injected_item(data, teacher, tiny_backbone, titles, layout):
    """readout: slot (beyond the paper) reads the state at the last [HistoryEmb]: batched equals alone,
    the most recent item changes it, and gradients reach f_I through the LLM."""
    torch.manual_seed(7)
    m = build_model(data, copy.deepcopy(teacher), tiny_backbone, paper(prompt=layout, readout="slot"), titles)
    hist = data.histories("valid", np.arange(6), 10)
    hist.items[0, :-3] = 0
    with torch.no_grad():
        batched = m.user_vectors(hist)
        alone = torch.cat([m.user_vectors(type(hist)(hist.items[i:i + 1], hist.timestamps[i:i + 1],
                                                      hist.users[i:i + 1])) for i in range(6)])
        hist.items[2, -1] = 1 if hist.items[2, -1] != 1 else 2
        changed = m.user_vectors(hist)
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(changed[2], batched[2]) and torch.allclose(changed[3], batched[3], atol=1e-5)
    batch = Examples(data, window=20, seed=0).batch(np.arange(6), 3, shuffle=False)
    m.loss(batch).backward()
    assert m.adapters.f_I[0].weight.grad.abs().sum() > 0 and m.adapters.f_user[0].weight.grad.abs().sum() > 0
