"""A model-agnostic training loop: vectorised batches, validation, early stopping, resumable state.

`fit` calls only the `Recommender` interface (`loss`, `score_candidates` through the evaluator,
`num_negatives`, `max_history`), so any model trains with it.

Reproducible and resumable without pickles: each epoch draws its randomness from generators
seeded by (seed, epoch), so a run restarted after epoch k replays epoch k+1 exactly as an
uninterrupted run would. The resume state (last weights, Adam moments, best weights, the curve)
is safetensors + JSON in a directory keyed by a hash of model config + training options + data,
written after every completed epoch; state for another config or other data is never picked up.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from components.errors import ConfigError
from components.evaluation.metrics import ndcg_at
from components.evaluation.runner import rank_split
from components.io import write_json
from components.models.base import Batch, Histories, Recommender
from components.sequences import Prepared, flat_ranges, right_aligned

MAX_RESAMPLE_ROUNDS = 30


@dataclass
class TrainOptions:
    epochs: int = 200
    eval_every: int = 1
    patience: int = 5
    lr: float = 1e-3
    batch_size: int = 128
    seed: int = 42
    betas: tuple[float, float] = (0.9, 0.98)  # the SASRec reference's Adam betas
    eval_batch_size: int = 512
    section: str = "cfsrec"  # params section named in error messages

    def check(self) -> None:
        for key in ("epochs", "eval_every", "patience", "batch_size"):
            if int(getattr(self, key)) < (0 if key == "epochs" else 1):
                raise ConfigError("params.yaml", f"{self.section}.{key}={getattr(self, key)!r} is out of range",
                                  f"set {self.section}.{key} to a positive integer")
        if not self.lr > 0:
            raise ConfigError("params.yaml", f"{self.section}.lr={self.lr!r} must be positive",
                              f"set {self.section}.lr to e.g. 0.001")


class TrainingSet:
    """Each user's training sequence as one right-aligned window: inputs [U, W] and next items [U, W].

    Negatives are drawn uniformly from 1..N and rejected, all at once, when the (user, item) pair
    occurs in the user's training sequence: a sorted array of pair keys makes that one searchsorted.
    """

    def __init__(self, data: Prepared, window: int | None):
        rows = np.arange(len(data.user_idx))
        starts, ends = data.bounds("train", rows)
        lens = ends - starts
        rows, starts, ends, lens = rows[lens >= 2], starts[lens >= 2], ends[lens >= 2], lens[lens >= 2]
        window = int(lens.max()) - 1 if window is None else window
        seq = right_aligned(data.flat_items, starts, ends, window + 1)  # [U, W+1]
        self.inputs = seq[:, :-1]  # [U, W]
        self.targets = np.where(self.inputs != 0, seq[:, 1:], 0)  # [U, W]: the first item is never a target
        self.timestamps = right_aligned(data.flat_ts, starts, ends, window + 1)[:, :-1]  # [U, W]
        self.users = data.user_idx[rows]  # [U]
        self.lengths = np.minimum(lens - 1, window)  # [U] real positions in the window
        self.num_items = data.num_items
        # Keys (set row, item) of every training interaction, for rejection of sampled negatives.
        set_row = np.repeat(np.arange(len(rows)), lens)
        self.seen = np.unique(set_row * (self.num_items + 1) + data.flat_items[flat_ranges(starts, ends)])

    def __len__(self) -> int:
        return len(self.users)

    def sample_negatives(self, set_rows: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """[len(set_rows), *shape] items each user never interacted with in training."""
        neg = rng.integers(1, self.num_items + 1, size=(len(set_rows), *shape))
        row_key = (set_rows * (self.num_items + 1)).reshape(-1, *([1] * len(shape)))
        for _ in range(MAX_RESAMPLE_ROUNDS):
            keys = row_key + neg
            pos = np.minimum(np.searchsorted(self.seen, keys), len(self.seen) - 1)
            hit = self.seen[pos] == keys
            if not hit.any():
                break
            neg[hit] = rng.integers(1, self.num_items + 1, size=int(hit.sum()))
        # A user who interacted with nearly the whole catalogue may keep a few hits: rare, and harmless.
        return neg

    def batches(self, batch_size: int, num_negatives: int, rng: np.random.Generator) -> Iterator[Batch]:
        order = rng.permutation(len(self))
        for lo in range(0, len(order), batch_size):
            rows = order[lo: lo + batch_size]
            width = int(self.lengths[rows].max())  # trim columns that are padding for the whole batch
            inputs = self.inputs[rows, -width:]  # [B, L]
            negatives = self.sample_negatives(rows, (width, num_negatives), rng)  # [B, L, K]
            yield Batch(Histories(torch.from_numpy(inputs), torch.from_numpy(self.timestamps[rows, -width:]),
                                  torch.from_numpy(self.users[rows])),
                        targets=torch.from_numpy(self.targets[rows, -width:]),
                        negatives=torch.from_numpy(negatives))


@dataclass
class Progress:
    epoch: int = 0  # last completed epoch
    curve: list[dict[str, Any]] = field(default_factory=list)
    initial_ndcg: float | None = None
    best_epoch: int = 0  # 0 = the starting weights (e.g. a warm start) were never beaten
    best_ndcg: float = -1.0
    bad_evals: int = 0
    stopped: str = ""
    train_seconds: float = 0.0


@dataclass
class FitResult:
    progress: Progress
    best_state: dict[str, torch.Tensor]
    resumed_from: int  # last completed epoch found in the resume state (0 = fresh start)

    @property
    def seconds_per_epoch(self) -> float:
        done = len(self.progress.curve)
        return self.progress.train_seconds / done if done else 0.0


def run_key(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ResumeState:
    """Last completed epoch of one run, in `root/<key>/`. Files are epoch-suffixed and `state.json`
    is replaced atomically last, so a kill at any moment leaves the previous epoch loadable."""

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
        e = progress.epoch
        names = {"weights": f"last-{e:05d}.safetensors", "optimizer": f"optim-{e:05d}.safetensors",
                 "best": f"best-{e:05d}.safetensors" if best_changed or previous_best is None else previous_best}
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


def validation_ndcg(model: Recommender, data: Prepared, batch_size: int) -> float:
    ranks = rank_split(model, data, "valid", batch_size=batch_size)["rank"].to_numpy()
    return float(ndcg_at(ranks, 10).mean())


def fit(model: Recommender, data: Prepared, opts: TrainOptions, *, state_root: Path | None, key: str,
        log: Callable[[str], None] = print) -> FitResult:
    """Train `model` in place; returns the curve and the best weights by validation NDCG@10."""
    opts.check()
    train = TrainingSet(data, model.max_history)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=opts.lr, betas=opts.betas)
    state = ResumeState(state_root, key) if state_root is not None else None
    loaded = state.load(model, optimizer) if state is not None else None
    if loaded is not None:
        progress, best_state = loaded
        log(f"resuming after epoch {progress.epoch} (state {state.dir})")
    else:
        progress, best_state = Progress(), _contiguous(model.state_dict())
        progress.initial_ndcg = progress.best_ndcg = round(validation_ndcg(model, data, opts.eval_batch_size), 6)
    resumed_from, best_file = progress.epoch, None
    n_batches = -(-len(train) // opts.batch_size)

    while progress.epoch < opts.epochs and not progress.stopped:
        epoch = progress.epoch + 1
        rng = np.random.default_rng([opts.seed, epoch])
        torch.manual_seed(opts.seed * 1_000_003 + epoch)  # dropout masks of this epoch
        model.train()
        t0, total, count = time.time(), 0.0, 0
        bar = tqdm(train.batches(opts.batch_size, model.num_negatives, rng), total=n_batches,
                   desc=f"epoch {epoch}/{opts.epochs}", leave=False, mininterval=1.0)
        for step, batch in enumerate(bar, start=1):
            loss = model.loss(batch)
            if not torch.isfinite(loss):
                raise ConfigError(f"{opts.section}.lr", f"the training loss became {loss.item()} at epoch {epoch}, "
                                  f"step {step} of {n_batches} (global step {(epoch - 1) * n_batches + step})",
                                  f"lower {opts.section}.lr (now {opts.lr}); training stopped, the last completed "
                                  "epoch is kept for resuming")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item(), count + 1
            bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
        bar.close()
        seconds = time.time() - t0
        row: dict[str, Any] = {"epoch": epoch, "loss": round(total / max(count, 1), 6), "valid_ndcg@10": None,
                               "seconds": round(seconds, 3)}
        progress.train_seconds += seconds
        improved = False
        if epoch % opts.eval_every == 0 or epoch == opts.epochs:
            ndcg = round(validation_ndcg(model, data, opts.eval_batch_size), 6)
            row["valid_ndcg@10"] = ndcg
            improved = ndcg > progress.best_ndcg
            if improved:
                progress.best_epoch, progress.best_ndcg, progress.bad_evals = epoch, ndcg, 0
                best_state = _contiguous(model.state_dict())
            else:
                progress.bad_evals += 1
                if progress.bad_evals >= opts.patience:
                    progress.stopped = f"early stop: no better valid NDCG@10 in {opts.patience} validations"
            log(f"epoch {epoch}: loss {row['loss']:.4f}, valid NDCG@10 {ndcg:.4f}"
                f"{' (best)' if improved else ''}, {seconds:.1f}s")
        progress.curve.append(row)
        progress.epoch = epoch
        if state is not None:
            best_file = state.save(progress, model, optimizer, best_state, improved, best_file)
    if not progress.stopped:
        progress.stopped = f"reached {opts.section}.epochs={opts.epochs}"
    return FitResult(progress, best_state, resumed_from)

