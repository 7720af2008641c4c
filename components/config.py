"""The schema of params.yaml: one pydantic model per section, the whole file checked when it is loaded.

`params.yaml` holds the values; these models say what is allowed (types, ranges, choices, rules
between keys) and carry the defaults, which equal params.yaml's values: a key left out means what the
file says. Every model forbids unknown keys. `load_params(path)` reads and checks the whole file, so a
typo in any section stops every stage, and turns pydantic's errors into one `ConfigError` that names
each key path, its bad value and the fix (for an unknown key: the allowed keys and the closest one).

Models are frozen (a stage cannot change its config by accident) and strict: YAML gives native types,
so `5` is an int and `"5"` a string; a float field also takes an int. Nested mappings left empty
(`package:` with nothing under it) take their defaults.

Every number has both bounds; the upper one is the largest value the code that reads the key can hold
(the MAX_* constants below say which code), so a value passes here only if it can also run. The file is
read with limits too: at most MAX_PARAMS_BYTES, nested at most MAX_DEPTH deep, and YAML aliases (`*name`,
`<<: *name`) at most MAX_ALIASES that together repeat at most MAX_ALIAS_NODES nodes, so an alias bomb is
refused at once, before anything expands it.

    python -m components.config [--params params.yaml]   # check a params file
    python -m components.config --schema                # every key: type, default, description (JSON Schema)
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import json
import reprlib
import types
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from components.errors import ConfigError, stage_main

DEFAULT_PARAMS = Path("params.yaml")

DataSource = Literal["synthetic", "movielens", "amazon2023", "files"]
Column = Literal["user_id", "item_id", "timestamp", "title", "description"]  # the canonical schema's columns
DType = Literal["auto", "bf16", "bfloat16", "fp16", "float16", "fp32", "float32"]
PromptLayout = Literal["paper", "compact", "text_first", "text_first_compact", "slots"]  # components/llm/prompts.py
Targets = Literal["all", "last"]
Negatives = Literal["sampled", "in_batch", "shared", "mixed"]
Readout = Literal["token", "slot"]
Center = Literal["none", "batchnorm"]
UserSlot = Literal["before", "after"]  # where distill.user_slot puts SASRec's user vector (or null)
KVReuse = Literal["none", "opening", "frozen"]
FirstModel = Literal["provisional", "reject"]  # gate.first_model: a first model that fails the gate
SYNTHETIC_TOPICS = 24  # topics in components/data/sources/synthetic.py's TOPICS

# Upper bounds: the largest value the code that reads a key can hold.
# A count or size (users, items, negatives, positions, layers, batch sizes, threads, Airflow's pool slots):
# prepare indexes users and items as int32 (idx columns, candidate lists), torch.set_num_threads and Airflow's
# Integer columns take a C int. Anything near it runs out of memory first; that is the allocator's check.
MAX_COUNT = 2**31 - 1
# A seed: numpy's and Python's 32-bit seed range. training.py seeds each step's dropout masks with
# torch.manual_seed(seed * 1_000_003 + step), which must stay below 2**64: a seed above ~1.8e13 overflowed.
MAX_SEED = 2**32 - 1
# A duration in seconds that the code adds to a datetime (Airflow's retry delays and timeouts, validate's
# future-timestamp cutoff): now + it must stay below datetime.max (year 9999). 10**11 s (3,170 years) does
# until the year 6800.
MAX_SECONDS = 10**11
MAX_MINUTES = MAX_SECONDS // 60
# A factor that multiplies float32 tensors (learning rates, loss weights): above float32's largest finite
# value the parameters or the loss become inf at once.
MAX_FLOAT32 = 3.4028234663852886e38
# Airflow keeps try_number + retries (max_tries) in a 32-bit Integer column, and try_number reaches
# retries + 1: 2 * MAX_RETRIES + 1 fits.
MAX_RETRIES = 2**30 - 1
# Gate thresholds are compared with NDCG@10 (in [0, 1]) and with ratios of metrics that metrics.json keeps to
# 6 decimals (so at most 1 / 0.000001): a threshold beyond +-1e6 passes or fails every model alike.
MAX_RATIO = 1e6

# Reading params.yaml (`load_params`): it is about 10 KB and nests 4 levels; it needs no alias at all.
MAX_PARAMS_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_ALIASES = 100
MAX_ALIAS_NODES = 10_000  # nodes that aliases may repeat in all (a bomb repeats 10**9)
MAX_INT_CHARS = 100  # an integer literal longer than this exceeds every bound (Python refuses 4,300 digits)


def _model_in(annotation: Any) -> type[BaseModel] | tuple[str, type[BaseModel]] | None:
    """The params model a field holds: itself, inside Optional, or as a dict's values ("dict", model)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = get_origin(annotation)
    if origin is dict:
        inner = _model_in(get_args(annotation)[1])
        return ("dict", inner) if isinstance(inner, type) else None
    if origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            if (inner := _model_in(arg)) is not None:
                return inner
    return None


class Invalid(ValueError):
    """A rule between keys of one section is broken: `key` (relative to the section) is the one to change."""

    def __init__(self, key: str, problem: str, fix: str):
        super().__init__(problem)
        self.key, self.problem, self.fix = key, problem, fix


#: `json_schema_extra` of a training knob that never changes the weights step by step: it decides when to
#: validate and stop, or how fast a step runs. Everything else in a model's section does, so it is part of a
#: run's identity (the resume key): `Section.weight_knobs`. Shown in `--schema` as `"run_only": true`.
RUN_ONLY = {"run_only": True}


class Section(BaseModel):
    """Base of every params model: unknown keys refused, values typed strictly, frozen after checking."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    @classmethod
    def run_only_knobs(cls) -> frozenset[str]:
        """The fields marked RUN_ONLY: budgets, cadence and speed, never the weights."""
        return frozenset(name for name, f in cls.model_fields.items() if f.json_schema_extra == RUN_ONLY)

    def weight_knobs(self) -> dict[str, Any]:
        """Every field but the RUN_ONLY ones, as JSON-able values: what decides the weights step by step, so
        a run killed and restarted with another value must not resume the old one."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in self.run_only_knobs()}

    @model_validator(mode="before")
    @classmethod
    def _empty_means_defaults(cls, data: Any) -> Any:
        # `synthetic:` with nothing under it is YAML's null: it means "all defaults", not "no section".
        if isinstance(data, dict):
            nested = {f.alias or name for name, f in cls.model_fields.items()
                      if isinstance(_model_in(f.annotation), type)}
            return {k: v for k, v in data.items() if not (v is None and k in nested)}
        return data


class SyntheticParams(Section):
    """`data.synthetic`: the embedded, seeded, order-dependent dataset (components/data/sources/synthetic)."""

    num_users: int = Field(600, ge=1, le=MAX_COUNT, description="users generated")
    num_items: int = Field(400, ge=1, le=MAX_COUNT, description="catalogue size; at least 2 per topic")
    num_topics: int = Field(20, ge=1, le=SYNTHETIC_TOPICS, description=f"topics used, 1..{SYNTHETIC_TOPICS}")
    mean_length: float = Field(20.0, gt=0, le=MAX_COUNT, description="mean history length")
    min_length: int = Field(
        6, ge=3, le=MAX_COUNT, description="shortest history (>= 3: one train, one valid, one test item)")
    max_length: int = Field(80, ge=3, le=MAX_COUNT, description="longest history (>= min_length)")
    follow_prob: float = Field(
        0.8, ge=0, le=1, description="chance the next item is a successor of the current one")
    successors: int = Field(3, ge=1, le=MAX_COUNT, description="successors per item")
    # Popularity is 1 / rank**skew: past 1074, 2**-skew underflows to 0 and every non-sequential pick is
    # the top item, as it already is at 1074.
    popularity_skew: float = Field(
        0.8, ge=0, le=1074, description="Zipf exponent of the non-sequential picks")
    start_date: str = Field("2022-01-01", description="first interaction date, YYYY-MM-DD")
    span_days: int = Field(  # no span of dates is longer than datetime.date's range
        900, ge=1, le=dt.date.max.toordinal(), description="days the interactions spread over")

    @field_validator("start_date")
    @classmethod
    def _iso_date(cls, value: str) -> str:
        dt.date.fromisoformat(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SyntheticParams:
        if self.num_items < 2 * self.num_topics:
            problem = f"{self.num_items} items for {self.num_topics} topics (2 per topic needed)"
            raise Invalid("num_items", problem,
                          "raise data.synthetic.num_items or lower data.synthetic.num_topics")
        if self.min_length > self.max_length:
            raise Invalid("min_length", f"{self.min_length} is above max_length {self.max_length}",
                          "set data.synthetic.min_length <= data.synthetic.max_length")
        return self


class DataParams(Section):
    """`data`: where the interactions come from (ingest) and how they are filtered (prepare)."""

    source: DataSource = Field(
        "synthetic", description="synthetic (embedded default) | movielens | amazon2023 | files")
    path: str | None = Field(
        None, description="movielens: folder or .zip; amazon2023: folder of JSONL; files: folder")
    url: str | None = Field(
        None, description="optional download (movielens: the GroupLens zip; amazon2023: the dataset's raw/ "
                          "base URL)")
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{64}$", description="optional checksum of the movielens download (64 "
                                                        "hex digits)")
    category: str | None = Field(None, description="amazon2023, e.g. Industrial_and_Scientific")
    columns: dict[Column, str] = Field(
        {}, description="files: canonical column -> your column, e.g. {item_id: movie_id}")
    timestamp_unit: Literal["s", "ms"] = Field("s", description="files: s | ms")
    min_user_interactions: int = Field(
        5, ge=3, le=MAX_COUNT, description="k-core on users, iterated to a fixed point (>= 3: train, valid "
                                           "and test need an item each)")
    min_item_interactions: int = Field(5, ge=1, le=MAX_COUNT, description="k-core on items")
    max_users: int | None = Field(
        None, ge=1, le=MAX_COUNT, description="seeded subsample of the users that pass the k-core, with "
                                              "their whole histories; null = all")
    synthetic: SyntheticParams = Field(default_factory=SyntheticParams, description="the embedded dataset")


class ValidateParams(Section):
    """`validate`: Great Expectations checks; rows that fail are quarantined."""

    max_bad_fraction: float = Field(
        0.05, ge=0, le=1, description="fail the stage when more interaction rows than this share are "
                                      "quarantined")
    future_tolerance_seconds: int = Field(
        3600, ge=0, le=MAX_SECONDS, description="clock skew allowed before a timestamp counts as in the "
                                                "future")


class CandidateParams(Section):
    """`candidates`: the candidate protocol `prepare` fixes once for every model (candidates.parquet);
    `evaluate` and `gate` score those candidates and read none of this."""

    # Distinct items besides the positive, in a catalogue of at most MAX_COUNT: checked here, before prepare
    # allocates [users, num_negatives] (10**12 asked for 2 PiB before any check).
    num_negatives: int = Field(
        99, ge=1, le=MAX_COUNT - 1, description="negatives per evaluated user (the 1 + 99 protocol)")
    max_users: int | None = Field(
        10000, ge=1, le=MAX_COUNT, description="evaluated users (seeded subset); null = all")


class SASRecParams(Section):
    """`sasrec`: SASRec, the paper's CF-SRec: LLM-SRec's teacher and the baseline it must beat."""

    hidden: int = Field(64, ge=1, le=MAX_COUNT, description="embedding and hidden width")
    num_blocks: int = Field(2, ge=1, le=MAX_COUNT, description="transformer blocks")
    num_heads: int = Field(1, ge=1, le=MAX_COUNT, description="attention heads; must divide hidden")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout, in [0, 1)")
    max_len: int = Field(128, ge=1, le=MAX_COUNT, description="most recent items the model reads")
    lr: float = Field(
        0.001, gt=0, le=MAX_FLOAT32, description="Adam learning rate, betas (0.9, 0.98) as in the reference")
    batch_size: int = Field(128, ge=1, le=MAX_COUNT, description="users per batch")
    loss: Literal["ce", "bce"] = Field(
        "ce", description="ce: full-softmax cross-entropy | bce: one sampled negative per position (the "
                          "reference)")
    epochs: int = Field(
        200, ge=0, le=MAX_COUNT, description="upper bound; early stopping usually ends sooner", json_schema_extra=RUN_ONLY)
    eval_every: int = Field(
        1, ge=1, le=MAX_COUNT, description="validate (NDCG@10 on the valid candidates) every N epochs", json_schema_extra=RUN_ONLY)
    patience: int = Field(
        5, ge=1, le=MAX_COUNT, description="validations without a better NDCG@10 before stopping; the best "
                                           "checkpoint is kept", json_schema_extra=RUN_ONLY)
    max_minutes: float | None = Field(
        None, gt=0, le=MAX_MINUTES, description="wall-clock budget (validation included): validate, keep the "
                                                "best, stop; null = none", json_schema_extra=RUN_ONLY)
    warm_start_from: str | None = Field(
        None, description="a previous checkpoint dir: known items keep their embeddings by item_id")
    warm_start_mismatch: Literal["error", "fresh"] = Field(
        "error", description="incompatible warm-start checkpoint: error | fresh (train from scratch)")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="null = the top-level seed")
    threads: int | None = Field(
        None, ge=1, le=MAX_COUNT, description="torch CPU threads; null = torch's default", json_schema_extra=RUN_ONLY)
    eval_batch_size: int = Field(512, ge=1, le=MAX_COUNT, description="users per batch when validating", json_schema_extra=RUN_ONLY)

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> SASRecParams:
        if self.hidden % self.num_heads:
            raise Invalid("num_heads", f"{self.num_heads} does not divide hidden={self.hidden}",
                          "pick num_heads that divides sasrec.hidden")
        return self


class LLMParams(Section):
    """`llm`: the frozen language model LLM-SRec reads through (distill, evaluate, gate)."""

    backbone: str = Field(
        "smollm2-135m", description="the packaged default (SmolLM2-135M-Instruct), a local HF model dir, or "
                                    "a HF id")
    num_layers: int | None = Field(
        4, ge=1, le=MAX_COUNT, description="read the LLM's first N layers (beyond the paper); null = all "
                                           "(the paper)")
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto (cuda if present) | cpu | cuda | "
                                                                 "cuda:N")
    dtype: DType = Field(
        "auto", description="auto: bf16 on CUDA and on CPUs with native bf16, else fp32 | bf16 | fp16 | "
                            "fp32")
    allow_download: bool = Field(
        False, description="hub ids resolve from the local HF cache only unless true")


class LossWeights(Section):
    """`distill.weights`: each loss term's weight; a term left out keeps 1.0."""

    retrieval: float = Field(1.0, ge=0, le=MAX_FLOAT32, description="L_retrieval")
    distill: float = Field(1.0, ge=0, le=MAX_FLOAT32, description="L_distill")
    uniform: float = Field(1.0, ge=0, le=MAX_FLOAT32, description="L_uniform")


class DistillParams(Section):
    """`distill`: LLM-SRec's adapters, trained on a frozen SASRec and a frozen LLM (stages/distill.py).

    Only the MLPs f_I, f_user, f_item, f_CF-user (and f_T with `text_layer`) and the [UserOut]/[ItemOut]
    vectors train. The defaults
    are the configuration docs/benchmarks.md shows to learn best on a 2-core CPU; params.yaml names the
    paper's setting beside each one that differs."""

    batch_size: int = Field(20, ge=1, le=MAX_COUNT, description="examples per step (the paper's)")
    lr: float = Field(0.0001, gt=0, le=MAX_FLOAT32, description="Adam learning rate (the paper's)")
    lr_decay: float = Field(
        1.0, gt=0, le=1, description="x this after every validation, in (0, 1] (the reference: 0.95)")
    epochs: int = Field(10, ge=1, le=MAX_COUNT, description="upper bound (the paper's)", json_schema_extra=RUN_ONLY)
    max_steps: int | None = Field(None, ge=1, le=MAX_COUNT, description="step budget; null = epochs only", json_schema_extra=RUN_ONLY)
    max_minutes: float | None = Field(
        6.0, gt=0, le=MAX_MINUTES, description="wall-clock budget, validation included: validate, keep the "
                                               "best, stop; null = none", json_schema_extra=RUN_ONLY)
    eval_every: float = Field(
        0.05, gt=0, le=10, description="validate every this fraction of an epoch (a whole number above 1)", json_schema_extra=RUN_ONLY)
    valid_users: int | None = Field(
        500, ge=1, le=MAX_COUNT, description="validation users (seeded subset); null = all", json_schema_extra=RUN_ONLY)
    patience: int = Field(
        5, ge=1, le=MAX_COUNT, description="validations without improvement before stopping; the best "
                                           "adapters are kept", json_schema_extra=RUN_ONLY)
    targets: Targets = Field(
        "all", description="all: every position of each training sequence | last: the paper")
    negatives: Negatives = Field(
        "shared", description="sampled: the example's own uniform negatives (the paper) | in_batch: + every "
                                "other example's positive | shared: + every other example's uniform negatives | "
                                "mixed: both")
    num_negatives: int = Field(
        8, ge=0, le=MAX_COUNT, description="sampled negatives per example (the paper: 3)")
    logq_correction: bool = Field(
        False, description="beyond the paper: subtract log of each candidate's sampling probability from its "
                           "logit (Yi et al., RecSys 2019); corrects in-batch negatives' popularity bias")
    history_len: int = Field(10, ge=1, le=MAX_COUNT, description="items shown in the user prompt")
    prompt: PromptLayout = Field(
        "slots", description="user-prompt layout: paper | compact | text_first | "
                                          "text_first_compact | slots")
    weights: LossWeights = Field(
        default_factory=LossWeights, description="loss term weights (the paper's: all 1)")
    use_distill_loss: bool = Field(True, description="ablation switch (L_distill)")
    use_uniform_loss: bool = Field(True, description="ablation switch (L_uniform)")
    readout: Readout = Field(
        "slot", description="slot: the state at the last [HistoryEmb] (beyond the paper) | token: at "
                            "[UserOut]/[ItemOut] (the paper)")
    center: Center = Field(
        "none", description="batchnorm: centre the LLM states before f_user/f_item (beyond the paper)")
    match_token_norm: bool = Field(
        False, description="rescale f_I outputs to the LLM's token-embedding norm (beyond the paper)")
    text_layer: Annotated[int, Field(ge=1, le=MAX_COUNT)] | Literal["all"] | None = Field(
        "all", description="beyond the paper: each title's mean-pooled LLM state after this many layers ('all' = "
                           "the backbone's whole depth, whatever llm.num_layers), computed once per item without "
                           "gradients, enters every [HistoryEmb] slot through f_T; null = off (the paper)")
    cf_dropout: float = Field(
        0.5, ge=0, lt=1, description="beyond the paper, with text_layer: while training, each injected item "
                                     "vector loses its SASRec part f_I(E_i) with this probability, so the "
                                     "adapters must also read the title's state (SASRec's embeddings were fit to "
                                     "the very sequences distillation trains on; the text was not); 0 = off (the "
                                     "paper)")
    user_slot: UserSlot | None = Field(
        None, description="beyond the paper: SASRec's user representation O_u (its whole window) enters the "
                          "user prompt as one more injected vector through f_U (the CoLLM / A-LLMRec way of "
                          "handing an LLM a CF user embedding), before the history's slots (every item's state "
                          "can attend to it) or after them (readout: slot then reads there); null = off")
    llm_pass: bool = Field(
        True, description="ablation (the no-LLM control): false replaces the LLM pass by the identity, so the "
                          "state read is the injected vector itself")
    neutral_titles: bool = Field(
        False, description="ablation: every title replaced by 'Product <item_id>' (the text-matters control)")
    shuffle_train: bool = Field(
        False, description="ablation: train on shuffled histories (items move, dates stay)")
    gradient_checkpointing: bool = Field(
        False, description="recompute the LLM's activations in backward (needs kv_reuse: none)")
    item_batch_size: int = Field(
        64, ge=1, le=MAX_COUNT, description="item prompts per LLM pass when building the item table", json_schema_extra=RUN_ONLY)
    eval_batch_size: int = Field(
        16, ge=1, le=MAX_COUNT, description="user prompts per LLM pass when validating", json_schema_extra=RUN_ONLY)
    max_title_chars: int = Field(
        120, ge=1, le=MAX_COUNT, description="item titles are cut to this many characters")
    kv_reuse: KVReuse = Field(
        "frozen", description="none | opening | frozen: keys/values of prompt text before the first "
                              "injected slot computed once, without gradients (exact)", json_schema_extra=RUN_ONLY)
    kv_cache_mb: float = Field(  # kv.py counts its bytes (mb * 2**20) against tensors' int64 byte counts
        2048.0, ge=0, le=2**43, description="bound of each of the two caches (item titles; validation users) "
                                            "of those keys/values kept across steps and validations (0 = "
                                            "recompute every time)", json_schema_extra=RUN_ONLY)
    # Run-only: every process draws the whole batch and the gradients are summed, so a step is one process's
    # step (components/models/parallel.py): a run killed with 2 processes resumes with 1, and the reverse.
    num_processes: int = Field(
        1, ge=1, le=1024, description="training processes on this machine (one per GPU, or CPU processes on "
                                      "gloo), started by the stage under `accelerate launch`; under a launcher "
                                      "already (multi-node), the launcher's count", json_schema_extra=RUN_ONLY)
    process_timeout_minutes: float = Field(
        30.0, gt=0, le=MAX_MINUTES, description="with several processes: the longest one waits for the others at "
                                                "one step (the main process's LLM load and title states "
                                                "included) before the run fails; a process that dies stops the "
                                                "run at once", json_schema_extra=RUN_ONLY)
    warm_start_mismatch: Literal["error", "fresh"] = Field(
        "fresh", description="staged warm-start adapters that do not fit this model (other backbone, widths, "
                             "prompt, readout, text_layer ...): error | fresh (train from scratch, the summary "
                             "says why)")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="null = the top-level seed")

    @field_validator("eval_every")
    @classmethod
    def _whole_epochs_above_one(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError("above 1 it counts whole epochs")
        return value

    @model_validator(mode="after")
    def _cf_dropout_needs_text(self) -> DistillParams:
        if self.cf_dropout > 0 and self.text_layer is None:
            raise Invalid("cf_dropout", f"{self.cf_dropout} drops SASRec's part of each injected vector, and with "
                                        "text_layer: null nothing else is left", "set distill.text_layer (e.g. all), "
                                                                                  "or cf_dropout: 0")
        return self

    @model_validator(mode="after")
    def _one_batch_for_batchnorm(self) -> DistillParams:
        if self.center == "batchnorm" and self.num_processes > 1:
            # Each process would centre its share of the batch by that share's statistics: not one process's step.
            raise Invalid("num_processes", f"{self.num_processes} processes with center: batchnorm would centre "
                                           "each process's share of a batch by its own statistics",
                          "set distill.num_processes: 1 with center: batchnorm, or center: none")
        return self

    @model_validator(mode="after")
    def _checkpointing_needs_no_cache(self) -> DistillParams:
        if self.gradient_checkpointing and self.kv_reuse != "none":
            # transformers drops the cache inside checkpointed layers, so the cached prefix would be lost.
            raise Invalid("gradient_checkpointing", f"needs kv_reuse: none (kv_reuse is {self.kv_reuse})",
                          "set distill.kv_reuse: none with gradient checkpointing, or turn checkpointing off")
        return self


class EvaluateParams(Section):
    """`evaluate`: which models are scored, on the fixed candidates and the full catalogue."""

    models: list[str] = Field(
        ["popularity", "sasrec", "llmsrec"], min_length=1, description="a builder in "
                                                                       "components/stages/evaluate.py or a "
                                                                       "--checkpoint NAME=DIR in dvc.yaml")
    shuffle: list[str] = Field(
        ["sasrec", "llmsrec"], description="also evaluated with each history's order permuted -> "
                                           "NAME_shuffled; each must be in models")
    full_catalogue: bool = Field(
        True, description="also rank the positive against every item the user never interacted with")
    valid_split: bool = Field(
        True, description="also score every validation user on the valid split's 1+99 candidates "
                          "(NAME.valid): what settings are compared on, never the test split")
    shuffle_seed: int | None = Field(None, ge=0, le=MAX_SEED, description="null = the top-level seed")
    batch_size: int = Field(512, ge=1, le=MAX_COUNT, description="users per batch")
    threads: int | None = Field(
        None, ge=1, le=MAX_COUNT, description="torch CPU threads; null = torch's default")

    @model_validator(mode="after")
    def _shuffled_are_evaluated(self) -> EvaluateParams:
        if unknown := sorted(set(self.shuffle) - set(self.models)):
            raise Invalid("shuffle", f"names {unknown}, which are not in evaluate.models",
                          "add them to evaluate.models or remove them from evaluate.shuffle")
        return self


class GateParams(Section):
    """`gate`: release criteria for the evaluated model (reports/metrics.json); null switches a check off."""

    model: str = Field("llmsrec", description="the evaluated model the gate judges")
    # A floor past the metric's range (e.g. 1.5) is allowed: it blocks every model, which tests rely on.
    min_ndcg_at_10: float | None = Field(
        0.10, ge=-MAX_RATIO, le=MAX_RATIO, description="absolute floor on test NDCG@10")
    min_lift_over_popularity: float | None = Field(
        0.5, ge=-MAX_RATIO, le=MAX_RATIO, description="NDCG@10 / popularity - 1")
    min_shuffle_drop: float | None = Field(
        0.04, ge=-MAX_RATIO, le=MAX_RATIO, description="relative NDCG@10 drop on shuffled histories")
    max_regression: float | None = Field(  # a share: at 1 any challenger passes (its ratio is >= 0)
        0.02, ge=0, le=1, description="share the model may be below production, re-scored on today's "
                                      "candidates (0.02 = 2%)")
    champion_users: int | None = Field(
        None, ge=1, le=MAX_COUNT, description="test users to re-score the production model on (seeded); null "
                                              "= all")
    first_model: FirstModel = Field(
        "provisional", description="nothing in production and the gate fails: provisional (promote, "
                                   "flagged) | reject")


class PackageParams(Section):
    """`package`: what goes into the BentoML model."""

    include_backbone: bool = Field(
        False, description="copy a non-default local backbone into the package; the default LLM never is")


class TaskParams(Section):
    """`orchestration.tasks.<stage>`: Airflow routing for one stage's task; a key left out keeps Airflow's."""

    queue: str | None = Field(None, description="Celery queue")
    pool: str | None = Field(None, description="Airflow pool (default: orchestration.dvc_pool)")
    pool_slots: int | None = Field(None, ge=1, le=MAX_COUNT, description="pool slots the task takes")
    retries: int | None = Field(None, ge=0, le=MAX_RETRIES, description="retries for this task")
    execution_timeout_minutes: float | None = Field(
        None, gt=0, le=MAX_MINUTES, description="the task fails after this long")
    gpus: int | None = Field(
        None, ge=0, le=MAX_COUNT, description="GPUs the task asks for: the Kubernetes pod's limit of `accelerator`, "
                                              "Kubeflow's accelerator limit")
    accelerator: str = Field(
        "nvidia.com/gpu", min_length=1, description="the resource name `gpus` counts (Kubernetes limit key, "
                                                    "Kubeflow accelerator type)")
    node_selector: dict[str, str] = Field(
        {}, description="Kubernetes node labels the task's pod must run on (e.g. a GPU model)")
    tolerations: list[dict[str, str]] = Field(
        [], description="Kubernetes tolerations of the task's pod (keys: key, operator, value, effect)")

    @field_validator("tolerations")
    @classmethod
    def _toleration_keys(cls, value: list[dict[str, str]]) -> list[dict[str, str]]:
        # The pod's V1Toleration takes these four (tolerationSeconds is not a str); anything else would fail the
        # DAG's import with a TypeError that names neither the key nor this file.
        for toleration in value:
            if unknown := sorted(set(toleration) - {"key", "operator", "value", "effect"}):
                raise ValueError(f"unknown toleration key(s) {unknown}: a toleration has key, operator, value, effect")
        return value


class LandingParams(Section):
    """`orchestration.landing`: the landing zone for new interaction batches (components/data/landing.py)."""

    incoming: str = Field("data/incoming", description="producers write here")
    store: str = Field(
        "data/batches", description="accepted raw batches: dvc.yaml's ingest_batches output, ingest's dependency")
    landing: str = Field("data/landing", description="claimed/, rejected/, duplicates/, retracted/, log.jsonl, landing.lock")
    ready_file: str = Field("_READY", description="sentinel the Asset watcher consumes to start a run")
    poll_seconds: float = Field(
        30.0, gt=0, le=MAX_SECONDS, description="how often the triggerer checks for the sentinel")
    settle_seconds: float = Field(
        5.0, ge=0, le=MAX_SECONDS, description="a file must be this old before it is taken (for producers "
                                               "that cannot rename)")


class DriftThreshold(Section):
    """`orchestration.drift.<check>`: a value at or above `flag` retrains and flags the batch; at or above
    `hold`, the batch is held for review instead of placed (components/data/drift.py). null switches one off."""

    # A share is at most 1 and a distance of a million standard deviations is no longer a distance: above
    # MAX_RATIO a threshold would simply never fire, which null says plainly.
    flag: float | None = Field(
        None, ge=0, le=MAX_RATIO, description="retrain, and flag the batch in the run summary and events")
    hold: float | None = Field(
        None, ge=0, le=MAX_RATIO, description="hold the batch in data/landing/held/ for review")

    @model_validator(mode="after")
    def _hold_above_flag(self) -> DriftThreshold:
        if self.flag is not None and self.hold is not None and self.hold < self.flag:
            raise Invalid("hold", f"{self.hold} is below flag {self.flag}: every flagged batch would be held",
                          "set hold >= flag (or hold: null to never hold on this check)")
        return self


class DriftParams(Section):
    """`orchestration.drift`: each landed batch against the training data it joins (components/data/drift.py).
    Defaults from measurement (benchmarks/drift_thresholds.py): the last 10% by time of the synthetic default
    and of ML-1M retrain; a popularity flip is held, half the rows on new items flagged."""

    min_values: int = Field(
        30, ge=1, le=MAX_COUNT, description="a distribution check needs this many values on each side (rows, "
                                            "users, gaps); fewer: skipped, and recorded as such")
    item_popularity: DriftThreshold = Field(
        DriftThreshold(flag=0.3, hold=0.6), description="normed Wasserstein distance of the rows' popularity "
                                                         "positions (0 head .. 1 tail), known items only")
    new_items: DriftThreshold = Field(
        DriftThreshold(flag=0.2, hold=0.9), description="share of the batch's rows on items the training data "
                                                        "has no interaction with")
    new_users: DriftThreshold = Field(
        DriftThreshold(flag=0.5, hold=None), description="share of the batch's users the training data has no "
                                                         "interaction of")
    sequence_length: DriftThreshold = Field(
        DriftThreshold(flag=1.5, hold=None), description="normed Wasserstein distance of events per user (the "
                                                         "training data's newest slice of the batch's size)")
    inter_event_time: DriftThreshold = Field(
        DriftThreshold(flag=2.0, hold=None), description="normed Wasserstein distance of log10 seconds between a "
                                                         "user's consecutive events")
    timestamp_overlap: DriftThreshold = Field(
        DriftThreshold(flag=0.5, hold=None), description="share of the batch's rows older than the training "
                                                         "data's newest event")
    timestamp_gap_days: DriftThreshold = Field(
        DriftThreshold(flag=30.0, hold=None), description="days from the training data's newest event to the "
                                                          "batch's oldest")

    @model_validator(mode="before")
    @classmethod
    def _one_threshold_keeps_the_other(cls, data: Any) -> Any:
        # `new_items: {hold: 0.95}` changes hold alone: the flag keeps its default rather than turning off
        # (a threshold is switched off by writing null).
        if isinstance(data, dict):
            data = dict(data)
            for name, f in cls.model_fields.items():
                if isinstance(data.get(name), dict) and isinstance(f.default, DriftThreshold):
                    data[name] = {**f.default.model_dump(), **data[name]}
        return data


class ExchangeParams(Section):
    """`orchestration.exchange`: how stages on workers that share no folder (Celery on several machines,
    Kubernetes pods, Kubeflow) pass data: DVC outputs through a DVC remote, `dvc.lock` through a git branch."""

    dvc_remote: str | None = Field(
        None, description="a remote in .dvc/config; null = every worker runs in the one repository folder")
    git_remote: str = Field("origin", min_length=1, description="the git remote that carries dvc.lock")
    git_branch: str = Field(
        "pipeline", min_length=1, description="the branch each task's dvc.lock is committed to")


class OrchestrationParams(Section):
    """`orchestration`: the Airflow DAG `llm_srec_retraining` (dags/). No DVC stage depends on this section
    (`ingest_batches`, which runs every time, reads `landing` and `drift`)."""

    schedule: str | None = Field(
        "0 3 * * *", description="cron, UTC; null = only when a batch lands or on a manual trigger")
    trigger_on_batch: bool = Field(
        True, description="also start a run when the landing zone's sentinel appears")
    start_date: str = Field("2025-01-01", description="UTC, YYYY-MM-DD")
    retries: int = Field(
        2, ge=0, le=MAX_RETRIES, description="transient failures; a stage that reports bad input is not "
                                             "retried")
    retry_delay_seconds: int = Field(
        60, ge=0, le=MAX_SECONDS, description="doubles on each retry up to max_retry_delay_seconds")
    max_retry_delay_seconds: int = Field(
        1800, ge=0, le=MAX_SECONDS, description="longest wait between retries")
    dvc_pool: str = Field("dvc", description="the 1-slot pool DVC stages share (one DVC lock per repository)")
    tasks: dict[str, TaskParams] = Field(
        {"distill": TaskParams(queue="gpu", pool="gpu", gpus=1, tolerations=[
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])}, description="per-stage routing; a stage "
                                                                              "not named here runs on the "
                                                                              "default queue in dvc_pool")
    warm_start: Literal["champion", "previous", "none"] = Field(
        "champion", description="SASRec and LLM-SRec's adapters restart from: champion | previous | none")
    gate_report: str = Field(
        "reports/gate.json", description="{passed, checks}; no report = nothing is promoted")
    run_report: str | None = Field(
        "reports/run_report.html", description="the run report: the stage that writes it runs on every judged "
                                               "run, rejected ones too (null: only with a release)")
    notify_callback: str | None = Field(
        None, pattern=r"^[^:\s]+:[^:\s]+$", description="'module:function' called with each run's outcome "
                                                        "record")
    serving_reload_command: str | None = Field(
        None, description="run after a promotion, e.g. 'systemctl restart llmsrec-serve'")
    landing: LandingParams = Field(default_factory=LandingParams, description="the landing zone")
    drift: DriftParams = Field(
        default_factory=DriftParams, description="drift checks of each landed batch: retrain, flag or hold")
    image: str = Field(
        "llm-srec-pipeline:0.1.0", min_length=1, description="the container image of Kubernetes pods and Kubeflow "
                                                            "components (this repository, `make setup` done)")
    exchange: ExchangeParams = Field(
        default_factory=ExchangeParams, description="workers that share no folder: DVC remote and git branch")

    @field_validator("start_date", mode="before")
    @classmethod
    def _date_text(cls, value: Any) -> Any:
        # An unquoted YAML date arrives as a date: keep the text form the file means.
        return value.isoformat() if isinstance(value, dt.date) else value

    @field_validator("start_date")
    @classmethod
    def _iso(cls, value: str) -> str:
        dt.datetime.fromisoformat(value)
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        from croniter import croniter

        if value is not None and not croniter.is_valid(value):
            raise ValueError("not a cron expression (five fields, UTC, e.g. '0 3 * * *')")
        return value

    @property
    def start_datetime(self) -> dt.datetime:
        """`start_date` as a timezone-aware UTC datetime."""
        d = dt.datetime.fromisoformat(self.start_date)
        return d.replace(tzinfo=dt.UTC) if d.tzinfo is None else d.astimezone(dt.UTC)


class Params(Section):
    """The whole params.yaml. A section left out takes its defaults (params.yaml's values)."""

    seed: int = Field(
        42, ge=0, le=MAX_SEED, description="the top-level seed; a section's own `seed: null` means this one")
    data: DataParams = Field(default_factory=DataParams, description="ingest and prepare")
    validate_: ValidateParams = Field(
        default_factory=ValidateParams, alias="validate", description="validate")
    candidates: CandidateParams = Field(default_factory=CandidateParams, description="the candidate protocol (prepare)")
    sasrec: SASRecParams = Field(default_factory=SASRecParams, description="pretrain_sasrec")
    llm: LLMParams = Field(default_factory=LLMParams, description="distill, evaluate, gate")
    distill: DistillParams = Field(default_factory=DistillParams, description="distill")
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams, description="evaluate")
    gate: GateParams = Field(default_factory=GateParams, description="gate")
    package: PackageParams = Field(default_factory=PackageParams, description="package")
    orchestration: OrchestrationParams = Field(
        default_factory=OrchestrationParams, description="the Airflow DAG")

    def seed_of(self, section: str) -> int:
        """The seed section `section` (sasrec, distill) trains with: its own `seed`, or the top-level one when null."""
        own = getattr(self, section).seed
        return self.seed if own is None else own


M = TypeVar("M", bound=BaseModel)


_UNALIAS = "write the values out instead of aliasing them (params.yaml needs no anchors), or restore it from git"


class _LimitError(yaml.composer.ComposerError):
    """Valid YAML past a limit of `_LimitedLoader`: nothing params.yaml needs, and what an alias bomb is.
    `key`: the key path it was met at ("" for the top level); `fix`: what to do."""

    def __init__(self, key: str, problem: str, mark: Any, fix: str = _UNALIAS):
        super().__init__(None, None, problem, mark)
        self.key, self.fix = key, fix


class _LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with limits, checked while composing, before anything is constructed.

    An alias bomb is a few hundred bytes whose anchors each alias the one before several times: PyYAML
    builds it with shared references at no cost, and then whatever walks the data (pydantic, an error's
    repr, DVC writing params into dvc.lock) meets 10**9 values (a 312 MB error line, or MemoryError). So a
    document is refused when it nests deeper than MAX_DEPTH (the composer recurses, as the data's readers
    do), has more than MAX_ALIASES aliases, has aliases that repeat more than MAX_ALIAS_NODES nodes in all
    or contain themselves, or has a number literal longer than MAX_INT_CHARS.
    """

    _NUMBERS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")

    def __init__(self, stream: str):
        super().__init__(stream)
        self._aliases = 0
        self._path: list[Any] = []  # the keys (and list positions) down to the node being composed
        self._written = 0  # nodes in the text, an alias counting as none
        self._anchors: dict[int, tuple[str, str]] = {}  # id(node) -> (its anchor, its key path), for errors

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        # The label of this node in its parent: a key's text, a list position, or None for a mapping's key.
        label = (str(index.value)[:40] if isinstance(index, yaml.ScalarNode) else
                 index if isinstance(index, int) or index is None else "?")
        key = _dotted(tuple(p for p in [*self._path, label] if p is not None))
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _LimitError(key, f"more than {MAX_ALIASES} aliases (*name) in the file", event.start_mark)
            return super().compose_node(parent, index)
        if len(self._path) >= MAX_DEPTH:
            raise _LimitError(key, f"nested more than {MAX_DEPTH} levels deep", event.start_mark,
                              "params.yaml nests 4 levels: remove the extra brackets or indentation, or restore "
                              "it from git")
        self._path.append(label)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._path.pop()
        self._written += 1
        if isinstance(node, yaml.ScalarNode) and node.tag in self._NUMBERS and len(node.value) > MAX_INT_CHARS:
            # Python refuses to parse an int of 4,300 digits (ValueError, not a YAML error); none is in bounds.
            raise _LimitError(key, f"a number of {len(node.value):,} characters (no key takes one longer than "
                              f"{MAX_INT_CHARS})", node.start_mark,
                              "set it as `srec check-params --schema` documents, or restore it from git")
        if event.anchor is not None:
            self._anchors[id(node)] = (event.anchor, key)
        return node

    def compose_document(self) -> Any:
        node = super().compose_document()
        if node is not None and self._aliases:
            self._check_expansion(node)
        return node

    def _named(self, node: Any) -> tuple[str, str]:
        """(key path, how the error names the node): its anchor where it has one."""
        anchor, key = self._anchors.get(id(node), (None, ""))
        return key, f"'&{anchor}'" if anchor else "the value"

    def _check_expansion(self, root: Any) -> None:
        """Each node's size and depth with its aliases expanded, each computed once (post-order, without
        recursion: chained aliases nest deeper than Python's stack)."""
        done: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, depth) once expanded
        open_: set[int] = set()  # nodes whose children are still being counted: the path from the root
        stack: list[tuple[Any, bool]] = [(root, False)]
        while stack:
            node, closing = stack.pop()
            kids = _node_children(node)
            if closing:
                size = 1 + sum(done[id(k)][0] for k in kids)
                depth = 1 + max((done[id(k)][1] for k in kids), default=0)
                done[id(node)] = (size, depth)
                open_.discard(id(node))
                if size > self._written + MAX_ALIAS_NODES:
                    key, name = self._named(node)
                    raise _LimitError(key, f"aliases expand {name} to {size:,} values (more than "
                                      f"{MAX_ALIAS_NODES:,} repeated by aliases in all)", node.start_mark)
                if depth > MAX_DEPTH:
                    key, name = self._named(node)
                    raise _LimitError(key, f"aliases nest {name} more than {MAX_DEPTH} levels deep",
                                      node.start_mark)
                continue
            if id(node) in done:
                continue
            if id(node) in open_:
                key, name = self._named(node)
                raise _LimitError(key, f"{name} contains an alias of itself", node.start_mark)
            open_.add(id(node))
            stack.append((node, True))
            stack.extend((k, False) for k in kids)
        if (repeated := done[id(root)][0] - len(done)) > MAX_ALIAS_NODES:
            raise _LimitError("", f"aliases repeat {repeated:,} values (more than {MAX_ALIAS_NODES:,})",
                              root.start_mark)


def _node_children(node: Any) -> list:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def read_yaml(path: str | Path) -> Any:
    """The data of a YAML file a person edits (params.yaml), read with `_LimitedLoader`'s limits.

    Raises ConfigError naming the file (and the line and key, for YAML) and the fix when it is missing,
    unreadable, larger than MAX_PARAMS_BYTES, not UTF-8, not YAML, or past a limit (aliases, nesting, a
    number's length).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "params file not found", "run from the repository root or pass --params PATH")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_PARAMS_BYTES + 1)  # never more: the size check must not need the whole file
    except OSError as e:
        raise ConfigError(path, f"cannot be read ({e.strerror or e})",
                          "give the pipeline's user read access to it, or pass --params PATH") from None
    if len(raw) > MAX_PARAMS_BYTES:
        raise ConfigError(path, f"is larger than {MAX_PARAMS_BYTES:,} bytes (params.yaml is about 10 KB)",
                          "restore it from git (`git checkout params.yaml`), or pass the right file with "
                          "--params")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(path, f"is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start:,})",
                          "save it as UTF-8, or restore it from git") from None
    try:
        return yaml.load(text, Loader=_LimitedLoader)  # a SafeLoader, with limits
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        if isinstance(e, _LimitError):
            at = f" at '{e.key}'" if e.key else ""
            raise ConfigError(path, f"is refused{at}{line}: {e.problem}", e.fix) from None
        problem = f"is not valid YAML{line}: {getattr(e, 'problem', None) or e}"
        raise ConfigError(path, problem, "fix the syntax, or restore it from git") from None


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read and check a whole params file. Raises ConfigError: file missing, unreadable, not YAML, past a
    reading limit (`read_yaml`), or any key invalid."""
    data = read_yaml(path)
    return parse_params({} if data is None else data, Path(path))


def parse_params(data: Any, source: str | Path = DEFAULT_PARAMS) -> Params:
    """Check params given as a mapping (what params.yaml holds); sections left out take their defaults."""
    if not isinstance(data, dict):
        raise ConfigError(source, f"the top level is a {type(data).__name__}, not a mapping of sections",
                          "restore params.yaml from git")
    return parse(Params, data, source)


def parse(model: type[M], data: Any, source: str | Path = DEFAULT_PARAMS, at: str = "") -> M:
    """`model` built from `data`, or a ConfigError naming every bad key as `at.key.path` in `source`."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems, fixes = [], []
        for err in e.errors():
            problem, fix = _explain(model, err, at)
            problems.append(problem)
            if fix not in fixes:
                fixes.append(fix)
        raise ConfigError(source, "; ".join(problems), "; ".join(fixes)) from None


# Old key path -> its new name, for a params file written before a rename: the generic "did you mean"
# would point `eval` at `evaluate`, which is another stage's section.
RENAMED = {"eval": "candidates"}


def _explain(root: type[BaseModel], err: dict[str, Any], at: str) -> tuple[str, str]:
    """(problem, fix) for one pydantic error, in params.yaml's terms."""
    loc = tuple(p for p in err["loc"] if p != "[key]")
    path = _dotted(((at,) if at else ()) + loc)
    if err["type"] == "extra_forbidden" and path in RENAMED:
        return f"unknown key '{path}'", f"'{path}' is now '{RENAMED[path]}': rename it (same keys)"
    if err["type"] == "extra_forbidden":
        owner = _model_at(root, loc[:-1])
        allowed = [f.alias or name for name, f in owner.model_fields.items()] if owner else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        parent = _dotted(((at,) if at else ()) + loc[:-1])
        where = f"'{parent}'" if parent else "the top level"
        hint = f"did you mean '{_dotted((parent, close[0]) if parent else (close[0],))}'? " if close else ""
        return f"unknown key '{path}'", f"{hint}{where} takes {', '.join(allowed)}"
    error = (err.get("ctx") or {}).get("error")
    if isinstance(error, Invalid):
        key = _dotted((path, error.key) if path else (error.key,))
        return f"{key}: {error.problem}", error.fix
    field = _field_at(root, loc)
    msg = str(error) if err["type"] == "value_error" and error is not None else err["msg"]
    value = err.get("input")
    hint = ""
    if isinstance(value, str) and err["type"] in ("int_type", "float_type", "bool_type"):
        hint = " (quoted values, and numbers like 1e-4, are read as text by YAML: write 0.0001 or 1.0e-4)"
    described = f": {field.description}" if field is not None and field.description else ""
    problem = f"{path} = {_shown(value)}: {msg[:1].lower()}{msg[1:]}"
    return problem, f"set {path} as documented{described}{hint}"


# A bad value as the error shows it: reprlib cuts long strings, long numbers and long or deep containers
# without walking them whole (a full repr of shared, nested lists is exponential).
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlong = 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4
_REPR.maxlevel = 2


def _shown(value: Any) -> str:
    try:
        return _REPR.repr(value)
    except ValueError:  # an int too long for str() (4,300 digits): reprlib converts it whole first
        return f"<an integer of {value.bit_length():,} bits>" if isinstance(value, int) else "<unprintable>"


def _dotted(parts: tuple) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _walk(root: type[BaseModel], loc: tuple) -> tuple[Any, FieldInfo | None]:
    """(the model at `loc`, or None past the models; the last field met) following an error location."""
    current: Any = root
    field = None
    for part in loc:
        if isinstance(current, tuple):  # a dict of models: this part is a key
            current = current[1]
            continue
        if not isinstance(current, type) or not issubclass(current, BaseModel):
            return None, field
        by_alias = {f.alias or name: f for name, f in current.model_fields.items()}
        if part not in by_alias:
            return None, field
        field = by_alias[part]
        current = _model_in(field.annotation)
    return current, field


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    current, _ = _walk(root, loc)
    return current if isinstance(current, type) else None


def _field_at(root: type[BaseModel], loc: tuple) -> FieldInfo | None:
    return _walk(root, loc)[1]


@stage_main("config")
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    ap.add_argument("--schema", action="store_true", help="print the JSON Schema of params.yaml and exit")
    args = ap.parse_args(argv)
    if args.schema:
        print(json.dumps(Params.model_json_schema(), indent=2))
        return
    params = load_params(args.params)
    sections = [f.alias or name for name, f in Params.model_fields.items() if _model_in(f.annotation)]
    print(f"{args.params}: valid ({', '.join(sections)}; seed {params.seed})")


if __name__ == "__main__":
    main()
