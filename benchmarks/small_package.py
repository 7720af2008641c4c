"""A small LLM-SRec, gated and packaged into a BentoML home by the real `gate` and `package` stages.

Two users:
- the serving tests, on the real SmolLM2 backbone (the service loads the default backbone by name);
- `python -m benchmarks.serving --tiny-llm`, on a 2-layer random-weight Llama with SmolLM2's tokenizer:
  its LLM pass takes a few milliseconds, so what that benchmark measures is the serving stack itself
  (HTTP hops, validation, the batcher), which a 135M-parameter pass on a CPU hides.

The adapters are untrained and no quality is claimed: this is a fixture for serving, not a model. The
data is the project's synthetic generator, prepared and evaluated by the pipeline's own functions.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GATE_ARGS = ("--metrics", "reports/metrics.json", "--per-user", "reports/per_user.parquet", "--prepared",
             "data/prepared", "--out", "reports/gate.json")
PACKAGE_ARGS = ("--gate", "reports/gate.json", "--metrics", "reports/metrics.json", "--prepared", "data/prepared",
                "--sasrec", "models/sasrec", "--llmsrec", "models/llmsrec", "--out", "reports/package.json")
# A gate every fixture model passes (nothing in it is trained), so `package` always promotes it.
OPEN_GATE = {"model": "llmsrec", "min_ndcg_at_10": 0.0, "min_lift_over_popularity": None, "min_shuffle_drop": None,
             "max_regression": 0.02, "champion_users": None, "first_model": "provisional"}


@contextmanager
def one_torch_thread():
    """Torch on one thread while the fixture is built (a shared 2-core machine: threads only contend)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_outputs(root: Path, backbone, *, num_users: int, num_items: int, num_topics: int, max_length: int,
                  num_negatives: int, max_users: int, params: dict) -> Path:
    """What `dvc repro` leaves before `gate` in `root`: prepared data, a SASRec and an LLM-SRec checkpoint
    on `backbone` (a loaded components.llm.backbone.Backbone), `evaluate`'s reports, and params.yaml."""
    import torch
    import yaml

    from components.config import CandidateParams, DataParams, DistillParams, SyntheticParams
    from components.data.sequences import Prepared
    from components.data.sources.synthetic import generate
    from components.io import write_json, write_parquet
    from components.llm.model import LLMSRec, LLMSRecConfig
    from components.models import Popularity
    from components.models.sasrec import SASRec, SASRecConfig
    from components.stages.evaluate import evaluate
    from components.stages.prepare import prepare

    with one_torch_thread():
        inter, items = generate(SyntheticParams(num_users=num_users, num_items=num_items, num_topics=num_topics,
                                                max_length=max_length), seed=3)
        res = prepare(inter, items, DataParams(), CandidateParams(num_negatives=num_negatives, max_users=max_users), seed=3)
        prepared = root / "data" / "prepared"
        for name in ("items", "users", "sequences", "candidates"):
            write_parquet(res[name], prepared / f"{name}.parquet")
        write_json(prepared / "meta.json", res["summary"])
        data = Prepared.load(prepared)

        torch.manual_seed(0)
        sasrec = SASRec(SASRecConfig(hidden=16, max_len=20), data.item_ids, data.item_mapping_hash).eval()
        sasrec.save(root / "models" / "sasrec")
        titles = [""] + res["items"].sort_values("idx")["title"].tolist()
        # The paper's setting: token readout, no title states (nothing here is trained, so nothing to gain).
        paper = DistillParams(prompt="paper", readout="token", negatives="sampled", num_negatives=3, text_layer=None,
                              cf_dropout=0.0)
        model = LLMSRec(LLMSRecConfig.from_params(paper, backbone), sasrec, backbone, titles, data.item_ids,
                        data.item_mapping_hash, sasrec_path="models/sasrec").eval()
        model.build_item_table(64)
        model.save(root / "models" / "llmsrec")

        pop = Popularity.fit(data.train_items(), data.item_ids, data.item_mapping_hash)
        metrics, per_user = evaluate(data, {"popularity": pop, "sasrec": sasrec, "llmsrec": model},
                                     ["sasrec", "llmsrec"], seed=3, log=lambda *_: None)
    write_json(root / "reports" / "metrics.json", metrics)
    write_parquet(per_user, root / "reports" / "per_user.parquet")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def tiny_llm(directory: Path) -> Path:
    """A 2-layer, 64-wide random-weight Llama with SmolLM2's tokenizer (same prompts, same token counts)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from components.llm.backbone import load_backbone

    tokenizer = load_backbone("smollm2-135m", device="cpu").tokenizer
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def stage_env(home: Path) -> dict:
    """The environment a stage runs in under DVC, with BentoML's store at `home` (one thread: 2-core VM)."""
    env = dict(os.environ, BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="True", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("LLMSREC_MODEL_TAG", None)
    return env


def run_stage(ws: Path, home: Path, module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A stage as DVC runs it: its module's CLI, in the workspace, with the store at `home`."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ws, env=env or stage_env(home),
                          capture_output=True, text=True, timeout=300)


def tiny_home(workdir: Path) -> Path:
    """A BentoML home (workdir/bentoml) whose production model runs on a tiny random LLM."""
    from components.llm.backbone import load_backbone

    llm = tiny_llm(workdir / "tiny-llm")
    build_outputs(workdir / "ws", load_backbone(str(llm), device="cpu"), num_users=200, num_items=400,
                  num_topics=8, max_length=40, num_negatives=99, max_users=50,
                  params={"seed": 3, "gate": OPEN_GATE, "package": {"include_backbone": True},
                          "llm": {"backbone": str(llm), "device": "cpu", "dtype": "auto"}})
    home = workdir / "bentoml"
    for module, args in (("components.stages.gate", GATE_ARGS), ("components.stages.package", PACKAGE_ARGS)):
        out = run_stage(workdir / "ws", home, module, *args)
        if out.returncode != 0:
            raise RuntimeError(f"{module} exited {out.returncode}:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return home
