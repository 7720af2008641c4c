"""params.yaml's schema: the file validates, the code's defaults are its values, and every section refuses
an unknown key and a bad value, naming the key and the fix."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, fields

import numpy as np
import pytest
import yaml

from components.config import (
    MAX_ALIASES,
    MAX_COUNT,
    MAX_MINUTES,
    MAX_PARAMS_BYTES,
    MAX_SECONDS,
    MAX_SEED,
    SYNTHETIC_TOPICS,
    LandingParams,
    Params,
    SASRecParams,
    load_params,
    main,
    parse_params,
)
from components.errors import MAX_FIX, MAX_PROBLEM, MAX_SUBJECT, ConfigError, DataError, stage_main
from tests.conftest import REPO


def test_params_yaml_validates_and_its_values_are_the_defaults():
    """params.yaml is the source of truth for values: the models' defaults must be exactly its values,
    so a key left out of a params file means what params.yaml says."""
    assert load_params(REPO / "params.yaml") == Params()


def test_code_defaults_come_from_the_params_models():
    from components.data.landing import Paths
    from components.models.sasrec import SASRecConfig
    from components.models.training import TrainOptions
    from components.stages.evaluate import evaluate

    sasrec = SASRecParams()
    assert {k: getattr(sasrec, k) for k in asdict(SASRecConfig())} == asdict(SASRecConfig())
    train = TrainOptions.from_params(sasrec, Params().seed_of("sasrec"), section="sasrec", betas=(0.9, 0.98),
                                     validate_at_start=True)
    assert (train.epochs, train.eval_every, train.patience, train.lr, train.batch_size, train.max_minutes,
            train.eval_batch_size, train.seed) == (sasrec.epochs, sasrec.eval_every, sasrec.patience, sasrec.lr,
                                                   sasrec.batch_size, sasrec.max_minutes, sasrec.eval_batch_size,
                                                   Params().seed)
    landing = LandingParams()
    assert Paths() == Paths.from_config(landing) and Paths().ready_file == landing.ready_file
    defaults = evaluate.__kwdefaults__
    assert (defaults["full_catalogue"], defaults["batch_size"]) == (Params().evaluate.full_catalogue,
                                                                    Params().evaluate.batch_size)


def test_synthetic_topic_bound_matches_the_generator():
    from components.data.sources.synthetic import TOPICS

    assert SYNTHETIC_TOPICS == len(TOPICS)


def _sections(model=Params, prefix=()):
    """Every mapping in params.yaml with its model: (dotted path, model class), nested ones included."""
    from components.config import _model_in

    for name, f in model.model_fields.items():
        inner = _model_in(f.annotation)
        key = prefix + (f.alias or name,)
        if isinstance(inner, tuple):  # a dict of models (orchestration.tasks): one entry stands for all
            yield ".".join(key + ("distill",)), inner[1]
            yield from _sections(inner[1], key + ("distill",))
        elif inner is not None:
            yield ".".join(key), inner
            yield from _sections(inner, key)


def _nest(path: str, value) -> dict:
    out = value
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


@pytest.mark.parametrize("path", [p for p, _ in _sections()])
def test_every_section_refuses_an_unknown_key_and_lists_the_allowed_ones(path):
    model = dict(_sections())[path]
    first = next(iter(model.model_fields))
    typo = first[:-1] + first[-1].upper() + "x"  # close to a real key, not one
    with pytest.raises(ConfigError) as e:
        parse_params(_nest(path, {typo: 1}))
    msg = str(e.value)
    assert f"unknown key '{path}.{typo}'" in msg
    assert f"did you mean '{path}.{first}'?" in msg
    assert all((f.alias or name) in msg for name, f in model.model_fields.items())


def test_an_unknown_section_is_refused_with_the_sections_listed():
    with pytest.raises(ConfigError, match=r"unknown key 'distil'\. Fix: did you mean 'distill'\? the top level "
                                          r"takes seed, data, validate, candidates"):
        parse_params({"distil": {}})


def test_the_old_eval_section_names_its_new_key():
    """`eval` was renamed `candidates`: "did you mean 'evaluate'" would send an old params file to the
    wrong stage's section."""
    with pytest.raises(ConfigError) as e:
        parse_params({"eval": {"num_negatives": 99, "max_users": 10000}})
    assert str(e.value) == ("params.yaml: unknown key 'eval'. Fix: 'eval' is now 'candidates': rename it "
                            "(same keys)")
    assert parse_params({"candidates": {"num_negatives": 50}}).candidates.num_negatives == 50


BAD_VALUES = [  # (key path, value, what the error says)
    ("seed", -1, "greater than or equal to 0"),
    ("data.source", "csv", "input should be 'synthetic', 'movielens', 'amazon2023' or 'files'"),
    ("data.min_user_interactions", 2, "greater than or equal to 3"),
    ("data.columns", {"itemid": "movie_id"}, "input should be 'user_id', 'item_id'"),
    ("data.sha256", "abc", "should match pattern"),
    ("data.synthetic.num_topics", SYNTHETIC_TOPICS + 1, f"less than or equal to {SYNTHETIC_TOPICS}"),
    ("validate.max_bad_fraction", 1.5, "less than or equal to 1"),
    ("candidates.num_negatives", 0, "greater than or equal to 1"),
    ("candidates.num_negatives", True, "valid integer"),
    ("sasrec.dropout", 1.0, "less than 1"),
    ("sasrec.loss", "mse", "input should be 'ce' or 'bce'"),
    ("sasrec.lr", "1e-3", "valid number"),
    ("llm.device", "gpu", "should match pattern"),
    ("llm.dtype", "float8", "input should be 'auto'"),
    ("distill.eval_every", 0, "greater than 0"),
    ("distill.eval_every", 2.5, "above 1 it counts whole epochs"),
    ("distill.max_minutes", "ten", "valid number"),
    ("distill.prompt", "fancy", "'paper', 'compact', 'text_first', 'text_first_compact' or 'slots'"),
    ("distill.weights.distill", -1, "greater than or equal to 0"),
    ("evaluate.models", [], "at least 1 item"),
    ("evaluate.batch_size", 0, "greater than or equal to 1"),
    ("gate.min_shuffle_drop", "high", "valid number"),
    ("gate.first_model", "always", "input should be 'provisional' or 'reject'"),
    ("package.include_backbone", "yes", "valid boolean"),
    ("orchestration.schedule", "every day", "not a cron expression"),
    ("orchestration.start_date", "someday", "isoformat"),
    ("orchestration.notify_callback", "module_without_function", "should match pattern"),
    ("orchestration.tasks.distill.gpus", -1, "greater than or equal to 0"),
    ("orchestration.tasks.distill.tolerations", [{"key": "a", "tolerationSeconds": "60"}],
     "unknown toleration key(s) ['tolerationSeconds']"),
    ("orchestration.landing.poll_seconds", 0, "greater than 0"),
    ("orchestration.exchange.git_branch", "", "at least 1 character"),
    ("orchestration.drift.min_values", 0, "greater than or equal to 1"),
    ("orchestration.drift.item_popularity.hold", -0.1, "greater than or equal to 0"),
    ("orchestration.drift.new_items.flag", "20%", "valid number"),
    ("orchestration.drift.new_users.flag", True, "valid number"),
    ("orchestration.drift.sequence_length.hold", 1e7, "less than or equal to 1000000"),
    ("orchestration.drift.inter_event_time.flag", [2.0], "valid number"),
    ("orchestration.drift.timestamp_overlap.hold", -1, "greater than or equal to 0"),
    ("orchestration.drift.timestamp_gap_days.flag", "a month", "valid number"),
    # Above what the code that reads them can hold (components/config.py's MAX_* say which code):
    ("seed", 10**14, f"less than or equal to {MAX_SEED}"),
    ("candidates.num_negatives", 10**12, f"less than or equal to {MAX_COUNT - 1}"),
    ("sasrec.threads", 2**40, f"less than or equal to {MAX_COUNT}"),
    ("distill.kv_cache_mb", 2.0**60, "less than or equal to 8796093022208"),
    ("orchestration.retry_delay_seconds", 10**15, f"less than or equal to {MAX_SECONDS}"),
    ("orchestration.tasks.distill.execution_timeout_minutes", 1e300, f"less than or equal to {MAX_MINUTES}"),
]


def test_every_section_has_a_bad_value_case():
    sections = {p for p, _ in _sections()} | {"seed"}
    covered = {p for p in sections if any(key.startswith(p + ".") or key == p for key, _, _ in BAD_VALUES)}
    assert covered == sections


@pytest.mark.parametrize("key, value, says", BAD_VALUES)
def test_a_bad_value_names_the_key_the_value_and_the_fix(key, value, says):
    with pytest.raises(ConfigError) as e:
        parse_params(_nest(key, value))
    msg = str(e.value)
    assert msg.startswith("params.yaml: ") and says in msg, msg
    named = key if not isinstance(value, dict) else f"{key}.{next(iter(value))}"
    assert f"{named} = " in msg and f"Fix: set {named} as documented" in msg, msg


@pytest.mark.parametrize("cfg, says", [
    ({"sasrec": {"hidden": 10, "num_heads": 3}}, "sasrec.num_heads: 3 does not divide hidden=10"),
    ({"evaluate": {"models": ["sasrec"], "shuffle": ["llmsrec"]}}, "evaluate.shuffle: names ['llmsrec']"),
    ({"distill": {"gradient_checkpointing": True}}, "distill.gradient_checkpointing: needs kv_reuse: none"),
    ({"data": {"synthetic": {"num_items": 10}}}, "data.synthetic.num_items: 10 items for 20 topics"),
    ({"orchestration": {"drift": {"new_items": {"hold": 0.1}}}}, "orchestration.drift.new_items.hold: 0.1 is below "
                                                                 "flag 0.2"),
    ({"data": {"synthetic": {"min_length": 9, "max_length": 8}}}, "data.synthetic.min_length: 9 is above"),
])
def test_rules_between_keys_name_the_key_to_change(cfg, says):
    with pytest.raises(ConfigError) as e:
        parse_params(cfg)
    assert says in str(e.value) and "Fix: " in str(e.value)


def test_every_problem_in_the_file_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        parse_params({"gate": {"min_ndcg": 0.1}, "distill": {"lr": 0}})
    assert "unknown key 'gate.min_ndcg'" in str(e.value) and "distill.lr = 0" in str(e.value)


def test_an_empty_section_takes_the_defaults_and_an_unquoted_date_is_read():
    params = yaml.safe_load("package:\ndata:\n  synthetic:\norchestration:\n  start_date: 2024-06-30\n")
    p = parse_params(params)
    assert p.package == Params().package and p.data.synthetic == Params().data.synthetic
    assert p.orchestration.start_date == "2024-06-30"
    assert p.orchestration.start_datetime == dt.datetime(2024, 6, 30, tzinfo=dt.UTC)


def test_params_are_frozen():
    p = Params()
    with pytest.raises(ValueError, match="frozen"):
        p.distill.lr = 1.0  # type: ignore[misc]


def test_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("distill:\n  lr: [1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: is not valid YAML \(line \d+\)"):
        load_params(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- seed\n")
    with pytest.raises(ConfigError, match="the top level is a list, not a mapping of sections"):
        load_params(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert load_params(tmp_path / "empty.yaml") == Params()


def test_check_command(tmp_path, capsys):
    main(["--params", str(REPO / "params.yaml")])
    assert "params.yaml: valid" in capsys.readouterr().out
    (tmp_path / "params.yaml").write_text("sasrec:\n  hiden: 32\n")
    with pytest.raises(SystemExit) as e:
        main(["--params", str(tmp_path / "params.yaml")])
    assert e.value.code == 1
    assert "ERROR [config]" in capsys.readouterr().err
    main(["--schema"])
    assert '"DistillParams"' in capsys.readouterr().out


def test_a_checkpoint_keeps_its_own_architecture(tmp_path):
    """A SASRec checkpoint stores every architecture key, so it loads as trained whatever params.yaml says now."""
    import json

    from components.llm.checkpoints import load_checkpoint
    from components.models import SASRec, SASRecConfig

    model = SASRec(SASRecConfig(hidden=8, max_len=4, loss="bce"), ["a", "b", "c"], "h")
    model.save(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert set(meta["config"]) == {f.name for f in fields(SASRecConfig)}
    loaded = load_checkpoint(tmp_path)
    assert loaded.config == model.config and loaded.config.loss == "bce"  # not today's default (ce)


def _numeric_schemas(schema: dict, where: str):
    """(key path, JSON Schema) of every integer or number a property can hold, through anyOf."""
    for sub in schema.get("anyOf", [schema]):
        if sub.get("type") in ("integer", "number"):
            yield where, sub


def test_every_number_in_the_schema_has_both_bounds():
    """An unbounded number passes the schema and then overflows whatever reads it (a seed above ~1.8e13 in
    torch.manual_seed, 10**12 negatives in prepare's allocation): each number is bounded on both sides."""
    schema = Params.model_json_schema()
    unbounded = []
    for model in [schema, *schema["$defs"].values()]:
        for key, prop in model.get("properties", {}).items():
            for where, sub in _numeric_schemas(prop, f"{model['title']}.{key}"):
                keys = set(sub)
                if not ({"minimum", "exclusiveMinimum"} & keys and {"maximum", "exclusiveMaximum"} & keys):
                    unbounded.append(where)
    assert not unbounded, unbounded


@pytest.mark.parametrize("key", ["seed", "sasrec.seed", "distill.seed", "evaluate.shuffle_seed"])
def test_a_seed_the_code_cannot_hold_is_refused(key):
    seed = 18_446_744_073_710  # just above (2**64 - 1) / 1_000_003, training's per-step seed factor
    with pytest.raises(ConfigError) as e:
        parse_params(_nest(key, seed))
    msg = str(e.value)
    assert f"{key} = {seed}: input should be less than or equal to {MAX_SEED}" in msg, msg
    assert f"Fix: set {key} as documented" in msg, msg


def test_the_largest_seed_trains(tmp_path):
    """The seed bound is one the code holds: SASRec's real training loop runs with it (each step seeds its
    dropout masks with seed * 1_000_003 + step)."""
    from components.stages.pretrain_sasrec import train
    from tests.model.conftest import make_prepared

    prepared = make_prepared(tmp_path)  # the model tests' data: 400 users, 200 items
    sasrec = {"hidden": 8, "num_blocks": 1, "max_len": 8, "batch_size": 32, "epochs": 1, "threads": 1}
    _, result, summary = train(parse_params({"seed": MAX_SEED, "sasrec": sasrec}), prepared, None,
                               log=lambda *_: None)
    assert result.progress.step >= 1 and summary["epochs"] == 1


def test_negatives_beyond_the_catalogue_are_refused_before_any_allocation():
    """10**12 negatives is refused by the schema. One the schema allows (an int32 catalogue's worth) but the
    catalogue cannot give is refused by prepare before it allocates [users, K] (858 TB here)."""
    from components.stages.prepare import sample_candidates

    with pytest.raises(ConfigError, match=r"candidates\.num_negatives = 1000000000000: input should be less than"):
        parse_params({"candidates": {"num_negatives": 10**12}})
    users = 100_000
    seqs = [np.array([1, 2, 3])] * users
    ids = np.array([f"u{i}" for i in range(users)])
    with pytest.raises(ConfigError, match=r"candidates.num_negatives=2147483646 but user 'u0' has only 47 never-"):
        sample_candidates(seqs, 50, MAX_COUNT - 1, np.random.default_rng(0), ids)


def _bomb(levels: int) -> str:
    """The billion-laughs document: each anchor aliases the one before 10 times, 10**levels strings in all."""
    lines = ['a0: &a0 "lol"']
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, levels + 1)]
    return "\n".join(lines) + f"\nseed: *a{levels}\n"


@pytest.mark.parametrize("levels", [5, 9])
def test_an_alias_bomb_is_refused_at_once_in_one_short_line(tmp_path, levels):
    """Before: the bomb loaded (shared references cost nothing), then the error's repr of `seed` walked it:
    10**5 values made a 700 KB line, 10**9 a hang and MemoryError."""
    path = tmp_path / "params.yaml"
    path.write_text(_bomb(levels))
    with pytest.raises(ConfigError) as e:
        load_params(path)
    msg = str(e.value)
    assert len(msg) < 600, msg[:600]
    assert "is refused at 'a4' (line 5): aliases expand '&a4' to 11,111 values (more than 10,000" in msg, msg
    assert "Fix: write the values out instead of aliasing them" in msg


def test_a_few_aliases_still_load(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("orchestration:\n  tasks:\n    distill: &gpu {queue: gpu, pool: gpu, gpus: 1}\n"
                    "    evaluate: *gpu\n    gate:\n      <<: *gpu\n      retries: 0\n")
    tasks = load_params(path).orchestration.tasks
    assert tasks["evaluate"] == tasks["distill"]
    assert tasks["gate"].queue == "gpu" and tasks["gate"].retries == 0


@pytest.mark.parametrize("content, says", [
    # Before: RecursionError, ValueError (Python's int digit limit), a pydantic error per key,
    # a repr of a recursive list, UnicodeDecodeError, and a 1 MiB file read as valid.
    ("seed: " + "[" * 5000 + "]" * 5000 + "\n", "[0][0]' (line 1): nested more than 32 levels deep"),
    ("seed: " + "9" * 5000 + "\n", "is refused at 'seed' (line 1): a number of 5,000 characters"),
    ("".join(f"k{i}: &k{i} {i}\n" for i in range(MAX_ALIASES + 1))
     + "x: [" + ", ".join(f"*k{i}" for i in range(MAX_ALIASES + 1)) + "]\n",
     f"at 'x[100]' (line 102): more than {MAX_ALIASES} aliases"),
    ("a: &a [*a]\nseed: *a\n", "is refused at 'a' (line 1): '&a' contains an alias of itself"),
    (b"seed: 1 # caf\xe9\n", "is not UTF-8 text (byte 0xe9 at offset 13)"),
    ("seed: 1\n" + "#" * MAX_PARAMS_BYTES + "\n", f"is larger than {MAX_PARAMS_BYTES:,} bytes"),
], ids=["deep", "long_number", "many_aliases", "recursive", "not_utf8", "too_large"])
def test_reading_limits_refuse_with_the_file_the_line_and_the_fix(tmp_path, content, says):
    path = tmp_path / "params.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError) as e:
        load_params(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and says in msg and "Fix: " in msg and len(msg) < 600, msg[:600]


def test_a_huge_value_is_shown_cut_with_the_key_and_the_fix():
    """Before: the whole value went into the message (1 MB here; 10**6 shared lists: 7 MB)."""
    nested: object = "lol"
    for _ in range(6):
        nested = [nested] * 10
    cases = [("x" * 10**6, "seed = 'xxxxxxxx"), (nested, "seed = [[[...], [...], [...], [...], ...], ")]
    for value, shown in cases:
        with pytest.raises(ConfigError) as e:
            parse_params({"seed": value})
        msg = str(e.value)
        assert len(msg) < 400 and shown in msg and "Fix: set seed as documented" in msg, msg[:400]


def test_every_error_is_capped_and_keeps_its_fix(capsys):
    """Any value that reaches an error (a row, a file name) is cut, and the fix is never cut off."""
    err = DataError("d" * 10**5, "p" * 10**6, "f" * 10**5)
    assert len(err.subject) <= MAX_SUBJECT and len(err.problem) <= MAX_PROBLEM and len(err.fix) <= MAX_FIX
    assert err.problem.endswith(" ... [cut: 1,000,000 characters in all]") and ". Fix: fff" in str(err)

    @stage_main("demo")
    def fails():
        raise err

    with pytest.raises(SystemExit):
        fails()
    line = capsys.readouterr().err
    assert line.startswith("ERROR [demo] ddd") and line.count("\n") == 1
    assert len(line) <= MAX_SUBJECT + MAX_PROBLEM + MAX_FIX + 30


def test_the_bounds_are_values_the_code_holds():
    """What each MAX_* comment claims of the code that reads it."""
    import torch

    from components.config import MAX_FLOAT32, MAX_RETRIES

    torch.Generator().manual_seed(MAX_SEED * 1_000_003 + 10**12)  # training.py's step seed, 10**12 steps in
    np.random.seed(MAX_SEED)
    latest = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=MAX_SECONDS)  # OverflowError past year 9999
    assert latest.year < 9999
    assert dt.timedelta(minutes=MAX_MINUTES) <= dt.timedelta(seconds=MAX_SECONDS)
    assert float(torch.tensor(MAX_FLOAT32, dtype=torch.float32)) == MAX_FLOAT32
    assert 2 * MAX_RETRIES + 1 <= MAX_COUNT == np.iinfo(np.int32).max
