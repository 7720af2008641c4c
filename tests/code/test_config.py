"""params.yaml's schema: the file validates, the code's defaults are its values, and every section refuses
an unknown key and a bad value, naming the key and the fix."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, fields

import pytest
import yaml

from components.config import (
    SYNTHETIC_TOPICS,
    LandingParams,
    Params,
    SASRecParams,
    load_params,
    main,
    parse_params,
)
from components.errors import ConfigError
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
    train = TrainOptions()
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
                                          r"takes seed, data, validate, eval"):
        parse_params({"distil": {}})


BAD_VALUES = [  # (key path, value, what the error says)
    ("seed", -1, "greater than or equal to 0"),
    ("data.source", "csv", "input should be 'synthetic', 'movielens', 'amazon2023' or 'files'"),
    ("data.min_user_interactions", 2, "greater than or equal to 3"),
    ("data.columns", {"itemid": "movie_id"}, "input should be 'user_id', 'item_id'"),
    ("data.sha256", "abc", "should match pattern"),
    ("data.synthetic.num_topics", SYNTHETIC_TOPICS + 1, f"less than or equal to {SYNTHETIC_TOPICS}"),
    ("validate.max_bad_fraction", 1.5, "less than or equal to 1"),
    ("eval.num_negatives", 0, "greater than or equal to 1"),
    ("eval.num_negatives", True, "valid integer"),
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
    ("orchestration.landing.poll_seconds", 0, "greater than 0"),
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

    from components.models import SASRec, SASRecConfig, load_checkpoint

    model = SASRec(SASRecConfig(hidden=8, max_len=4, loss="bce"), ["a", "b", "c"], "h")
    model.save(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert set(meta["config"]) == {f.name for f in fields(SASRecConfig)}
    loaded = load_checkpoint(tmp_path)
    assert loaded.config == model.config and loaded.config.loss == "bce"  # not today's default (ce)
