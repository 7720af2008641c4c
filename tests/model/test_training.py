"""Training behaviour: SASRec learns order, resumes after kill -9, warm-starts, stops on NaN."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from components.config import SASRecParams, parse_params
from components.data.examples import TrainingSet
from components.data.sequences import Prepared
from components.errors import ConfigError
from components.llm.checkpoints import load_checkpoint
from components.models import SASRec, SASRecConfig
from components.models.training import TrainOptions, fit
from components.stages import evaluate as evaluate_stage
from components.stages import pretrain_sasrec
from components.stages.evaluate import BUILDERS, evaluate
from components.stages.pretrain_sasrec import train, validation_ndcg, warm_start
from tests.model.conftest import (
    TINY_SASREC,
    kill_stage_when,
    make_prepared,
    run_stage,
    stage_outs,
    write_params,
)


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def trained(prepared_dir):
    model, result, summary = train(parse_params({"seed": 3, "sasrec": TINY_SASREC}), prepared_dir, None, log=quiet)
    return model, result, summary


def test_sasrec_beats_popularity_and_needs_the_order(trained, prepared):
    model, result, _ = trained
    metrics, per_user = evaluate(prepared, {"popularity": BUILDERS["popularity"](prepared), "sasrec": model},
                                 ["sasrec"], seed=5, log=quiet)
    pop, sas, shuf = metrics["popularity"], metrics["sasrec"], metrics["sasrec_shuffled"]
    assert sas["ndcg@10"] > 2 * pop["ndcg@10"] and sas["ndcg@10"] - pop["ndcg@10"] > 0.2, metrics
    assert sas["full_catalogue"]["ndcg@10"] > 2 * pop["full_catalogue"]["ndcg@10"]
    assert shuf["shuffle_drop"]["ndcg@10"] > 0.1, shuf  # the synthetic data is order-dependent
    assert shuf["ndcg@10"] == pytest.approx(sas["ndcg@10"] * (1 - shuf["shuffle_drop"]["ndcg@10"]), abs=1e-5)
    losses = [r["loss"] for r in result.progress.curve]
    assert losses[-1] < 0.9 * losses[0]
    assert set(per_user["model"]) == {"popularity", "sasrec", "sasrec_shuffled"}
    assert len(per_user) == 3 * sas["n_users"]
    assert per_user.loc[per_user["model"] == "sasrec", "ndcg@10"].mean() == pytest.approx(sas["ndcg@10"], abs=1e-6)


def test_best_checkpoint_is_kept(trained, prepared):
    model, result, summary = trained
    curve = result.progress.curve
    best = max(curve, key=lambda r: r["valid_ndcg@10"])
    assert summary["best_epoch"] == best["epoch"]
    assert validation_ndcg(model, prepared, 512) == pytest.approx(best["valid_ndcg@10"], abs=1e-6)
    # evaluate's valid split (what variants are compared on) scores the same users on the same candidates
    metrics, _ = evaluate(prepared, {"sasrec": model}, [], seed=5, full_catalogue=False, log=quiet)
    assert metrics["sasrec"]["valid"]["ndcg@10"] == pytest.approx(best["valid_ndcg@10"], abs=1e-6)
    assert metrics["sasrec"]["valid"]["n_users"] == len(prepared.candidates["valid"].user_idx)
    assert "valid" not in evaluate(prepared, {"sasrec": model}, [], seed=5, valid_split=False, log=quiet)[0]["sasrec"]


def _state_epoch(state_root) -> int:
    files = list(state_root.glob("*/state.json"))
    if not files:
        return 0
    try:
        return json.loads(files[0].read_text())["progress"]["epoch"]
    except (json.JSONDecodeError, OSError):  # caught mid-replace: read again next time
        return 0


def test_kill_9_then_restart_continues_at_the_next_epoch(tmp_path, prepared_dir):
    """Through dvc.yaml's own command; the restart also loses the declared outs, as under `dvc repro`."""
    cfg = {"hidden": 16, "max_len": 16, "epochs": 40, "patience": 100, "loss": "bce"}
    workspaces = []
    for name in ("killed", "reference"):
        ws = tmp_path / name
        shutil.copytree(prepared_dir, ws / "data" / "prepared")
        write_params(ws / "params.yaml", **cfg)
        workspaces.append(ws)
    ws, ref = workspaces
    state_root = ws / "models" / ".resume" / "pretrain_sasrec"

    kill_stage_when("pretrain_sasrec", ws, lambda: _state_epoch(state_root) >= 3, timeout=120)
    k = _state_epoch(state_root)
    assert 3 <= k < 40, f"the run was not interrupted mid-way (epoch {k})"
    assert not (ws / "models" / "sasrec" / "config.json").exists()

    for out in stage_outs("pretrain_sasrec"):  # what DVC does before re-running the stage
        shutil.rmtree(ws / out, ignore_errors=True)
    second = run_stage("pretrain_sasrec", ws)
    assert second.returncode == 0, second.stderr
    assert f"resuming after epoch {k} " in second.stdout
    assert f"epoch {k}: " not in second.stdout and f"epoch {k + 1}: " in second.stdout  # k+1 is the first run
    curve = json.loads((ws / "reports" / "sasrec_curve.json").read_text())
    assert [r["epoch"] for r in curve] == list(range(1, 41))  # the curve before the kill is kept
    summary = json.loads((ws / "reports" / "sasrec_train.json").read_text())
    assert summary["epochs"] == 40
    # Where the run resumed is the run's history, not the data's: it is in the run record, not the outputs.
    record = json.loads((ws / "reports" / "timings" / "pretrain_sasrec.json").read_text())
    assert record["resumed_after_epoch"] == k and "resumed_after_epoch" not in summary
    assert not list(state_root.glob("*/state.json"))  # finished: the resume state is gone

    # The resumed run ends exactly where an uninterrupted run ends.
    full = run_stage("pretrain_sasrec", ref)
    assert full.returncode == 0, full.stderr
    a = load_file(str(ws / "models" / "sasrec" / "model.safetensors"))
    b = load_file(str(ref / "models" / "sasrec" / "model.safetensors"))
    assert all(torch.equal(a[key], b[key]) for key in b)
    ref_curve = json.loads((ref / "reports" / "sasrec_curve.json").read_text())
    assert [r["loss"] for r in curve] == [r["loss"] for r in ref_curve]

    # And evaluate, through dvc.yaml's command, writes the metrics contract.
    ev = run_stage("evaluate", ws)
    assert ev.returncode == 0, ev.stderr
    metrics = json.loads((ws / "reports" / "metrics.json").read_text())
    assert set(metrics) == {"popularity", "sasrec", "sasrec_shuffled"}
    for m in metrics.values():
        assert {"ndcg@10", "hr@10", "ndcg@20", "hr@20", "n_users"} <= set(m)
        assert 0 <= m["ndcg@10"] <= m["hr@10"] <= 1 and m["n_users"] == 400
    assert (ws / "reports" / "per_user.parquet").is_file()


def test_nan_loss_stops_naming_epoch_and_step(tmp_path, prepared_dir, capsys):
    params = write_params(tmp_path / "params.yaml", lr=1e30)
    argv = ["--params", str(params), "--prepared", str(prepared_dir), "--out", str(tmp_path / "m"),
            "--curve", str(tmp_path / "c.json"), "--summary", str(tmp_path / "s.json")]
    with pytest.raises(SystemExit) as exit_info:
        pretrain_sasrec.main(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "ERROR [pretrain_sasrec] sasrec.lr: the training loss became nan at epoch 1, step 2 of 7" in err
    assert "lower sasrec.lr" in err
    assert not (tmp_path / "m").exists()


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """The same world (same seed: same topic order) with 40 more items and new interactions."""
    return make_prepared(tmp_path_factory.mktemp("grown"), num_items=240, num_users=400, seed=7)


def test_warm_start_keeps_known_items_and_starts_new_ones_fresh(trained, tmp_path, grown):
    old, _, _ = trained
    old.save(tmp_path / "old")
    data = Prepared.load(grown)
    torch.manual_seed(0)
    fresh = SASRec(SASRecConfig.from_params(SASRecParams(**TINY_SASREC)), data.item_ids, data.item_mapping_hash)
    warm = copy.deepcopy(fresh)
    report = warm_start(warm, tmp_path / "old")

    old_pos = {item: i + 1 for i, item in enumerate(old.item_ids)}
    known = [(i + 1, old_pos[item]) for i, item in enumerate(data.item_ids) if item in old_pos]
    new = [i + 1 for i, item in enumerate(data.item_ids) if item not in old_pos]
    assert report["matched_items"] == len(known) > 150 and report["new_items"] == len(new) > 0
    new_idx, old_idx = map(list, zip(*known, strict=True))
    assert torch.equal(warm.item_emb.weight[new_idx], old.item_emb.weight[old_idx])
    assert torch.equal(warm.item_emb.weight[new], fresh.item_emb.weight[new])
    assert torch.equal(warm.blocks[0].attn.q.weight, old.blocks[0].attn.q.weight)
    assert not torch.equal(warm.item_emb.weight[new_idx], fresh.item_emb.weight[new_idx])


def test_warm_start_through_training_starts_ahead(trained, tmp_path, grown):
    old, _, _ = trained
    old.save(tmp_path / "old")
    base = {**TINY_SASREC, "epochs": 1}
    _, _, cold = train(parse_params({"seed": 3, "sasrec": base}), grown, None, log=quiet)
    _, _, warm = train(parse_params({"seed": 3, "sasrec": {**base, "warm_start_from": str(tmp_path / "old")}}), grown, None,
                       log=quiet)
    assert warm["warm_start"]["matched_items"] > 150
    assert warm["initial_valid_ndcg@10"] > cold["initial_valid_ndcg@10"] + 0.2, (warm, cold)


def test_incompatible_warm_start_errors_or_retrains_when_configured(trained, tmp_path, prepared_dir):
    old, _, _ = trained
    old.save(tmp_path / "old")
    cfg = {**TINY_SASREC, "hidden": 24, "epochs": 1, "warm_start_from": str(tmp_path / "old")}
    with pytest.raises(ConfigError, match=r"hidden 32 vs 24.*warm_start_mismatch: fresh"):
        train(parse_params({"seed": 3, "sasrec": cfg}), prepared_dir, None, log=quiet)
    _, _, summary = train(parse_params({"seed": 3, "sasrec": {**cfg, "warm_start_mismatch": "fresh"}}), prepared_dir, None,
                          log=quiet)
    assert "hidden 32 vs 24" in summary["warm_start"]["skipped"] and summary["epochs"] == 1


def test_evaluate_refuses_a_checkpoint_from_other_data(trained, tmp_path, grown, capsys):
    old, _, _ = trained
    old.save(tmp_path / "old")
    params = write_params(tmp_path / "params.yaml")
    with pytest.raises(SystemExit) as exit_info:
        evaluate_stage.main(["--params", str(params), "--prepared", str(grown), "--checkpoint",
                             f"sasrec={tmp_path / 'old'}", "--metrics", str(tmp_path / "m.json"),
                             "--per-user", str(tmp_path / "u.parquet")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "ERROR [evaluate]" in err and "trained on 200 items" in err and "240 items" in err
    assert "retrain it on this data" in err
    assert not (tmp_path / "m.json").exists()


def test_checkpoint_from_the_stage_reloads_with_identical_scores(trained, tmp_path, prepared):
    model, _, _ = trained
    model.save(tmp_path / "ck")
    back = load_checkpoint(tmp_path / "ck")
    rows = np.arange(50)
    h = prepared.histories("test", rows)
    model.eval()
    assert torch.equal(back.score_all(h), model.score_all(h))


def test_resume_key_allows_extending_a_run_but_not_changing_what_shapes_the_weights(tmp_path, prepared_dir):
    state = tmp_path / "state"
    base = {**TINY_SASREC, "hidden": 16, "epochs": 2}
    _, first, _ = train(parse_params({"seed": 3, "sasrec": base}), prepared_dir, state, log=quiet)  # fit() leaves its state
    assert first.resumed_from == 0
    lines: list[str] = []
    _, longer, summary = train(parse_params({"seed": 3, "sasrec": {**base, "epochs": 4, "patience": 9}}), prepared_dir, state,
                               log=lines.append)
    assert longer.resumed_from == 2 and any(line.startswith("resuming after epoch 2 ") for line in lines)
    assert [r["epoch"] for r in longer.progress.curve] == [1, 2, 3, 4]
    assert longer.progress.curve[:2] == first.progress.curve
    _, other_lr, _ = train(parse_params({"seed": 3, "sasrec": {**base, "lr": 0.004}}), prepared_dir, state, log=quiet)
    assert other_lr.resumed_from == 0
    _, other_seed, _ = train(parse_params({"seed": 4, "sasrec": base}), prepared_dir, state, log=quiet)
    assert other_seed.resumed_from == 0


def test_one_loop_validates_within_an_epoch_and_resumes_mid_epoch_exactly(tmp_path, prepared):
    """The shared loop (SASRec and LLM-SRec): eval_every < 1 validates inside an epoch, and a run stopped
    after such a validation continues from that step to the same weights as a run never stopped."""
    train_set = TrainingSet(prepared, 16)
    n_batches = -(-len(train_set) // 64)

    def run(max_steps: int, state_root):
        torch.manual_seed(0)
        model = SASRec(SASRecConfig(hidden=16, max_len=16, loss="bce"), prepared.item_ids, prepared.item_mapping_hash)
        opts = TrainOptions(epochs=3, eval_every=0.5, patience=100, lr=0.005, batch_size=64, seed=5, eval_batch_size=512,
                            max_minutes=None, betas=SASRec.adam_betas, validate_at_start=True, max_steps=max_steps,
                            section="sasrec")
        result = fit(model, opts, batches=lambda rng: train_set.batches(64, model.num_negatives, rng),
                     n_batches=n_batches, validate=lambda: validation_ndcg(model, prepared, 512),
                     state_root=state_root, key="k", log=quiet, progress_bar=False)
        return model, result

    eval_steps = max(1, round(0.5 * n_batches))
    stop_at = n_batches + eval_steps - 1  # inside the second epoch, one step before its first validation
    _, first = run(stop_at, tmp_path / "state")
    assert first.progress.stopped_by == "max_steps" and first.progress.step == stop_at
    assert first.progress.step_in_epoch == eval_steps - 1 and first.progress.epoch == 1
    rounds_in_epoch_1 = -(-n_batches // eval_steps)
    assert len(first.progress.curve) == rounds_in_epoch_1 + 1  # epoch 1's validations, and where the budget ran out
    assert all(r["valid_ndcg@10"] is not None for r in first.progress.curve)

    resumed_model, resumed = run(3 * n_batches, tmp_path / "state")  # the same run, given more steps
    assert resumed.resumed_from_step == stop_at and resumed.progress.step == 3 * n_batches
    whole_model, whole = run(3 * n_batches, tmp_path / "fresh")
    assert whole.resumed_from_step == 0
    for k, v in whole_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[k], v), k


def test_a_run_stopped_by_its_minutes_logs_plain_lines_ending_at_100_percent(prepared, capsys):
    """Issue 27: off a terminal (here pytest's captured stderr) no bar redraws with carriage returns, and the
    progress ends with a 100% line naming the budget that stopped the run, steps to spare notwithstanding."""
    train_set = TrainingSet(prepared, 16)
    n_batches = -(-len(train_set) // 64)
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(hidden=16, max_len=16, loss="bce"), prepared.item_ids, prepared.item_mapping_hash)
    opts = TrainOptions(epochs=50, eval_every=1, patience=100, lr=0.005, batch_size=64, seed=5, eval_batch_size=512,
                        max_minutes=0.001, betas=SASRec.adam_betas, validate_at_start=False, section="sasrec")
    lines: list[str] = []
    result = fit(model, opts, batches=lambda rng: train_set.batches(64, model.num_negatives, rng), n_batches=n_batches,
                 validate=lambda: validation_ndcg(model, prepared, 512), state_root=None, key="k", log=lines.append)
    assert result.progress.stopped_by == "max_minutes" and result.progress.step < n_batches * opts.epochs
    assert "\r" not in capsys.readouterr().err and not any("\r" in line for line in lines)
    assert lines[-1].startswith(f"training: 100% (step {result.progress.step}/{n_batches * opts.epochs}, "), lines
    assert lines[-1].endswith(": reached sasrec.max_minutes=0.001"), lines
