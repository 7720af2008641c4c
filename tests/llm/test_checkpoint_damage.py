"""A damaged LLM-SRec checkpoint is a CheckpointError naming the file and the fix, never a safetensors,
JSON or shape traceback. Tiny random-weight Llama (tests/llm/conftest.py)."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from components.config import DistillParams
from components.data.sequences import Prepared
from components.errors import CheckpointError, DataError
from components.llm.model import LLMSRec
from components.stages.distill import build_model
from tests.conftest import edit_config, garble, truncate
from tests.llm.conftest import paper


@pytest.fixture(scope="module")
def saved(prepared_dir, teacher, tiny_backbone, tmp_path_factory):
    """An LLM-SRec checkpoint with its item table, saved once; each test damages its own copy."""
    data = Prepared.load(prepared_dir)
    torch.manual_seed(1)
    titles = [""] + [f"title {i}" for i in range(1, data.num_items + 1)]
    model = build_model(data, copy.deepcopy(teacher), tiny_backbone, paper(), titles)
    model.build_item_table(64)
    return model, model.save(tmp_path_factory.mktemp("llmsrec") / "ckpt")


def narrower_adapters(model: LLMSRec):
    """Adapters of the same model with another f_user/f_item width (proj_hidden 64, not 2048)."""
    def swap(path: Path) -> None:
        other = LLMSRec(replace(model.config, proj_hidden=64), model.sasrec, model.backbone,
                        model.prompts.titles, model.item_ids, model.item_mapping_hash)
        save_file({k: v.contiguous() for k, v in other.adapters.state_dict().items()}, str(path))
    return swap


def table_rows(n: int):
    def cut(path: Path) -> None:
        save_file({"item_table": load_file(str(path))["item_table"][:n].contiguous()}, str(path))
    return cut


DAMAGE = {
    "adapters truncated": ("adapters.safetensors", truncate, "truncated or damaged"),
    "adapters garbage": ("adapters.safetensors", garble, "not a readable safetensors file"),
    "adapters of another width": ("adapters.safetensors", None, r"f_user.0.weight \[64, 32\] \(the config needs "
                                                                r"\[2048, 32\]\)"),
    "adapters deleted": ("adapters.safetensors", Path.unlink, "checkpoint file not found"),
    "item table truncated": ("item_table.safetensors", truncate, "truncated or damaged"),
    "item table of another catalogue": ("item_table.safetensors", table_rows(10), r"item table of shape \[10, 128\]"),
    "item table renamed inside": ("item_table.safetensors",
                                  lambda p: save_file({"table": torch.zeros(3)}, str(p)), "item table of shape none"),
    "config deleted": ("config.json", Path.unlink, "checkpoint file not found"),
    "config garbage": ("config.json", garble, "is not valid JSON"),
    "config not a checkpoint config": ("config.json", lambda p: p.write_text('{"model": "llmsrec"}'),
                                       "is not an LLM-SRec checkpoint config"),
    "config with an unknown key": ("config.json", edit_config(lambda m: m["config"].update(widht=3)),
                                   "does not build LLM-SRec.*widht"),
    "config with a bad value": ("config.json", edit_config(lambda m: m["config"].update(readout="middle")),
                                "does not build LLM-SRec.*readout = 'middle'"),
    "titles garbage": ("titles.json", garble, "is not valid JSON"),
    "titles short": ("titles.json", lambda p: p.write_text(json.dumps(["", "one"])), "2 titles for"),
    "item ids truncated": ("item_ids.json", truncate, "is not valid JSON"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_damaged_llmsrec_checkpoint_names_the_file_and_the_fix(saved, tmp_path, damage):
    model, original = saved
    name, spoil, says = DAMAGE[damage]
    ckpt = Path(shutil.copytree(original, tmp_path / "ckpt"))
    (spoil or narrower_adapters(model))(ckpt / name)
    with pytest.raises(CheckpointError, match=says) as caught:
        LLMSRec.load(ckpt, sasrec=model.sasrec, backbone=model.backbone)
    err = caught.value
    assert isinstance(err, DataError) and err.subject == str(ckpt / name) and "Fix:" in str(err)
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)  # no library traceback


def test_a_damaged_teacher_is_named_too(saved, tmp_path):
    """LLM-SRec finds its SASRec teacher by path: a truncated teacher is the teacher's file's error."""
    model, original = saved
    ckpt = Path(shutil.copytree(original, tmp_path / "ckpt"))
    teacher = model.sasrec.save(tmp_path / "sasrec")
    truncate(teacher / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated or damaged"):
        LLMSRec.load(ckpt, backbone=model.backbone, sasrec_dir=teacher)


def test_the_undamaged_checkpoint_still_loads(saved):
    model, original = saved
    loaded = LLMSRec.load(original, sasrec=model.sasrec, backbone=model.backbone)
    torch.testing.assert_close(loaded.item_table, model.item_table)
    assert all(torch.equal(loaded.adapters.state_dict()[k], v) for k, v in model.adapters.state_dict().items())


def test_an_older_checkpoint_loads_through_the_named_migrations(saved, tmp_path):
    """A checkpoint written before the later config fields existed, with `item_prefix_cache` (before
    `kv_reuse`) and the teacher recorded as `cfsrec`, loads as the model it was: each missing field takes
    the value of CHECKPOINT_DEFAULTS, each renamed key goes through its migration."""
    from components.llm.model import (
        CHECKPOINT_DEFAULTS,
        MIGRATIONS,
        item_prefix_cache_to_kv_reuse,
        rename_cfsrec,
    )

    model, original = saved
    ckpt = Path(shutil.copytree(original, tmp_path / "ckpt"))
    meta = json.loads((ckpt / "config.json").read_text())
    old = {k: v for k, v in meta["config"].items() if CHECKPOINT_DEFAULTS.get(k, object()) != v or k == "backbone"}
    dropped = set(meta["config"]) - set(old)
    assert {"user_slot", "cf_dropout", "llm_pass", "center", "logq_correction"} <= dropped  # paper() is the paper
    old.pop("kv_reuse", None)
    old.pop("kv_cache_mb")  # a run-only knob: params' default stands in for it
    old["item_prefix_cache"] = True
    meta["config"] = old
    meta["cfsrec"] = meta.pop("sasrec")
    (ckpt / "config.json").write_text(json.dumps(meta))

    loaded = LLMSRec.load(ckpt, sasrec=model.sasrec, backbone=model.backbone)
    assert replace(loaded.config, kv_reuse=model.config.kv_reuse) == model.config
    assert loaded.config.kv_reuse == "opening"  # the same math as item_prefix_cache did
    assert loaded.config.kv_cache_mb == DistillParams().kv_cache_mb
    torch.testing.assert_close(loaded.item_table, model.item_table)
    assert MIGRATIONS == (rename_cfsrec, item_prefix_cache_to_kv_reuse)
    untouched = {"sasrec": {"path": "x"}, "cfsrec": {"path": "y"}, "config": {"kv_reuse": "none"}}
    for migrate in MIGRATIONS:  # a current config.json passes through unchanged
        migrate(untouched)
    assert untouched == {"sasrec": {"path": "x"}, "cfsrec": {"path": "y"}, "config": {"kv_reuse": "none"}}


def test_a_checkpoint_value_outside_the_schema_is_refused_with_its_key(saved, tmp_path):
    """The model's config is checked by params `distill`'s schema (one set of rules): a value no params file
    could hold is a CheckpointError naming the key, before the LLM loads."""
    model, original = saved
    ckpt = Path(shutil.copytree(original, tmp_path / "ckpt"))
    edit_config(lambda m: m["config"].update(kv_cache_mb=-1))(ckpt / "config.json")
    with pytest.raises(CheckpointError, match=r"does not build LLM-SRec.*distill.kv_cache_mb = -1"):
        LLMSRec.load(ckpt, sasrec=model.sasrec, backbone=model.backbone)
