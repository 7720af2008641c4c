"""A damaged SASRec checkpoint is a CheckpointError naming the file and the fix: never a safetensors,
JSON or torch shape traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from components.errors import CheckpointError, DataError
from components.llm.checkpoints import load_checkpoint
from components.models import SASRec, SASRecConfig
from tests.conftest import edit_config, garble, truncate

IDS = [f"item{i}" for i in range(1, 31)]


def sasrec(ids: list[str] = IDS, **kw) -> SASRec:
    torch.manual_seed(0)
    return SASRec(SASRecConfig(**{"hidden": 16, "max_len": 8, **kw}), ids, "hash0")


def weights_of(other: SASRec):
    def swap(path: Path) -> None:
        save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    return swap


def drop_tensor(path: Path) -> None:
    weights = load_file(str(path))
    weights.pop("final_norm.weight")
    save_file(weights, str(path))


DAMAGE = {
    "weights truncated": ("model.safetensors", truncate, "truncated or damaged"),
    "weights garbage": ("model.safetensors", garble, "not a readable safetensors file"),
    "weights empty": ("model.safetensors", lambda p: p.write_bytes(b""), "not a readable safetensors file"),
    "weights of a wider model": ("model.safetensors", weights_of(sasrec(hidden=32)),
                                 r"item_emb.weight \[31, 32\] \(the config needs \[31, 16\]\)"),
    "weights of another catalogue": ("model.safetensors", weights_of(sasrec(IDS[:20])),
                                     r"item_emb.weight \[21, 16\] \(the config needs \[31, 16\]\)"),
    "weights of a deeper model": ("model.safetensors", weights_of(sasrec(num_blocks=3)), r"unexpected \['blocks.2"),
    "a tensor missing": ("model.safetensors", drop_tensor, r"missing \['final_norm.weight'\]"),
    "weights deleted": ("model.safetensors", Path.unlink, "checkpoint file not found"),
    "config deleted": ("config.json", Path.unlink, "checkpoint file not found"),
    "config garbage": ("config.json", garble, "is not valid JSON"),
    "config truncated": ("config.json", truncate, "is not valid JSON"),
    "config nested past the parser": ("config.json", lambda p: p.write_text("[" * 5000 + "]" * 5000),
                                      "is not valid JSON"),
    "config not an object": ("config.json", lambda p: p.write_text("[1, 2]"), "unknown checkpoint format"),
    "config without num_items": ("config.json", edit_config(lambda m: m.pop("num_items")), "num_items"),
    "config with an unknown key": ("config.json", edit_config(lambda m: m["config"].update(width=3)),
                                   "does not build a sasrec model.*width"),
    "config with a bad value": ("config.json", edit_config(lambda m: m["config"].update(hidden=0)),
                                "does not build a sasrec model.*sasrec.hidden = 0"),
    "item ids garbage": ("item_ids.json", garble, "is not valid JSON"),
    "item ids not strings": ("item_ids.json", lambda p: p.write_text(json.dumps(list(range(30)))),
                             "not a list of item id strings"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
@pytest.mark.parametrize("loader", [load_checkpoint, SASRec.load], ids=["load_checkpoint", "SASRec.load"])
def test_damaged_sasrec_checkpoint_names_the_file_and_the_fix(tmp_path, damage, loader):
    name, spoil, says = DAMAGE[damage]
    ckpt = sasrec().save(tmp_path / "ckpt")
    spoil(ckpt / name)
    with pytest.raises(CheckpointError, match=says) as caught:
        loader(ckpt)
    err = caught.value
    assert isinstance(err, DataError)  # stage_main turns it into one ERROR line, like every data problem
    assert err.subject == str(ckpt / name) and "Fix:" in str(err) and err.fix
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)  # no library traceback


def test_the_undamaged_checkpoint_still_loads(tmp_path):
    """The checks refuse damage only: the same checkpoint, untouched, loads with identical weights."""
    m = sasrec()
    back = load_checkpoint(m.save(tmp_path / "ckpt"))
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in m.state_dict().items())
