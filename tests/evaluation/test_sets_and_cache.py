"""Reading generated sets (bad rows named or skipped), classifier loading, the prediction cache."""
import numpy as np
import pandas as pd
import pytest

from src.evaluation.classifier import load_classifier
from src.evaluation.predictions import Predictor
from src.evaluation.sets import BadRowsError, manifest_paired_set
from src.evaluation.stress_test import parse_set_entry


def test_manifest_pairs_edits_sources_and_reconstructions(tiny_set):
    ps = manifest_paired_set(tiny_set, num_classes=3, name="LANCE")
    assert len(ps.sources) == 4 and len(ps.edits) == 8 and len(ps.reconstructions) == 4
    assert ps.edit_types == ["background", "domain"]  # rejected rows and reconstructions are not edits
    # every edit points at its own source and that source's reconstruction
    src_ids = ps.sources.ids[ps.source_index]
    assert (src_ids == ps.edits.records["source_id"].to_numpy()).all()
    assert (ps.reconstructions.records["source_id"].to_numpy()[ps.reconstruction_index] == src_ids).all()
    assert ps.edits.load([0]).shape == (1, 8, 8, 3)


def _corrupt(folder):
    df = pd.read_parquet(folder / "manifest.parquet")
    df.loc[1, "label"] = 7                       # out of range
    df.loc[2, "image_path"] = "../../etc/passwd"  # escapes the folder
    (folder / df.loc[6, "image_path"]).unlink()  # missing image
    df.to_parquet(folder / "manifest.parquet", index=False)
    return df


def test_bad_rows_are_named(tiny_set):
    df = _corrupt(tiny_set)
    with pytest.raises(BadRowsError) as err:
        manifest_paired_set(tiny_set, num_classes=3)
    msg = str(err.value)
    assert "3 bad rows" in msg
    for row in (1, 2, 6):
        assert f"row {row} (id={df.loc[row, 'id']})" in msg
    assert "out of range" in msg and "escapes the set folder" in msg and "missing" in msg
    assert "on_bad_row=skip" in msg


def test_bad_rows_skipped_and_counted(tiny_set):
    _corrupt(tiny_set)
    ps = manifest_paired_set(tiny_set, num_classes=3, on_bad_row="skip")
    assert ps.skipped == {"label": 1, "path": 1, "missing": 1, "rows": 3}
    assert len(ps.edits) + len(ps.reconstructions) == 12 - 3


def test_source_outside_folder_needs_source_root(tmp_path, tiny_set):
    df = pd.read_parquet(tiny_set / "manifest.parquet")
    df["source_path"] = str(tiny_set / "sources") + "/" + df["source_id"] + ".png"
    outside = tmp_path / "elsewhere"
    (tiny_set / "sources").rename(outside)
    df["source_path"] = str(outside) + "/" + df["source_id"] + ".png"
    df.to_parquet(tiny_set / "manifest.parquet", index=False)
    with pytest.raises(BadRowsError, match="evaluation.source_root"):
        manifest_paired_set(tiny_set, num_classes=3)
    assert len(manifest_paired_set(tiny_set, num_classes=3, source_root=outside).sources) == 4


def test_set_entry_names():
    assert parse_set_entry("LANCE:/data/sets/a") == ("LANCE", "/data/sets/a")
    assert parse_set_entry("LANCE-R=/x") == ("LANCE-R", "/x")
    assert parse_set_entry("/data/sets/a") == (None, "/data/sets/a")


def test_classifier_rebuilt_from_safetensors_and_cache_reused(tmp_path, tiny_set, make_classifier):
    clf = load_classifier(str(make_classifier(tmp_path / "clf.safetensors")), None, None)
    assert clf.class_names == ["c0", "c1", "c2"] and clf.data_config["input_size"] == (3, 8, 8)
    ps = manifest_paired_set(tiny_set, num_classes=3)
    pred = Predictor(clf, batch_size=3, device="cpu", cache_dir=tmp_path / "cache")
    first = pred.predict(ps.edits)
    assert pred.computed == 8 and np.allclose(first.probs.sum(1), 1, atol=1e-5)
    pred.save_cache()
    again = Predictor(clf, batch_size=3, device="cpu", cache_dir=tmp_path / "cache")
    second = again.predict(ps.edits)
    assert again.computed == 0 and again.cached == 8
    np.testing.assert_allclose(second.probs, first.probs, atol=1e-6)
    again.predict(ps.sources)  # a new set: only its images run
    assert again.computed == 4
    # Other weights -> another model hash -> nothing reused.
    other = load_classifier(str(make_classifier(tmp_path / "b.safetensors", seed=1)), None, None)
    assert other.fingerprint != clf.fingerprint
