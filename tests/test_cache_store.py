"""The feature store contract: round trip, provenance, resume, nested subsets, keys, schema."""
import h5py
import numpy as np
import pytest

from zoomshot.cache import catalog, keys, store
from zoomshot.cache.errors import PipelineError
from zoomshot.cache.subsets import rows_of_subset, subset_indices

ENC = {"family": "timm", "name": "cnn", "model": "test_resnet", "pretrained": "", "options": {}}
DS = {"name": "shapes", "kind": "shapes", "root": "", "options": {"train_size": 100}}


def _write(path, feats, batch, stop_after=None, attrs=None):
    w = store.FeatureWriter(path, feats.shape[1], attrs or {"encoder": "cnn"}, batch, len(feats))
    start = w.items_done
    for i in range(start, len(feats), batch):
        if stop_after is not None and i >= stop_after:
            w.close()
            return None
        sl = slice(i, i + batch)
        w.append(feats[sl], np.arange(len(feats))[sl], np.arange(len(feats))[sl] % 7, len(feats[sl]))
    return catalog.finish(w)


def test_round_trip_keeps_rows_dtype_chunks_and_provenance(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(300, 32)).astype(np.float32)
    path = _write(tmp_path / "a.h5", feats, 64, attrs={"encoder": "cnn", "preprocess": {"size": 64}})
    assert path.exists() and not store.partial_path(path).exists()
    ff = store.read_features(path)
    np.testing.assert_array_equal(ff.features, feats.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(ff.index, np.arange(300))
    np.testing.assert_array_equal(ff.labels, np.arange(300) % 7)
    assert ff.attrs["complete"] and ff.attrs["rows_done"] == 300 and ff.attrs["encoder"] == "cnn"
    assert ff.attrs["schema_version"] == store.SCHEMA_VERSION and ff.attrs["preprocess"] == '{"size": 64}'
    with h5py.File(path) as f:
        assert f["features"].dtype == np.float16 and f["features"].maxshape == (None, 32)
        assert f["features"].chunks[0] * 32 * 2 <= store.CHUNK_BYTES
    assert catalog.verify(path) == []


def test_interrupted_write_resumes_bit_identical(tmp_path):
    feats = np.random.default_rng(1).normal(size=(250, 16)).astype(np.float32)
    whole = _write(tmp_path / "whole.h5", feats, 50)
    assert _write(tmp_path / "part.h5", feats, 50, stop_after=100) is None
    partial = store.partial_path(tmp_path / "part.h5")
    with h5py.File(partial, "r+") as f:   # a kill after rows were written but before they were counted
        f["features"].resize(120, axis=0)
    with pytest.raises(PipelineError, match="resume"):
        store.read_features(tmp_path / "part.h5")
    resumed = _write(tmp_path / "part.h5", feats, 50)
    with h5py.File(whole) as a, h5py.File(resumed) as b:
        for name in ("features", "index", "labels"):
            assert a[name][:].tobytes() == b[name][:].tobytes()
        assert a.attrs["features_sha256"] == b.attrs["features_sha256"]


def test_verify_catches_changed_rows(tmp_path):
    path = _write(tmp_path / "a.h5", np.ones((40, 8), np.float32), 8)
    with h5py.File(path, "r+") as f:
        f["features"][3, 2] = 5.0
    assert any("checksum" in p for p in catalog.verify(path))


def test_nan_features_refused(tmp_path):
    w = store.FeatureWriter(tmp_path / "n.h5", 4, {}, 2)
    with pytest.raises(PipelineError, match="non-finite"):
        w.append(np.array([[np.nan, 0, 0, 0]], np.float32), np.array([0]), np.array([0]), 1)
    w.close()


def test_other_schema_version_is_one_clear_error(tmp_path):
    path = _write(tmp_path / "a.h5", np.ones((4, 4), np.float32), 4)
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 999
    with pytest.raises(PipelineError, match="schema 999"):
        store.read_features(path)


def test_subsets_are_nested_and_seeded():
    n = 10_000
    small, big = subset_indices(n, 0.01, 3), subset_indices(n, 0.2, 3)
    assert len(small) == 100 and len(big) == 2000
    assert set(small) <= set(big) and np.all(np.diff(big) > 0)
    assert not np.array_equal(subset_indices(n, 0.2, 4), big)
    rows = rows_of_subset(big, n, 0.01, 3)          # the 1 % rows read from a 20 % file
    np.testing.assert_array_equal(big[rows], small)


def test_text_round_trip(tmp_path):
    emb = store.TextEmbeddings(np.eye(3, dtype=np.float32), ["a x", "b x", "c y"], np.array([0, 0, 1]),
                               ["x", "y"], {"clip": "clip"})
    back = store.read_text(store.write_text(tmp_path / "t.h5", emb))
    assert back.prompts == emb.prompts and back.classnames == ["x", "y"]
    np.testing.assert_array_equal(back.embeddings, emb.embeddings)
    np.testing.assert_array_equal(back.class_of_prompt, [0, 0, 1])


@pytest.mark.parametrize("change", [
    ("encoder", "model", "test_vit"), ("encoder", "options", {"img_size": 64}),
    ("dataset", "root", "elsewhere"), ("dataset", "options", {"train_size": 101}),
])
def test_any_setting_that_changes_numbers_changes_the_file(tmp_path, change):
    base = keys.feature_path(tmp_path, ENC, DS, "train", 1.0, 0)
    enc, ds = dict(ENC), dict(DS)
    {"encoder": enc, "dataset": ds}[change[0]][change[1]] = change[2]
    assert keys.feature_path(tmp_path, enc, ds, "train", 1.0, 0) != base
    assert keys.feature_path(tmp_path, ENC, DS, "test", 1.0, 0) != base
    assert keys.feature_path(tmp_path, ENC, DS, "train", 0.5, 0) != base
    assert keys.feature_path(tmp_path, ENC, DS, "train", 1.0, 1) != base
    assert keys.feature_path(tmp_path, ENC, DS, "train", 1.0, 0) == base


def test_weights_file_content_is_in_the_key(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"one")
    enc = {**ENC, "pretrained": str(weights)}
    first = keys.feature_path(tmp_path, enc, DS, "train", 1.0, 0)
    weights.write_bytes(b"two!")
    assert keys.feature_path(tmp_path, enc, DS, "train", 1.0, 0) != first
