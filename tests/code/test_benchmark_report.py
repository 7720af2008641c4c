"""docs/benchmarks.md is rendered from the results JSON, and says whether the target is met."""

from __future__ import annotations

import json

from benchmarks.report import render


def result(ndcg: float, hr: float) -> dict:
    m = {"ndcg@10": ndcg, "hr@10": hr, "ndcg@20": ndcg + 0.02, "hr@20": hr + 0.05, "n_users": 6040}
    return {"popularity": {**m, "ndcg@10": 0.25}, "cfsrec": {**m, "full_catalogue": {**m, "ndcg@10": 0.1}},
            "cfsrec_shuffled": {**m, "shuffle_drop": {"ndcg@10": 0.123}},
            "seconds": {"ingest": 2.0, "pretrain_cfsrec": 600.0}, "epochs": 40, "seconds_per_epoch": 15.0,
            "peak_rss_mb": 1234.5, "training": {"cfsrec": {"epochs": 40, "best_epoch": 35, "best_valid_ndcg@10": 0.61,
                                                          "stopped": "early stop", "resumed_after_epoch": 30,
                                                          "train_seconds": 600}}, "params": {"cfsrec": {"loss": "ce", "max_len": 200}},
            "data": {"users": 6040, "items": 3416, "interactions": 999611}, "command": "python -m benchmarks.quality"}


def test_render_tables_from_results(tmp_path):
    (tmp_path / "quality_ml1m.json").write_text(json.dumps(result(0.6012, 0.8311)))
    (tmp_path / "quality_ml1m_bce.json").write_text(json.dumps(result(0.5512, 0.8011)))
    doc = render(tmp_path)
    assert "| cfsrec | 0.6012 | 0.8311 | 0.6212 | 0.8811 | 6,040 | 0.1000 | 0.8311 |  |" in doc
    assert "| cfsrec_shuffled |" in doc and "| 12.3% |" in doc
    assert "ndcg@10 +0.0107, hr@10 +0.0066; meets the issue's bar" in doc
    assert "ndcg@10 -0.0393, hr@10 -0.0234; does not meet" in doc
    assert "40 epochs at 15.0 s/epoch" in doc and "peak RSS 1,234 MB" in doc
    assert "resumed after epoch 30" in doc and "all 40 epochs took 10 min" in doc
    assert "best validation NDCG@10 0.6100 at epoch 35 of 40" in doc
    assert doc.index("## quality_ml1m\n") < doc.index("## quality_ml1m_bce\n")
