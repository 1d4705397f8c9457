"""The before/after page compares the right numbers and names a wrong folder."""
import json

import pytest

from src.evaluation.before_after import comparison_rows, render


def _run(tmp_path, name, metrics):
    d = tmp_path / name
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps(metrics))
    (d / "report.html").write_text("<html></html>")
    return d


def test_rows_pair_splits_and_edit_types(tmp_path):
    before = {"iid/acc@1": 0.9, "ood/acc@1": 0.2, "oracle/edit_type=background/delta_acc@1": -0.4,
              "oracle/edit_type=background/delta_acc@1/ci_low": -0.45, "oracle/edit_type=background/delta_acc@1/ci_high": -0.35,
              "oracle/edit_type=domain/delta_acc@1": -0.01}
    after = {"iid/acc@1": 0.88, "ood/acc@1": 0.5, "oracle/edit_type=background/delta_acc@1": -0.1,
             "oracle/edit_type=background/delta_acc@1/ci_low": -0.12, "oracle/edit_type=background/delta_acc@1/ci_high": -0.08}
    splits, edits = comparison_rows(before, after)
    assert splits == [("iid", 0.9, 0.88), ("ood", 0.2, 0.5)]
    assert edits == [("oracle", "background", -0.4, (-0.45, -0.35), -0.1, (-0.12, -0.08))]  # domain only before
    out = render(_run(tmp_path, "b", before), _run(tmp_path, "a", after), tmp_path / "page" / "ba.html")
    page = out.read_text()
    assert "+30.0" in page and "-2.0" in page and "../b/report.html" in page


def test_missing_run_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        render(tmp_path / "nowhere", tmp_path / "x", tmp_path / "o.html")
