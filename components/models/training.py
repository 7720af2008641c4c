"""The one training loop, shared by SASRec (`pretrain_sasrec`) and LLM-SRec (`distill`).

`fit` calls only the `Recommender` interface (`loss` / `loss_terms`), a batch source and a validation
function (each stage's own; the batches come from components/data/examples.py), so any model trains with it: validation every `eval_every` epochs (a fraction validates
within an epoch), early stopping with patience on validation NDCG@10, the best weights kept, budgets in
epochs, steps (`max_steps`) and wall-clock minutes (`max_minutes`), an optional learning-rate decay per
validation, the curve (one row per validation round), and resume.

Reproducible and resumable without pickles: each epoch draws its batches from a generator seeded by
(seed, epoch) and each step its dropout masks from (seed, step), so a run restarted after step j of
epoch k replays the rest of epoch k exactly as an uninterrupted run would (the batches before j are
drawn again and skipped). The resume state (last
weights, Adam moments, best weights, the curve) is safetensors + JSON in a directory keyed by a hash
of model config + training options + data, written after every round (an epoch, or a validation
within one); state for another config or other data is never picked up.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from components.config import DistillParams, SASRecParams
from components.data.histories import Batch
from components.errors import ConfigError
from components.io import write_json
from components.models.base import Recommender
from components.models.parallel import Shard
from components.progress import BudgetProgress


@dataclass(frozen=True)
class TrainOptions:
    """The loop's options: a model's params section (`sasrec`, `distill`) as `fit` reads it. Built by
    `from_params`; the values live in params.yaml alone."""

    epochs: int
    eval_every: float  # epochs between validations; below 1 validates within an epoch
    patience: int
    lr: float
    batch_size: int
    seed: int
    eval_batch_size: int
    max_minutes: float | None  # wall-clock budget, resumed runs included
    betas: tuple[float, float]  # Adam's: the model's reference implementation's
    validate_at_start: bool  # score the starting weights first (a warm start must be beaten to be replaced)
    section: str  # params section named in error messages
    max_steps: int | None = None  # optimizer-step budget (None: epochs only); `sasrec` has none
    lr_decay: float = 1.0  # x this after every validation; `sasrec` has none (the LLM-SRec reference: 0.95)

    @classmethod
    def from_params(cls, knobs: SASRecParams | DistillParams, seed: int, *, section: str,
                    betas: tuple[float, float], validate_at_start: bool) -> TrainOptions:
        """The options params section `section` (`sasrec` | `distill`, given as `knobs`) sets, trained with
        `seed` (`Params.seed_of(section)`); `betas` and `validate_at_start` are the model's, not knobs."""
        taken = {f.name: getattr(knobs, f.name) for f in fields(cls) if f.name in type(knobs).model_fields}
        return cls(**{**taken, "seed": seed, "betas": betas, "validate_at_start": validate_at_start,
                      "section": section})


@dataclass
class Progress:
    epoch: int = 0  # last completed epoch
    step_in_epoch: int = 0  # optimizer steps done in the epoch after it (a validation within an epoch)
    step: int = 0  # optimizer steps in all
    curve: list[dict[str, Any]] = field(default_factory=list)
    initial_ndcg: float | None = None
    best_epoch: float = 0  # 0 = the starting weights (e.g. a warm start) were never beaten
    best_step: int = 0
    best_ndcg: float = -1.0
    bad_evals: int = 0
    stopped: str = ""
    stopped_by: str = ""  # early_stopping | epochs | max_steps | max_minutes
    train_seconds: float = 0.0


@dataclass
class FitResult:
    progress: Progress
    best_state: dict[str, torch.Tensor]
    resumed_from: int  # last completed epoch found in the resume state (0 = fresh start)
    resumed_from_step: int = 0  # optimizer steps found in the resume state

    @property
    def seconds_per_epoch(self) -> float:
        done = self.progress.step / max(self.progress.curve[-1]["steps_per_epoch"], 1) if self.progress.curve else 0
        return self.progress.train_seconds / done if done else 0.0


def run_key(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ResumeState:
    """Last completed round (epoch, or validation within one) of one run, in `root/<key>/`. Files are
    step-suffixed and `state.json` is replaced atomically last, so a kill at any moment leaves the
    previous round loadable."""

    def __init__(self, root: Path, key: str):
        self.dir = Path(root) / key

    def load(self, model: Recommender, optimizer: torch.optim.Optimizer) -> tuple[Progress, dict] | None:
        path = self.dir / "state.json"
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        model.load_state_dict(load_file(str(self.dir / state["weights"])))
        optimizer.load_state_dict(_optimizer_from(load_file(str(self.dir / state["optimizer"])), state["optim_meta"]))
        best = load_file(str(self.dir / state["best"]))
        return Progress(**state["progress"]), best

    def save(self, progress: Progress, model: Recommender, optimizer: torch.optim.Optimizer,
             best_state: dict[str, torch.Tensor], best_changed: bool, previous_best: str | None) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        e = progress.step
        names = {"weights": f"last-{e:07d}.safetensors", "optimizer": f"optim-{e:07d}.safetensors",
                 "best": f"best-{e:07d}.safetensors" if best_changed or previous_best is None else previous_best}
        save_file(_contiguous(model.state_dict()), str(self.dir / names["weights"]))
        tensors, meta = _optimizer_to(optimizer)
        save_file(tensors, str(self.dir / names["optimizer"]))
        if names["best"] != previous_best:
            save_file(best_state, str(self.dir / names["best"]))
        write_json(self.dir / "state.json", {**names, "optim_meta": meta, "progress": asdict(progress)})
        for f in self.dir.glob("*.safetensors"):  # files of older epochs
            if f.name not in names.values():
                f.unlink()
        return names["best"]

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def _optimizer_to(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state as named tensors + JSON (no pickle): per-parameter tensors, and the param groups."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, v in [*tensors.items(), *meta["scalars"].items()]:
        pid, k = name.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def _number(x: float) -> float | int:
    return int(x) if float(x).is_integer() else round(float(x), 3)


def fit(model: Recommender, opts: TrainOptions, *, batches: Callable[[np.random.Generator], Iterator[Batch]],
        n_batches: int, validate: Callable[[], float], state_root: Path | None, key: str,
        log: Callable[[str], None] = print, params: list[torch.nn.Parameter] | None = None,
        accelerator: Any = None, progress_bar: bool = True) -> FitResult:
    """Train `model` in place; returns the curve, the progress and the best weights by validation NDCG@10.

    batches(rng) yields one epoch's batches (`n_batches` of them) from the epoch's generator; validate()
    scores the model as it is now (valid NDCG@10). `params` (default: every parameter that requires a
    gradient) are the ones Adam updates. With a multi-process `accelerator` (components/models/parallel.py),
    every process draws the whole batches, the model's `loss_terms(batch, shard=)` splits the work, the
    gradients are summed across processes, every process calls validate() (a collective: each scores a
    share) and takes the main process's figure; only the main process logs and writes the resume state.
    Raises ConfigError naming `{section}.lr` when the loss is not finite.
    """
    main = accelerator is None or accelerator.is_main_process
    world = 1 if accelerator is None else accelerator.num_processes
    shard = Shard.of(accelerator) if world > 1 else None
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=opts.lr, betas=opts.betas)
    if accelerator is not None:
        optimizer = accelerator.prepare(optimizer)
    weights = getattr(getattr(model, "config", None), "weights", None) or {}
    state = ResumeState(state_root, key) if state_root is not None else None
    loaded = state.load(model, optimizer) if state is not None else None  # every process resumes from it
    if loaded is not None:
        progress, best_state = loaded
        spent = {"max_steps": opts.max_steps is not None and progress.step >= opts.max_steps,
                 "max_minutes": opts.max_minutes is not None and progress.train_seconds >= opts.max_minutes * 60}
        if progress.stopped_by in spent and not spent[progress.stopped_by]:  # given a larger budget: go on
            progress.stopped = progress.stopped_by = ""
        where = f" step {progress.step_in_epoch} of {n_batches}" if progress.step_in_epoch else ""
        log(f"resuming after epoch {progress.epoch}{where} (state {state.dir})")
    else:
        progress, best_state = Progress(), _contiguous(model.state_dict())
        if opts.validate_at_start:
            progress.initial_ndcg = progress.best_ndcg = round(validate(), 6)
    resumed_from, resumed_step, best_file = progress.epoch, progress.step, None
    eval_steps = n_batches * int(opts.eval_every) if opts.eval_every >= 1 else max(1, round(opts.eval_every * n_batches))
    total = n_batches * opts.epochs if opts.max_steps is None else min(opts.max_steps, n_batches * opts.epochs)
    # Sized to the budget that ends first (steps or minutes), closed at 100% with the reason whenever the run
    # stops; plain lines through `log` when stderr is not a terminal (components/progress.py).
    meter = BudgetProgress(opts.section, steps=total, step=progress.step, elapsed=progress.train_seconds,
                           seconds=opts.max_minutes * 60 if opts.max_minutes is not None else None,
                           enabled=progress_bar and main, log=log, label="training")
    log = meter.logger(log)

    def agree(flag: bool) -> bool:  # every process must stop together, or a collective call would hang
        if world == 1:
            return flag
        return bool(accelerator.gather_for_metrics(torch.tensor([flag], device=accelerator.device)).any())

    while progress.epoch < opts.epochs and not progress.stopped:
        epoch = progress.epoch + 1
        rng = np.random.default_rng([opts.seed, epoch])
        model.train()
        it = iter(batches(rng))
        for _ in range(progress.step_in_epoch):  # resumed mid-epoch: draw the done batches again, unused
            next(it)
        t0, sums, count, out_of_time = time.time(), {}, 0, False
        exhausted = False
        for batch in it:
            j = progress.step_in_epoch + 1
            torch.manual_seed(opts.seed * 1_000_003 + progress.step)  # this step's dropout masks, whatever came before
            if shard is not None:
                terms = model.loss_terms(batch, shard=shard)
            else:
                terms = model.loss_terms(batch) if hasattr(model, "loss_terms") else {"loss": model.loss(batch)}
            loss = sum(weights.get(k, 1.0) * v for k, v in terms.items())
            if not torch.isfinite(loss):
                raise ConfigError(f"{opts.section}.lr", f"the training loss became {loss.item()} at epoch {epoch}, "
                                  f"step {j} of {n_batches} (global step {progress.step + 1}; "
                                  f"{ {k: round(v.item(), 5) for k, v in terms.items()} })",
                                  f"lower {opts.section}.lr (now {opts.lr}); training stopped, the last completed "
                                  "round is kept for resuming")
            optimizer.zero_grad(set_to_none=True)
            if accelerator is not None:
                accelerator.backward(loss)
            else:
                loss.backward()
            if shard is not None:  # each process's gradient flows through its own share only: their sum is the whole
                shard.sum_grads(params)
            optimizer.step()
            progress.step, progress.step_in_epoch, count = progress.step + 1, j, count + 1
            sums["loss"] = sums.get("loss", 0.0) + loss.item()
            if len(terms) > 1:
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v.item()
            elapsed = progress.train_seconds + time.time() - t0
            meter.update(progress.step, elapsed, loss=f"{sums['loss'] / count:.4f}")
            out_of_time = agree(opts.max_minutes is not None and elapsed > opts.max_minutes * 60)
            end_of_epoch = j == n_batches
            if progress.step >= total or out_of_time or end_of_epoch or (opts.eval_every < 1 and j % eval_steps == 0):
                break
        else:
            exhausted = True  # a source with fewer batches than n_batches: the epoch is over all the same
        seconds = time.time() - t0
        progress.train_seconds += seconds
        end_of_epoch = progress.step_in_epoch >= n_batches or exhausted
        row: dict[str, Any] = {"epoch": _number(progress.epoch + progress.step_in_epoch / n_batches),
                               "step": progress.step, **{k: round(v / max(count, 1), 6) for k, v in sums.items()},
                               "valid_ndcg@10": None, "seconds": round(seconds, 3),
                               "minutes": round(progress.train_seconds / 60, 3), "lr": optimizer.param_groups[0]["lr"],
                               "steps_per_epoch": n_batches}
        t_val = time.time()
        last_round = end_of_epoch and epoch == opts.epochs  # the epochs ran out: not a budget
        budget_hit = not last_round and (out_of_time or (opts.max_steps is not None and progress.step >= opts.max_steps))
        due = (epoch % int(opts.eval_every) == 0) if opts.eval_every >= 1 else True
        improved = False
        if (due and (end_of_epoch or opts.eval_every < 1)) or budget_hit or last_round:
            ndcg = validate()
            if shard is not None:  # the main process's figure rules, so every process keeps the same best weights
                ndcg = float(shard.sum_(torch.tensor([ndcg if main else 0.0], dtype=torch.float64))[0])
            ndcg = round(ndcg, 6)
            row["valid_ndcg@10"] = ndcg
            improved = ndcg > progress.best_ndcg
            if improved:
                progress.best_epoch, progress.best_step, progress.best_ndcg = row["epoch"], progress.step, ndcg
                progress.bad_evals = 0
                best_state = _contiguous(model.state_dict())
            else:
                progress.bad_evals += 1
            if main:
                where = f"epoch {epoch}" if end_of_epoch else f"epoch {epoch} step {progress.step_in_epoch}/{n_batches}"
                log(f"{where}: loss {row['loss']:.4f}, valid NDCG@10 {ndcg:.4f}{' (best)' if improved else ''}, "
                    f"{seconds:.1f}s")
            for group in optimizer.param_groups:
                group["lr"] *= opts.lr_decay
            if progress.bad_evals >= opts.patience:  # the same figures on every process: the same decision
                progress.stopped = f"early stop: no better valid NDCG@10 in {opts.patience} validations"
                progress.stopped_by = "early_stopping"
        if end_of_epoch:
            progress.epoch, progress.step_in_epoch = epoch, 0
        progress.curve.append(row)
        if not progress.stopped and budget_hit:
            progress.stopped_by = "max_minutes" if out_of_time else "max_steps"
            progress.stopped = (f"reached {opts.section}.max_minutes={opts.max_minutes}" if out_of_time
                                else f"reached {opts.section}.max_steps={opts.max_steps}")
        progress.train_seconds += time.time() - t_val  # the budget is wall-clock: validation counts
        row["minutes"] = round(progress.train_seconds / 60, 3)
        if state is not None and main:
            best_file = state.save(progress, model, optimizer, best_state, improved, best_file)
    if not progress.stopped:
        progress.stopped, progress.stopped_by = f"reached {opts.section}.epochs={opts.epochs}", "epochs"
    meter.close(progress.stopped)
    return FitResult(progress, best_state, resumed_from, resumed_step)

