"""`python -m components.summary`, the last line of `make run`: what it prints from the stages' reports."""

from components.io import write_json
from components.summary import main


def test_shuffle_change_is_signed(tmp_path, capsys):
    write_json(tmp_path / "data_summary.json", {"users": 600, "items": 400, "interactions": 11861})
    write_json(tmp_path / "validation.json", {"rows_quarantined": {"interactions": 0, "items": 0}})
    write_json(tmp_path / "metrics.json", {
        "sasrec": {"ndcg@10": 0.6959}, "sasrec_shuffled": {"ndcg@10": 0.137, "shuffle_drop": {"ndcg@10": 0.803}},
        # shuffling helped this one: its drop is negative, so the NDCG went up
        "llmsrec": {"ndcg@10": 0.0577}, "llmsrec_shuffled": {"ndcg@10": 0.0601, "shuffle_drop": {"ndcg@10": -0.043}},
        "popularity": {"ndcg@10": 0.1053}})
    main(["--reports", str(tmp_path)])
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("test NDCG@10"))
    assert "sasrec 0.6959 (shuffled -80.3%)" in line
    assert "llmsrec 0.0577 (shuffled +4.3%)" in line
    assert "popularity 0.1053" in line and "popularity 0.1053 (" not in line


def test_the_gate_line_shows_the_gate_s_decision(tmp_path, capsys):
    """A first model that failed a check but is released as provisional is not shown as rejected: the line
    is the gate's own decision, with the checks that failed."""
    write_json(tmp_path / "data_summary.json", {"users": 600, "items": 400, "interactions": 11861})
    write_json(tmp_path / "validation.json", {"rows_quarantined": {"interactions": 0, "items": 0}})
    checks = {"ndcg@10_floor": {"value": 0.01, "threshold": 0.05, "passed": False},
              "shuffle_drop": {"value": 0.2, "threshold": 0.0, "passed": True}}
    for decision in ("provisional", "rejected"):
        write_json(tmp_path / "gate.json", {"decision": decision, "passed": False, "checks": checks})
        main(["--reports", str(tmp_path)])
        line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("gate:"))
        assert line == f"gate: {decision} (ndcg@10_floor 0.01 < 0.05)"
    write_json(tmp_path / "gate.json", {"decision": "promoted", "passed": True, "checks": {"shuffle_drop": checks["shuffle_drop"]}})
    main(["--reports", str(tmp_path)])
    assert "gate: promoted" in capsys.readouterr().out.splitlines()
