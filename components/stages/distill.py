"""Stage `distill`: train LLM-SRec's adapters on a frozen SASRec and a frozen, pretrained LLM.

Reads params `distill` and `llm`. Training examples are (history -> next item) pairs from the users'
training sequences: one per user, its last item (`targets: last`, the paper), or one per position
(`targets: all`). Candidates are the positive and `num_negatives` random items the user never
interacted with, plus every other example's positive with `negatives: in_batch`. Adam; validation
NDCG@10 on a seeded subset of the valid split every `eval_every` of an epoch, early stopping with
patience, the best adapters kept, budgets in steps and minutes, resume after a kill (the shared loop in
components/models/training.py). Then the catalogue's f_item vectors are computed once (the item table) and
only the trained parameters are saved: adapters, config, item table. Never the LLM.

Several training processes (`distill.num_processes`: GPUs, or CPU processes on gloo): the stage starts
them itself under `accelerate launch` when it is not already one of them, so dvc.yaml's command is the same
for any number. Each process draws every whole batch and runs the LLM for its share of it; the gathered
loss and the summed gradients are one process's, up to the order of float sums (components/models/
parallel.py), and validation is shared the same way. Only the main process logs and writes: outputs,
reports, the resume state.

Warm start: `--warm-start-staged DIR` names where an orchestrator (the Airflow DAG, `orchestration.warm_start`)
puts the LLM-SRec checkpoint to continue from: the production package's, or the last one trained here. When DIR
holds one (`config.json`), the adapters start from its adapters (`warm_start`). They are item-independent:
f_I reads SASRec's item embeddings, which `pretrain_sasrec` has just warm-started by item_id, so a new item's
f_I input is its new SASRec embedding, and the item table (and the title states) are computed for this
catalogue, never copied. Adapters that do not fit (`ADAPTER_SETTINGS`, another backbone, other widths) are
refused or skipped per `distill.warm_start_mismatch`; the decision and its reason go to the summary and the
run record. Nothing else carries over: Adam starts fresh, and the best-so-far validation score is the
warm-started adapters' own at step 0 on this data (the champion's score was on other data), so the curve
starts there and training must beat it. DIR is a dep in dvc.yaml, so dvc.lock records what training started
from; it holds only a README when nothing is staged (components/orchestration/release.py).

Durations, throughput, the device and where a run resumed go to `--timings` (components/timings.py), not
into the summary metric or the curve: they differ between two runs on the same inputs.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs

from components.config import DistillParams, LLMParams, load_params
from components.data.examples import Examples
from components.data.histories import shuffle_window
from components.data.sequences import Prepared
from components.errors import CheckpointError, ConfigError, stage_main
from components.evaluation.metrics import candidate_ranks, ndcg_at
from components.io import fresh_dir, numbers_only, sha256_of, write_json
from components.llm.backbone import load_backbone, truncate_layers
from components.llm.model import ADAPTERS, LLMSRec, LLMSRecConfig, read_checkpoint, state_hash
from components.llm.text_states import cached_title_states
from components.models.parallel import Shard
from components.models.sasrec import SASRec
from components.models.training import ResumeState, TrainOptions, fit, run_key
from components.timings import split, split_curve, write_timings

#: what `train_adapters` and the stage report that two runs on the same inputs may disagree on: the run record's
RUN_FACTS = ("resumed_from_step", "train_seconds", "seconds_per_epoch", "seconds_per_step", "examples_per_second",
             "item_table_seconds", "item_table_items_per_second", "device", "processes")
#: the config entries two checkpoints' adapters must share to mean the same thing, beside the backbone's weights
#: (its fingerprint, layers included) and the adapters' shapes (SASRec's width d, the LLM's H, d'): what the
#: LLM is shown (prompt, readout, title states, the user slot, the LLM pass) and what f_user/f_item read
ADAPTER_SETTINGS = ("prompt", "readout", "text_layer", "user_slot", "center", "match_token_norm", "llm_pass",
                    "proj_hidden", "out_dim", "cf_hidden")


def build_model(prepared, sasrec, backbone, opts: DistillParams, titles: list[str], sasrec_path: str | None = None,
                text_states=None, full_depth: int | None = None):
    """LLM-SRec on `backbone` (already cut to llm.num_layers), configured by `LLMSRecConfig.from_params`;
    `text_states` [N+1, H] when `opts.text_layer` is set, read after that many layers (`all`: `full_depth`,
    the whole LLM's). Raises DataError when `sasrec` was trained on other items than `prepared`."""
    cfg = LLMSRecConfig.from_params(opts, backbone, full_depth)
    sasrec.check_data(prepared.num_items, prepared.item_mapping_hash, prepared.source,
                      "re-run pretrain_sasrec on this data (dvc repro) before distilling")
    return LLMSRec(cfg, sasrec, backbone, titles, prepared.item_ids, prepared.item_mapping_hash,
                   sasrec_path=sasrec_path, text_states=text_states)


def build_from_params(prepared, sasrec, full, opts: DistillParams, titles: list[str], num_layers: int | None,
                      sasrec_path: str | None = None, log=print):
    """LLM-SRec as params `distill` and `llm.num_layers` describe it, from the *whole* backbone `full`: the
    titles replaced by neutral text when `opts.neutral_titles`, each title's state after `opts.text_layer`
    layers of `full` (cached on disk, components/llm/text_states.py), and the prompt pass on its first
    `num_layers` (None = all)."""
    if opts.neutral_titles:
        titles = neutral_titles(prepared.item_ids)
    backbone = full if num_layers is None else truncate_layers(full, num_layers)
    text, layer = None, (full.num_layers if opts.text_layer == "all" else opts.text_layer)
    if layer is not None:
        t0 = time.time()
        text = cached_title_states(full, titles, layer, opts.max_title_chars, opts.item_batch_size, progress=True)
        log(f"distill: title states after {layer} layers for {len(titles) - 1:,} items in {time.time() - t0:.1f}s")
    return build_model(prepared, sasrec, backbone, opts, titles, sasrec_path, text, full_depth=full.num_layers)


def warm_start(model: LLMSRec, directory: Path, mismatch: str = "error") -> dict[str, Any]:
    """Load the adapters of the LLM-SRec checkpoint in `directory` into `model` (built for this data, its
    SASRec teacher and backbone); the checkpoint's item table and title states are not used (this model
    computes its own for its catalogue). Returns what was done: `from`, `trained_items`, `new_items` (items
    of this catalogue the checkpoint never saw: their f_I input is their SASRec embedding, as for every item),
    `teacher_changed`; or, when the checkpoint does not fit and `mismatch` is `fresh`, `skipped` with the
    reason, the model left untouched. Raises ConfigError naming the folder and the reason when it does not fit
    and `mismatch` is `error` (an unreadable checkpoint, another model, `ADAPTER_SETTINGS` or backbone weights
    that differ, adapters of other shapes)."""
    directory = Path(directory)

    def refuse(problem: str) -> dict[str, Any]:
        if mismatch == "fresh":
            return {"from": str(directory), "skipped": problem}
        raise ConfigError(f"warm start from {directory}", problem,
                          "set distill.warm_start_mismatch: fresh to train the adapters from scratch instead, or "
                          "orchestration.warm_start: none (or empty the folder but its README)")

    try:
        ck = read_checkpoint(directory)
    except CheckpointError as e:
        return refuse(f"not a readable LLM-SRec checkpoint: {e.problem}")
    if ck.meta.get("model", LLMSRec.name) != LLMSRec.name:
        return refuse(f"holds a '{ck.meta['model']}' checkpoint, not {LLMSRec.name}")
    ours = asdict(model.config)
    differs = {k: (getattr(ck.config, k), ours[k]) for k in ADAPTER_SETTINGS if getattr(ck.config, k) != ours[k]}
    if differs:
        return refuse("adapters trained with other settings (checkpoint vs params: "
                      + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in differs.items()) + ")")
    theirs = ck.meta["backbone"].get("fingerprint")
    if theirs != model.backbone.fingerprint:
        return refuse(f"adapters trained on another backbone ({ck.config.backbone}, {ck.config.num_layers or 'all'} "
                      f"layers, weights {str(theirs)[:16]}) than this one ({model.config.backbone}, "
                      f"{model.config.num_layers or 'all'} layers, weights {model.backbone.fingerprint[:16]})")
    mine = model.adapters.state_dict()
    shapes = {k: (list(ck.adapters[k].shape) if k in ck.adapters else None, list(v.shape) if v is not None else None)
              for k, v in {**mine, **{k: None for k in ck.adapters if k not in mine}}.items()}
    wrong = {k: s for k, s in shapes.items() if s[0] != s[1]}
    if wrong:
        return refuse("adapters of other shapes (SASRec's or the LLM's width differs; checkpoint vs model: "
                      + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in list(wrong.items())[:3]) + ")")
    model.adapters.load_state_dict(ck.adapters)
    known = set(ck.item_ids)
    return {"from": str(directory), "trained_items": len(ck.item_ids),
            "new_items": sum(i not in known for i in model.item_ids),
            "teacher_changed": ck.meta["sasrec"].get("weights_hash") != state_hash(model.sasrec)}


def neutral_titles(item_ids: list[str]) -> list[str]:
    """The text-matters control: every title replaced by `Product <item_id>` (index 0 stays padding)."""
    return [""] + [f"Product {i}" for i in item_ids]


@torch.no_grad()
def validate_ndcg(model, prepared, rows_subset: np.ndarray, batch_size: int, item_batch_size: int,
                  shuffle_seed: int | None = None, shard: Shard | None = None) -> float:
    """Mean NDCG@10 of the valid split's users `rows_subset` [U] on their fixed 1+99 candidates; with
    `shuffle_seed`, each history's window is permuted first (the shuffle diagnostic, for reading only).

    With a `shard` of several processes (a collective: every process calls it), each scores every
    world-th batch of `batch_size` users, the very batches one process would, and all return the same figure."""
    shard = shard or Shard()
    model.eval()
    model.cache_users = shuffle_seed is None  # the same users at every validation: their text's keys/values are kept
    model.build_item_table(item_batch_size, shard=shard)
    cand = prepared.candidates["valid"]
    generator = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
    starts = range(0, len(rows_subset), batch_size)
    mine = set(shard.share(len(starts)))
    ranks = torch.zeros(len(rows_subset), dtype=torch.long)  # [U]: each process fills its batches' rows
    for b, lo in enumerate(starts):
        sel = rows_subset[lo: lo + batch_size]
        hist = prepared.histories("valid", prepared.rows(cand.user_idx[sel]), model.max_history)
        if generator is not None:  # drawn for every batch, scored or not: the permutations one process would draw
            hist.items = shuffle_window(hist.items, model.shuffle_len, generator)
        if b in mine:
            scores = model.score_candidates(hist, torch.from_numpy(cand.items[sel]))  # [B, C], on the model's device
            ranks[lo: lo + len(sel)] = candidate_ranks(scores.cpu())
    model.cache_users = False
    model.train()
    return float(ndcg_at(shard.sum_(ranks).numpy(), 10).mean())


def train_adapters(model, prepared, opts: DistillParams, seed: int, accelerator=None, log=print,
                   state_root: Path | None = None, key: str = "", warm: bool = False) -> dict[str, Any]:
    """Train the adapters in place with the shared loop (components/models/training.py); restores the best adapters.

    Validation: NDCG@10 on a seeded subset of `valid_users` of the valid split (all when null). With
    `state_root`, the run resumes after its last validation when killed and restarted (same `key`).
    With a multi-process `accelerator`, every process calls this (a collective) and `log` runs on the
    main one only. `warm`: the adapters were warm-started, so they are validated before the first step and
    that score is the best so far (the starting point must be beaten to be replaced). Returns the curve and
    the figures `reports/distill_train.json` records.
    """
    if accelerator is None:
        accelerator = Accelerator(cpu=model.backbone.device.type == "cpu")
    shard = Shard.of(accelerator)
    torch.manual_seed(seed)
    model.adapters.to(model.backbone.device)  # the LLM's device: each process's own GPU under a launcher
    model.sasrec.to(model.backbone.device)
    if opts.gradient_checkpointing:
        # Checkpointing only runs in train() mode; dropout is already 0 in the frozen LLM.
        model.backbone.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.backbone.model.train()
    examples = Examples(prepared, window=max(model.sasrec.max_history or 128, opts.history_len), seed=seed,
                        targets=opts.targets, history_len=opts.history_len)
    if opts.logq_correction:
        targets = examples.set.targets[examples.rows, examples.pos]  # [E] every training example's positive
        model.set_target_counts(torch.from_numpy(np.bincount(targets, minlength=model.num_items + 1)))
    valid_n = len(prepared.candidates["valid"].user_idx)
    valid_rows = np.sort(np.random.default_rng(seed).choice(valid_n, min(valid_n, opts.valid_users or valid_n),
                                                            replace=False))
    train_opts = TrainOptions.from_params(opts, seed, section="distill", betas=model.adam_betas,
                                          validate_at_start=warm)
    n_batches = math.ceil(len(examples) / opts.batch_size)
    result = fit(
        model, train_opts, n_batches=n_batches, params=model.trainable_parameters(), accelerator=accelerator,
        batches=lambda rng: examples.batches(opts.batch_size, opts.num_negatives, opts.shuffle_train, rng),
        validate=lambda: validate_ndcg(model, prepared, valid_rows, opts.eval_batch_size, opts.item_batch_size,
                                       shard=shard),
        state_root=state_root, key=key,
        log=(lambda m: log(f"distill: {m}")) if accelerator.is_main_process else (lambda m: None))
    model.load_state_dict(result.best_state)
    model.item_table = None  # built by the last validation, not by the best adapters: scoring rebuilds it
    if opts.gradient_checkpointing:
        model.backbone.model.gradient_checkpointing_disable()
    model.backbone.model.eval()
    model.eval()
    p = result.progress
    seconds = max(p.train_seconds, 1e-9)
    return {"curve": p.curve, "steps": p.step, "steps_per_epoch": n_batches, "best_step": p.best_step,
            "best_valid_ndcg@10": round(p.best_ndcg, 5),
            "initial_valid_ndcg@10": None if p.initial_ndcg is None else round(p.initial_ndcg, 5), "early_stopped": p.stopped_by == "early_stopping",
            "stopped_by": p.stopped_by, "resumed_from_step": result.resumed_from_step,
            "train_seconds": round(p.train_seconds, 2), "epochs": round(p.step / n_batches, 3),
            "seconds_per_epoch": round(seconds * n_batches / max(p.step, 1), 2),
            "seconds_per_step": round(seconds / max(p.step, 1), 3),
            "examples_per_second": round(p.step * opts.batch_size / seconds, 3), "processes": shard.world,
            "training_examples": len(examples), "valid_users": len(valid_rows)}


def plot_curve(curve: list[dict[str, Any]], path: Path, initial: float | None = None) -> None:
    """The training loss and the validation curve, to a PNG; `initial`: a warm start's step-0 validation."""
    import matplotlib  # ~0.4 s to import (with pyplot), for the one figure a finished run draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [p["step"] for p in curve]
    for key in ("loss", "retrieval", "distill", "uniform"):
        if any(key in p for p in curve):
            a.plot(steps, [p.get(key, np.nan) for p in curve], label=key)
    a.set_xlabel("step"), a.set_title("training loss (mean of each validation round)"), a.legend()
    ev = ([{"step": 0, "valid_ndcg@10": initial}] if initial is not None else []) + [
        p for p in curve if p.get("valid_ndcg@10") is not None]
    b.plot([p["step"] for p in ev], [p["valid_ndcg@10"] for p in ev], marker="o")
    b.set_xlabel("step"), b.set_title("valid NDCG@10 (subset)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


@stage_main("distill")
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepared", type=Path, required=True)
    ap.add_argument("--sasrec", type=Path, required=True, help="the pretrain_sasrec checkpoint (the frozen teacher)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--curve", type=Path, required=True)
    ap.add_argument("--plot", type=Path, required=True)
    ap.add_argument("--summary", type=Path, required=True)
    ap.add_argument("--state-dir", type=Path, help="where a killed run's state is kept for resuming (outside the outs)")
    ap.add_argument("--warm-start-staged", type=Path,
                    help="an LLM-SRec checkpoint an orchestrator staged to continue from (used when it holds one)")
    ap.add_argument("--timings", type=Path, help="run record (durations, device, resume point): not a DVC output")
    args = ap.parse_args(argv)
    t_start = time.time()
    params = load_params(args.params)
    opts, llm = params.distill, params.llm
    seed = params.seed_of("distill")
    if opts.num_processes > 1 and not launched():
        raise SystemExit(launch(opts, llm, sys.argv[1:] if argv is None else argv))

    # A peer that stops answering (a hung process, a lost node) fails the run after this long at one
    # collective, instead of gloo's or NCCL's own default; a peer that dies is caught sooner, by the launcher.
    accelerator = Accelerator(cpu=not torch.cuda.is_available() or llm.device == "cpu", kwargs_handlers=[
        InitProcessGroupKwargs(timeout=timedelta(minutes=opts.process_timeout_minutes))])
    main_process = accelerator.is_main_process
    # Several processes on GPUs: each its own (`cuda:N` names the device of one process only).
    several_gpus = accelerator.num_processes > 1 and llm.device != "cpu"
    device = str(accelerator.device) if llm.device == "auto" or several_gpus else llm.device
    # The main process converts and caches what is missing (the LLM's files, the title states) while the
    # others wait, then they read its cache: one writer, no work done twice.
    with accelerator.main_process_first():
        # Loaded whole: title states may read deeper than the prompt pass, which then runs on the first layers.
        full = load_backbone(llm.backbone, device=device, dtype=llm.dtype, allow_download=llm.allow_download)
        prepared = Prepared.load(args.prepared)
        titles = [""] + pd.read_parquet(args.prepared / "items.parquet").sort_values("idx")["title"].astype(str).tolist()
        torch.manual_seed(seed)  # the adapters' initial weights, the same in every process
        model = build_from_params(prepared, SASRec.load(args.sasrec), full, opts, titles, llm.num_layers,
                                  str(args.sasrec), log=print if main_process else lambda m: None)
    warm: dict[str, Any] = {}
    if args.warm_start_staged is not None and (args.warm_start_staged / "config.json").is_file():
        # Every process loads the same adapters: they all start from the same weights, as from the same seed.
        warm = warm_start(model, args.warm_start_staged, opts.warm_start_mismatch) | {"staged": True}
        if main_process:
            print(f"distill: warm start (staged by the orchestrator): {warm}")
    started = bool(warm) and "skipped" not in warm
    backbone = model.backbone
    n_train = sum(p.numel() for p in model.trainable_parameters())
    if main_process:
        print(f"distill: backbone {backbone.name} ({backbone.dtype}, {backbone.device}), "
              f"{n_train:,} trainable parameters, LLM frozen, {accelerator.num_processes} process(es)")

    # What shapes the adapters step by step: params `distill` but its RUN_ONLY knobs (budgets, cadence, speed,
    # processes), so a run can be extended, or resumed by another number of processes; the LLM enters through
    # its fingerprint (layers included).
    key = run_key(opts.weight_knobs(), seed, prepared.fingerprint(), state_hash(model.sasrec), backbone.fingerprint,
                  str(backbone.dtype),
                  sha256_of(args.warm_start_staged / ADAPTERS)[:16] if started else None)
    result = train_adapters(model, prepared, opts, seed, accelerator, state_root=args.state_dir, key=key, warm=started)
    t0 = time.time()
    model.build_item_table(opts.item_batch_size, progress=main_process, shard=Shard.of(accelerator))
    if main_process:
        result["item_table_seconds"] = round(time.time() - t0, 2)
        result["item_table_items_per_second"] = round(model.num_items / max(time.time() - t0, 1e-9), 2)
        model.save(fresh_dir(args.out))
        curve, rounds = split_curve(result.pop("curve"))
        write_json(args.curve, curve)
        plot_curve(curve, args.plot, result.get("initial_valid_ndcg@10"))
        result.update(trainable_parameters=n_train, backbone=backbone.name, dtype=str(backbone.dtype).replace("torch.", ""),
                      device=str(backbone.device), warm_start=warm or None)
        kept, facts = split(result, RUN_FACTS)
        write_json(args.out / "training.json", kept)  # with the backbone's name and dtype, which are no metric
        write_json(args.summary, numbers_only(kept))
        write_timings(args.timings, "distill", time.time() - t_start, **facts, warm_start=warm or None, rounds=rounds)
        if args.state_dir is not None:
            ResumeState(args.state_dir, key).clear()  # finished: nothing left to resume
        print(f"distill: {result['steps']} steps ({result['seconds_per_step']:.1f}s/step), best valid NDCG@10 "
              f"{result['best_valid_ndcg@10']:.4f} at step {result['best_step']}; item table "
              f"{model.num_items} items in {result['item_table_seconds']:.1f}s -> {args.out}")
    accelerator.end_training()


def launched() -> bool:
    """Whether this process is one a launcher started (torchrun, `accelerate launch`, an MPI launcher on
    several machines): it then trains with the launcher's processes, whatever `distill.num_processes` says."""
    return any(name in os.environ for name in ("LOCAL_RANK", "WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"))


def launch(opts: DistillParams, llm: LLMParams, argv: list[str]) -> int:
    """Run this stage with `argv` in `opts.num_processes` processes on this machine, under accelerate's launcher
    (torchrun's agent, in this process), and wait for them. Returns the exit status: 0, or 1 after printing
    which process failed and how. The agent stops the others as soon as one fails (a crash, kill -9), and
    stops them all when this process is terminated (SIGTERM, as Airflow does). Raises ConfigError when the
    processes would run on GPUs and there are fewer GPUs than processes."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    n = opts.num_processes
    gpus = torch.cuda.device_count() if llm.device != "cpu" and torch.cuda.is_available() else 0
    if 0 < gpus < n:  # NCCL takes one GPU per process: process `gpus` would find no device
        raise ConfigError("distill.num_processes", f"{n} processes on GPUs, this machine has {gpus}",
                          f"set distill.num_processes to at most {gpus}, or llm.device: cpu to train on CPU processes")
    # `--multi_gpu` is accelerate's name for torchrun's N local processes; each rank then picks gloo on CPU
    # or NCCL on its GPU itself. (`--cpu` alone would start one process: CPU ranks need mpirun there.)
    args = launch_command_parser().parse_args([
        "--multi_gpu", "--num_processes", str(n), "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", "0", "--max_restarts", "0",
        "--num_cpu_threads_per_process", str(max(1, (os.cpu_count() or 1) // n)),
        *(["-m", __spec__.name] if __spec__ is not None else [__file__]), *argv])  # this module, as it was started
    print(f"distill: starting {n} training processes (accelerate launch)", flush=True)
    try:
        launch_command(args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        how = (f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit {failure.exitcode}")
        # Not a user error (no "ERROR [distill]" line of its own): a killed or crashed process is worth a retry,
        # and one that rejected its input has printed that line itself.
        print(f"distill: training process {rank} of {n} (pid {failure.pid}) ended with {how}; the launcher "
              f"stopped the others. A rerun resumes from the last completed round kept by --state-dir.",
              file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    main()
