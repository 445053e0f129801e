"""The feature store contract: round trip, provenance, resume, nested subsets, keys, schema."""

import h5py
import numpy as np
import pytest

from zoomshot.cache import catalog, store
from zoomshot.cache.errors import PipelineError
from zoomshot.cache.subsets import rows_of_subset, subset_indices

ENC = {"family": "timm", "name": "cnn", "model": "test_resnet", "pretrained": "", "options": {}}
DS = {"name": "shapes", "kind": "shapes", "root": "", "options": {"train_size": 100}}


def _write(path, feats, batch, stop_after=None, attrs=None):
    w = store.FeatureWriter(path, feats.shape[1], attrs or {"encoder": "cnn"}, {"batch_size": batch}, len(feats))
    start = w.items_done
    for i in range(start, len(feats), batch):
        if stop_after is not None and i >= stop_after:
            w.close()
            return None
        sl = slice(i, i + batch)
        w.append(feats[sl], np.arange(len(feats))[sl], np.arange(len(feats))[sl] % 7, len(feats[sl]))
    return w.finish()


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
    with h5py.File(partial, "r+") as f:  # a kill after rows were written but before they were counted
        f["features"].resize(120, axis=0)
    with pytest.raises(PipelineError, match="resume"):
        store.read_features(tmp_path / "part.h5")
    resumed = _write(tmp_path / "part.h5", feats, 50)
    with h5py.File(whole) as a, h5py.File(resumed) as b:
        for name in ("features", "index", "labels"):
            assert a[name][:].tobytes() == b[name][:].tobytes()
        assert a.attrs["features_sha256"] == b.attrs["features_sha256"]


def test_a_sweep_worker_reads_a_file_once_and_a_replaced_file_again(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(300, 16)).astype(np.float32)
    path = _write(tmp_path / "a.h5", feats, 64)
    before = store._whole_file.cache_info()
    for rows in (np.arange(0, 300, 3), np.arange(10, 20), np.arange(300)):
        part = store.read_features_kept(path, rows)
        np.testing.assert_array_equal(part.features, store.read_features(path, rows).features)
        np.testing.assert_array_equal(part.index, rows)
    after = store._whole_file.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 2)
    path.unlink()
    path = _write(tmp_path / "a.h5", feats[:, ::-1].copy(), 64)  # re-made: read again
    np.testing.assert_array_equal(
        store.read_features_kept(path, np.arange(3)).features, store.read_features(path, np.arange(3)).features
    )


def test_verify_catches_changed_rows(tmp_path):
    path = _write(tmp_path / "a.h5", np.ones((40, 8), np.float32), 8)
    with h5py.File(path, "r+") as f:
        f["features"][3, 2] = 5.0
    assert any("checksum" in p for p in catalog.verify(path))


def test_nan_features_refused(tmp_path):
    w = store.FeatureWriter(tmp_path / "n.h5", 4, {}, {"batch_size": 2})
    with pytest.raises(PipelineError, match=r"n.h5 has 1 row\(s\) with NaN or Inf"):
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
    rows = rows_of_subset(big, n, 0.01, 3)  # the 1 % rows read from a 20 % file
    np.testing.assert_array_equal(big[rows], small)


def test_subset_sizes_are_exact_for_decimal_fractions():
    """ceil(0.07 * 100) on floats is 8 (0.07 * 100 = 7.000000000000001); the fraction as written gives 7."""
    assert [len(subset_indices(100, f, 0)) for f in (0.07, 0.14, 0.29, 0.57, 1.0)] == [7, 14, 29, 57, 100]
    assert len(subset_indices(3, 1 / 3, 0)) == 1
    small, big = subset_indices(100, 0.07, 5), subset_indices(100, 0.29, 5)
    assert set(small) <= set(big)
    np.testing.assert_array_equal(big[rows_of_subset(big, 100, 0.07, 5)], small)


def test_text_round_trip(tmp_path):
    emb = store.TextEmbeddings(
        np.eye(3, dtype=np.float32), ["a x", "b x", "c y"], np.array([0, 0, 1]), ["x", "y"], {"clip": "clip"}
    )
    back = store.read_text(store.write_text(tmp_path / "t.h5", emb))
    assert back.prompts == emb.prompts and back.classnames == ["x", "y"]
    np.testing.assert_array_equal(back.embeddings, emb.embeddings)
    np.testing.assert_array_equal(back.class_of_prompt, [0, 0, 1])


def _project(tmp_path, encoder=None, dataset=None):
    from zoomshot.cache.settings import ClipCfg, DatasetCfg, EncoderCfg, PathsCfg, Project, Subsets

    enc = EncoderCfg(**{"name": "cnn", "model": "test_resnet", **(encoder or {})})
    ds = DatasetCfg(**{"name": "shapes", "kind": "shapes", "options": {"train_size": 100}, **(dataset or {})})
    return Project(PathsCfg(cache_dir=str(tmp_path)), ClipCfg(), [enc], [ds], Subsets())


def _path(tmp_path, ref="shapes:train", subsets=None, **changes):
    from zoomshot.cache import layout

    project = _project(tmp_path, **changes)
    for k, v in (subsets or {}).items():
        setattr(project.subsets, k, v)
    return layout.feature_path(project, "cnn", ref)


@pytest.mark.parametrize(
    "change",
    [
        {"encoder": {"model": "test_vit"}},
        {"encoder": {"options": {"img_size": 64}}},
        {"dataset": {"kind": "imagefolder"}},
        {"dataset": {"options": {"train_size": 101}}},
    ],
)
def test_any_setting_that_changes_numbers_changes_the_file(tmp_path, change):
    base = _path(tmp_path)
    assert _path(tmp_path, **change) != base
    assert _path(tmp_path, ref="shapes:test") != base
    assert _path(tmp_path, subsets={"fraction": 0.5}) != base
    assert _path(tmp_path, subsets={"subset_seed": 1}) != base
    assert _path(tmp_path, subsets={"jpeg_draft": False}) != base
    assert _path(tmp_path, subsets={"gpu_decode": True}) != base
    assert _path(tmp_path) == base


def test_names_and_places_are_not_in_the_key(tmp_path):
    """A key is content: the same settings under another cache folder or a dataset root elsewhere
    with the same files give the same key."""
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "train" / "cat").mkdir(parents=True)
        (root / "train" / "cat" / "1.png").write_bytes(b"x" * 10)
    key = lambda p: p.name.rsplit("_", 1)[1]  # noqa: E731
    first = _path(tmp_path / "c1", dataset={"kind": "imagefolder", "root": str(a), "options": {}})
    second = _path(tmp_path / "c2", dataset={"kind": "imagefolder", "root": str(b), "options": {}})
    assert key(first) == key(second)
    (b / "train" / "cat" / "2.png").write_bytes(b"y")  # an image added: another key
    assert key(_path(tmp_path, dataset={"kind": "imagefolder", "root": str(b), "options": {}})) != key(first)


def test_weights_file_content_is_in_the_key(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"one")
    first = _path(tmp_path, encoder={"pretrained": str(weights)})
    weights.write_bytes(b"two!")
    assert _path(tmp_path, encoder={"pretrained": str(weights)}) != first


def test_a_class_names_file_counts_by_content(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    first = _path(tmp_path, dataset={"options": {"train_size": 100, "classnames_file": str(names)}})
    names.write_text("cat\nwolf\n")
    assert _path(tmp_path, dataset={"options": {"train_size": 100, "classnames_file": str(names)}}) != first


def test_a_failed_write_leaves_the_old_file_and_no_litter(tmp_path):
    from zoomshot.cache import atomic

    target = tmp_path / "results.md"
    atomic.write_text(target, "old table")
    with pytest.raises(RuntimeError):
        with atomic.replacing(target) as tmp:
            tmp.write_text("half a tab")
            raise RuntimeError("disk full")
    assert target.read_text() == "old table" and [p.name for p in tmp_path.iterdir()] == ["results.md"]
    atomic.write_text(target, "new table")
    assert target.read_text() == "new table" and len(list(tmp_path.iterdir())) == 1


def test_a_flipped_byte_in_a_feature_chunk_is_an_error_not_a_number(tmp_path):
    path = _write(tmp_path / "a.h5", np.random.default_rng(2).normal(size=(64, 8)).astype(np.float32), 16)
    with h5py.File(path, "r") as f:
        offset = f["features"].id.get_chunk_info(0).byte_offset
    with path.open("r+b") as f:
        f.seek(offset + 10)
        b = f.read(1)
        f.seek(offset + 10)
        f.write(bytes([b[0] ^ 0x01]))
    with pytest.raises(PipelineError, match="a.h5 is damaged"):
        store.read_features(path, np.arange(0, 64, 2))
    assert "damaged" in catalog.verify(path)[0]


def test_file_sha256_is_hashlibs_digest_of_the_bytes_and_the_key_follows_a_rewrite(tmp_path):
    import hashlib

    from zoomshot.cache import keys

    path = tmp_path / "w.bin"
    data = np.random.default_rng(0).bytes(3 << 20)  # several read buffers
    path.write_bytes(data)
    assert keys.file_sha256(path) == keys.file_checksum(path) == hashlib.sha256(data).hexdigest()
    path.write_bytes(data[:-1])
    assert keys.file_checksum(path) == hashlib.sha256(data[:-1]).hexdigest()


def test_the_stored_checksum_is_the_digest_of_the_rows_as_written(tmp_path):
    feats = np.random.default_rng(1).normal(size=(50, 8)).astype(np.float32)
    path = _write(tmp_path / "a.h5", feats, 16)
    assert store.stored_checksum(path) == store.sha256_rows(feats.astype(np.float16))
    emb = np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)
    text = store.write_text(tmp_path / "t.h5", store.TextEmbeddings(emb, list("abcde"), np.zeros(5, int), ["x"], {}))
    with h5py.File(text) as f:
        assert store.stored_checksum(text) == store.sha256_rows(emb) == store.sha256_rows(f["embeddings"])


def test_files_of_other_rows_are_one_line_naming_both(tmp_path):
    store.check_same_rows("a.h5 and b.h5", np.arange(5), np.arange(5))
    for other in (np.arange(4), np.array([0, 1, 2, 4, 3])):
        with pytest.raises(PipelineError, match=r"^a\.h5 and b\.h5 hold different rows .*: extract them together$"):
            store.check_same_rows("a.h5 and b.h5", np.arange(5), other)


def test_an_out_folder_is_new_empty_or_an_earlier_output_of_the_same_command(tmp_path):
    from zoomshot.cache.outputs import check_out_folder

    assert not check_out_folder(tmp_path / "new") and not check_out_folder(tmp_path)
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(PipelineError, match="already exists: remove it or give another --out"):
        check_out_folder(tmp_path)
    with pytest.raises(PipelineError, match="already exists and is not a rehearsal folder"):
        check_out_folder(tmp_path, "rehearsal.json", "a rehearsal folder")
    with pytest.raises(PipelineError, match="already exists"):
        check_out_folder(tmp_path / "mine.txt")
    (tmp_path / "rehearsal.json").write_text("{}")
    assert check_out_folder(tmp_path, "rehearsal.json", "a rehearsal folder")
    assert (tmp_path / "mine.txt").read_text() == "keep"
