"""The switches beyond the paper that the quality tables compare: shared and mixed negatives, the logQ
correction, frozen title states, and the two controls (no LLM pass, neutral titles)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from components.data.examples import Examples
from components.data.histories import Histories
from components.data.sequences import Prepared
from components.errors import ConfigError, DataError
from components.llm.model import LLMSRec
from components.llm.text_states import standardise, title_states
from components.stages.distill import build_model, neutral_titles
from tests.llm.conftest import paper

QUIET = {"use_distill_loss": False, "use_uniform_loss": False}


@pytest.fixture
def data(prepared_dir):
    return Prepared.load(prepared_dir)


def _batch(data, k):
    return Examples(data, window=20, seed=0).batch(np.arange(6), k, shuffle=False)


def _expected_retrieval(m, batch, columns_for, log_q=None):
    """Mean cross-entropy of each example's positive over the columns `columns_for(b)` gives it."""
    u = m.user_vectors(batch.histories)
    losses = []
    for b in range(len(u)):
        cands = columns_for(b)
        logits = u[b] @ m.item_vectors(torch.tensor(cands)).T
        if log_q is not None:
            logits = logits - log_q(torch.tensor(cands))
        losses.append(-torch.log_softmax(logits, 0)[0])
    return torch.stack(losses).mean()


def test_shared_negatives_add_every_other_examples_sampled_negatives(data, teacher, tiny_backbone, titles):
    torch.manual_seed(5)
    m = build_model(data, copy.deepcopy(teacher), tiny_backbone, paper(negatives="shared", num_negatives=2, **QUIET),
                    titles)
    batch = _batch(data, 2)
    batch.negatives[4, 0, 0] = batch.histories.items[5, -1]  # in example 5's history: not a negative of 5
    pos, neg = batch.targets[:, 0], batch.negatives[:, 0]
    with torch.no_grad():
        got = m.loss_terms(batch)["retrieval"]

        def columns(b):
            own_history = {int(i) for i in batch.histories.items[b] if i != 0}
            shared = {int(i) for i in neg.flatten()} - own_history
            own = {int(i) for i in neg[b]}
            return [int(pos[b])] + sorted((shared | own) - {int(pos[b])})

        expected = _expected_retrieval(m, batch, columns)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_logq_correction_subtracts_the_log_of_each_columns_expected_draws(data, teacher, tiny_backbone, titles):
    torch.manual_seed(5)
    m = build_model(data, copy.deepcopy(teacher), tiny_backbone,
                    paper(negatives="mixed", num_negatives=1, logq_correction=True, **QUIET), titles)
    batch = _batch(data, 1)
    with pytest.raises(RuntimeError, match="set_target_counts"):
        m.loss_terms(batch)
    counts = torch.zeros(m.num_items + 1)
    counts[1:] = torch.arange(m.num_items).float() % 7  # an uneven popularity
    m.set_target_counts(counts)
    pos, neg = batch.targets[:, 0], batch.negatives[:, 0]
    B, K, N = 6, 1, m.num_items

    def log_q(items):  # B draws by popularity (add-one smoothed) + B*K uniform draws
        p = (counts[items] + 1) / (counts[1:].sum() + N)
        return torch.log(B * p + B * K / N)

    with torch.no_grad():
        got = m.loss_terms(batch)["retrieval"]

        def columns(b):
            own_history = {int(i) for i in batch.histories.items[b] if i != 0}
            pool = ({int(i) for i in pos} | {int(i) for i in neg.flatten()}) - own_history
            return [int(pos[b])] + sorted((pool | {int(neg[b, 0])}) - {int(pos[b])})

        expected = _expected_retrieval(m, batch, columns, log_q)
        plain = _expected_retrieval(m, batch, columns)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.isclose(got, plain)  # the correction changed the loss
    with pytest.raises(ValueError, match="target counts of shape"):
        m.set_target_counts(torch.zeros(3))


def test_title_states_are_standardised_mean_pooled_states_and_ignore_padding(tiny_backbone, titles):
    t = title_states(tiny_backbone, titles[:9], layer=1, batch_size=3)
    assert t.shape == (9, tiny_backbone.hidden_size) and torch.equal(t[0], torch.zeros(tiny_backbone.hidden_size))
    torch.testing.assert_close(t[1:].mean(0), torch.zeros(tiny_backbone.hidden_size), atol=1e-5, rtol=0)
    # One title alone, by hand: its tokens through the first layer (then the final norm), averaged.
    from components.llm.backbone import truncate_layers
    from components.llm.prompts import clean_title

    cut = truncate_layers(tiny_backbone, 1)
    raw = []
    for title in titles[1:9]:
        ids = tiny_backbone.tokenizer([f'"{clean_title(title, 120)}"'], add_special_tokens=False)["input_ids"]
        raw.append(cut.model(input_ids=torch.tensor(ids)).last_hidden_state[0].mean(0))
    expected = standardise(torch.cat([torch.zeros(1, tiny_backbone.hidden_size), torch.stack(raw)]))
    torch.testing.assert_close(t, expected, atol=1e-4, rtol=1e-4)  # batching and padding change nothing
    with pytest.raises(Exception, match="text_layer=3"):
        title_states(tiny_backbone, titles[:5], layer=3)


def test_title_states_enter_every_slot_and_survive_a_checkpoint(data, teacher, tiny_backbone, titles, tmp_path):
    text = title_states(tiny_backbone, titles, layer=2)
    torch.manual_seed(7)
    m = build_model(data, copy.deepcopy(teacher), tiny_backbone, paper(text_layer=2, readout="slot"), titles,
                    text_states=text)
    items = torch.tensor([1, 2, 3])
    with torch.no_grad():
        expected = m.adapters.f_I(m.sasrec.item_embeddings[items]) + m.adapters.f_T(text[items])
        torch.testing.assert_close(m.inject(items), expected)
    terms = m.loss_terms(_batch(data, 3))
    sum(terms.values()).backward()
    assert m.adapters.f_T[0].weight.grad is not None and m.adapters.f_T[0].weight.grad.abs().sum() > 0
    m.eval()
    m.build_item_table(32)
    m.save(tmp_path / "ckpt")
    loaded = LLMSRec.load(tmp_path / "ckpt", sasrec=m.sasrec, backbone=tiny_backbone)
    torch.testing.assert_close(loaded.text_states, text)
    hist = data.histories("test", np.arange(4), 10)
    with torch.no_grad():
        loaded.item_table = None
        torch.testing.assert_close(loaded.score_all(hist), m.score_all(hist), atol=1e-5, rtol=1e-5)
    (tmp_path / "ckpt" / "text_states.safetensors").unlink()
    with pytest.raises(Exception, match="text_states.safetensors"):
        LLMSRec.load(tmp_path / "ckpt", sasrec=m.sasrec, backbone=tiny_backbone)
    with pytest.raises(DataError, match="text_layer=2 but text states were not given"):
        build_model(data, copy.deepcopy(teacher), tiny_backbone, paper(text_layer=2), titles)


def test_the_no_llm_control_reads_the_injected_vector_and_never_runs_the_llm(data, teacher, tiny_backbone, titles):
    torch.manual_seed(8)
    m = build_model(data, copy.deepcopy(teacher), tiny_backbone, paper(llm_pass=False, readout="slot"), titles)
    calls = []
    hook = tiny_backbone.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        hist = data.histories("valid", np.arange(5), m.max_history)
        with torch.no_grad():
            last = hist.items[:, -1]  # right-aligned: the most recent item
            torch.testing.assert_close(m.user_vectors(hist), m.adapters.f_user(m.inject(last)))
            torch.testing.assert_close(m.item_vectors(torch.tensor([4, 5])),
                                       m.adapters.f_item(m.inject(torch.tensor([4, 5]))))
        terms = m.loss_terms(_batch(data, 3))
        sum(terms.values()).backward()
    finally:
        hook.remove()
    assert calls == []
    assert m.adapters.f_I[0].weight.grad.abs().sum() > 0


def test_neutral_titles_name_only_the_item():
    assert neutral_titles(["B00X", "7"]) == ["", "Product B00X", "Product 7"]


def test_title_states_are_cached_by_what_determines_them(tiny_backbone, titles, tmp_path):
    from components.llm.text_states import cached_title_states

    calls = []
    hook = tiny_backbone.model.layers[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        first = cached_title_states(tiny_backbone, titles[:6], 1, cache=tmp_path)
        n = len(calls)
        again = cached_title_states(tiny_backbone, titles[:6], 1, cache=tmp_path)
        assert len(calls) == n > 0 and torch.equal(first, again)  # read back, not recomputed
        other = cached_title_states(tiny_backbone, ["", "another title", *titles[2:6]], 1, cache=tmp_path)
        assert len(calls) > n and not torch.equal(other, first)  # one title changed: recomputed
        for entry in (tmp_path / "text_states").glob("*.safetensors"):
            entry.write_bytes(b"garbage")  # a damaged entry is recomputed, not trusted
        n = len(calls)
        torch.testing.assert_close(cached_title_states(tiny_backbone, titles[:6], 1, cache=tmp_path), first)
        assert len(calls) > n
    finally:
        hook.remove()


def test_the_stage_model_reads_titles_at_full_depth_and_prompts_on_the_first_layers(data, teacher, tiny_backbone,
                                                                                   titles, tmp_path, monkeypatch):
    from components.stages.distill import build_from_params

    monkeypatch.setenv("LLMSREC_CACHE", str(tmp_path))
    m = build_from_params(data, copy.deepcopy(teacher), tiny_backbone,
                          paper(text_layer="all", neutral_titles=True, readout="slot"), titles, 1)
    assert m.config.text_layer == tiny_backbone.num_layers == 2 and m.backbone.num_layers == 1
    assert m.prompts.titles[1] == f"Product {data.item_ids[0]}"
    torch.testing.assert_close(m.text_states, title_states(tiny_backbone, neutral_titles(data.item_ids), 2))


@pytest.mark.parametrize("where", ["before", "after"])
def test_the_user_slot_carries_sasrecs_whole_window(where, data, teacher, tiny_backbone, titles, tmp_path):
    torch.manual_seed(9)
    m = build_model(data, copy.deepcopy(teacher), tiny_backbone,
                    paper(user_slot=where, readout="slot", prompt="slots", history_len=3), titles)
    assert m.max_history == teacher.max_history == 20  # SASRec's window, not the prompt's 3 items
    hist = data.histories("valid", np.arange(6), m.max_history)
    assert int((hist.items != 0).sum(1).min()) > 3  # every row holds items beyond the prompt's window
    prompts = m.prompts.users(hist.last(3).items.numpy(), hist.last(3).timestamps.numpy())
    assert [row.count(m.prompts.history_id) for row in prompts.live] == [4] * 6  # 3 items + the user slot
    with torch.no_grad():
        u = m.user_vectors(hist)
        older = hist.items.clone()
        older[:, -5] = torch.where(older[:, -5] == 1, 2, 1)  # outside the prompt, inside SASRec's window
        moved = m.user_vectors(Histories(older, hist.timestamps, hist.users))
    assert not torch.allclose(u, moved)  # O_u reached the state read
    terms = m.loss_terms(Examples(data, window=20, seed=0, history_len=3).batch(np.arange(6), 3, shuffle=False))
    sum(terms.values()).backward()
    assert m.adapters.f_U[0].weight.grad.abs().sum() > 0
    m.item_table = None
    m.save(tmp_path / "ckpt")
    loaded = LLMSRec.load(tmp_path / "ckpt", sasrec=m.sasrec, backbone=tiny_backbone)
    assert loaded.config.user_slot == where and loaded.max_history == 20
    with torch.no_grad():
        torch.testing.assert_close(loaded.user_vectors(hist), m.user_vectors(hist))
    # The shuffle diagnostic reorders the prompt's 3 items and never swaps in others from SASRec's window.
    from components.evaluation.runner import rank_split

    seen = []
    score = loaded.score_candidates
    loaded.score_candidates = lambda h, c: (seen.append(h.items.clone()), score(h, c))[1]
    rank_split(loaded, data, "valid", shuffle_seed=3)
    shuffled = torch.cat(seen)
    plain = data.histories("valid", data.rows(data.candidates["valid"].user_idx), 20).items
    assert torch.equal(shuffled[:, :-3], plain[:, :-3])
    assert torch.equal(shuffled[:, -3:].sort(1).values, plain[:, -3:].sort(1).values)
    assert not torch.equal(shuffled, plain)


def test_the_no_llm_control_reads_the_last_slot_wherever_the_user_slot_is(data, teacher, tiny_backbone, titles):
    torch.manual_seed(10)
    after, before = (build_model(data, copy.deepcopy(teacher), tiny_backbone,
                                 paper(user_slot=where, llm_pass=False, readout="slot"), titles)
                     for where in ("after", "before"))
    hist = data.histories("valid", np.arange(5), after.max_history)
    with torch.no_grad():
        torch.testing.assert_close(after.user_vectors(hist),
                                   after.adapters.f_user(after.adapters.f_U(after.sasrec.user_representation(hist))))
        torch.testing.assert_close(before.user_vectors(hist), before.adapters.f_user(before.inject(hist.items[:, -1])))


def test_the_user_slot_sits_where_it_is_asked():
    from components.llm.prompts import user_prompt

    assert user_prompt("slots", ["a", "b"], [0, 0], "before") == \
        "Item embeddings of the purchases, in order: Sequence embedding:[HistoryEmb].[HistoryEmb][HistoryEmb]. User representation:[UserOut]"
    assert user_prompt("slots", ["a", "b"], [0, 0], "after") == \
        "Item embeddings of the purchases, in order:[HistoryEmb][HistoryEmb]. Sequence embedding:[HistoryEmb]. User representation:[UserOut]"


def test_cf_dropout_leaves_some_slots_the_title_alone_while_training_and_none_at_inference(data, teacher,
                                                                                         tiny_backbone, titles):
    torch.manual_seed(11)
    text = torch.randn(len(titles), tiny_backbone.hidden_size)
    m = build_model(data, copy.deepcopy(teacher), tiny_backbone, paper(text_layer=2, cf_dropout=0.5), titles,
                    text_states=text)
    items = torch.arange(1, 41)
    with torch.no_grad():
        cf = m.adapters.f_I(m.sasrec.item_embeddings[items])  # [40, H]
        title = m.adapters.f_T(m.text_states[items])  # [40, H]
        m.eval()
        torch.testing.assert_close(m.inject(items), cf + title)
        m.train()
        got = m.inject(items)
    alone = torch.isclose(got, title, atol=1e-6).all(1)  # [40]
    both = torch.isclose(got, cf + title, atol=1e-6).all(1)
    assert bool((alone | both).all()) and 5 < int(alone.sum()) < 35  # p = 0.5 of 40 rows
    with pytest.raises(Exception, match="drops SASRec.s part of each injected vector"):
        paper(cf_dropout=0.3)  # text_layer: null leaves nothing once f_I(E_i) is dropped
    from dataclasses import replace

    with pytest.raises(ConfigError, match="distill.cf_dropout: 0.5 drops SASRec.s part"):  # built by hand, unchecked
        LLMSRec(replace(m.config, text_layer=None), m.sasrec, tiny_backbone, titles, data.item_ids,
                data.item_mapping_hash)
