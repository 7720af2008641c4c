"""The real ML-1M sequences from ../shared/data through the `files` source and the real stages."""

from __future__ import annotations

import pytest

from components.config import CandidateParams, DataParams, ValidateParams
from components.data.sources import load_source
from components.data.validation import validate
from components.stages.prepare import prepare
from tests.conftest import shared_dataset


@pytest.mark.slow
def test_ml1m_seqrec_published_counts(tmp_path):
    path = shared_dataset("ml-1m-seqrec")
    data = DataParams(source="files", path=str(path), columns={"item_id": "movie_id"})
    inter, items = load_source(data, 0, tmp_path)
    assert len(inter) == 999_611
    outcome = validate(inter, items, ValidateParams(max_bad_fraction=0.0))
    assert outcome.summary["rows_quarantined"] == {"interactions": 0, "items": 0}
    out = prepare(outcome.interactions, outcome.items, data, CandidateParams(num_negatives=99, max_users=10000), seed=42)
    s = out["summary"]
    assert (s["users"], s["items"], s["interactions"]) == (6040, 3416, 999_611)
    assert s["evaluated_users"] == 6040
    assert s["sequence_length"]["min"] == 18 and s["sequence_length"]["max"] == 2277
    assert "Toy Story (1995)" in out["items"]["title"].tolist()
