"""Bringing your own features (`pipeline cache import`): every bad array is one line at import, exit 2,
nothing written; what passes import never ends in a traceback or a NaN score later."""

import numpy as np
import pytest
from helpers import SYNTHETIC_CONFIG, one_line_error, run_main, synthetic_arrays


def _ok(result):
    code, out, err = result
    assert code == 0, (out, err)
    return out


def _error(result, *needles):
    code, out, err = result
    one_line_error(code, err, *needles)


@pytest.fixture
def folder(tmp_path):
    synthetic_arrays(tmp_path, n_classes=4, d=8, m=12)
    for name in ("clip_train", "clip_test", "src_train", "src_test"):  # small and quick
        np.save(tmp_path / f"{name}.npy", np.load(tmp_path / f"{name}.npy")[:200])
    for name in ("y_train", "y_test"):
        np.save(tmp_path / f"{name}.npy", np.load(tmp_path / f"{name}.npy")[:200])
    (tmp_path / "pipeline.toml").write_text(SYNTHETIC_CONFIG.format(runs="out/runs"))
    return tmp_path


def _import(folder, array, *args):
    return run_main(folder, "cache", "import", array, *args)


def _features(folder, enc, split, *extra):
    return _import(folder, f"{enc}_{split}.npy", "--encoder", enc, "--dataset", "syn", "--split", split, *extra)


def _cache_files(folder):
    return sorted(p.name for p in (folder / "out/cache").rglob("*.h5"))


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda a: np.where(np.arange(len(a))[:, None] == 3, np.nan, a), "1 row(s) with NaN or Inf (first: row 3)"),
        (lambda a: a.astype(np.int64), "must hold floating-point numbers, got dtype int64"),
        (lambda a: a[:, 0], "must be a non-empty 2-D array (N, D)"),
        (lambda a: a[:0], "must be a non-empty 2-D array (N, D)"),
        (lambda a: a * 1e6, "beyond 65504"),
    ],
)
def test_bad_feature_arrays(folder, make, needle):
    np.save(folder / "bad.npy", make(np.load(folder / "src_train.npy")))
    _error(_import(folder, "bad.npy", "--encoder", "src", "--dataset", "syn", "--split", "train"), needle)
    assert _cache_files(folder) == []


@pytest.mark.parametrize(
    "labels, needle",
    [
        (lambda y: y[:-1], "must be a 1-D array of 200 values"),
        (lambda y: y.astype(np.float32) + 0.5, "must hold integers"),
        (lambda y: np.where(np.arange(len(y)) == 7, 9, y), "the labels must lie in [-1, 4); row 7 holds 9"),
        (lambda y: np.where(np.arange(len(y)) == 2, -3, y), "the labels must lie in [-1, 4); row 2 holds -3"),
    ],
)
def test_bad_labels_against_the_classes(folder, labels, needle):
    np.save(folder / "bad_y.npy", labels(np.load(folder / "y_train.npy")))
    _error(_features(folder, "src", "train", "--labels", "bad_y.npy", "--classnames", "classnames.txt"), needle)
    assert _cache_files(folder) == []


def test_labels_are_checked_against_imported_class_prompts_and_widths_against_clip(folder):
    _ok(
        _import(
            folder, "class_text.npy", "--text", "class-prompts", "--dataset", "syn", "--classnames", "classnames.txt"
        )
    )
    np.save(folder / "bad_y.npy", np.full(200, 6))
    _error(_features(folder, "src", "train", "--labels", "bad_y.npy"), "must lie in [-1, 4)")
    np.save(folder / "wide.npy", np.zeros((200, 9), np.float32))
    _error(
        _import(folder, "wide.npy", "--encoder", "clip", "--dataset", "syn", "--split", "train"),
        "9-wide",
        "8-wide CLIP features",
    )


def test_class_text_width_is_checked_against_imported_clip_features(folder):
    _ok(_features(folder, "clip", "test", "--labels", "y_test.npy"))
    np.save(folder / "text9.npy", np.ones((12, 9), np.float32))
    _error(
        _import(folder, "text9.npy", "--text", "class-prompts", "--dataset", "syn", "--classnames", "classnames.txt"),
        "class-prompt embeddings are 9-wide",
        "8-wide CLIP features",
    )


def test_classfree_prompts_are_keyed_by_their_content(folder):
    # no --dataset needed; the rows must match the prompts, one a line
    _error(
        _import(folder, "classfree.npy", "--text", "classfree", "--prompts", "classnames.txt"),
        "has 4 prompts but the array has 60 rows",
    )
    _ok(_import(folder, "classfree.npy", "--text", "classfree"))  # the [clip] classfree_prompts file's
    other = folder / "other.txt"
    other.write_text("\n".join(f"another prompt {i}" for i in range(60)))
    out = _ok(_import(folder, "classfree.npy", "--text", "classfree", "--prompts", "other.txt"))
    assert "differ from [clip] classfree_prompts" in out
    assert len([n for n in _cache_files(folder) if n.startswith("classfree")]) == 2  # two prompt sets, two files


def test_mse_needs_no_prompt_set_and_kd_says_how_to_import_it(folder):
    for enc in ("src", "clip"):
        _ok(_features(folder, enc, "train", "--labels", "y_train.npy"))
    _ok(run_main(folder, "fit", "--variants", "mse", "--epochs", "2"))
    _error(
        run_main(folder, "fit", "--variants", "mse+cyc+kd-lm", "--epochs", "2"),
        "class-free prompt embeddings",
        "pipeline cache import ARRAY --text classfree",
    )


def test_a_test_split_without_labels_is_not_scored(folder):
    _ok(
        _import(
            folder, "class_text.npy", "--text", "class-prompts", "--dataset", "syn", "--classnames", "classnames.txt"
        )
    )
    for enc in ("src", "clip"):
        _ok(_features(folder, enc, "train", "--labels", "y_train.npy"))
        _ok(_features(folder, enc, "test"))  # no --labels
    _ok(run_main(folder, "fit", "--variants", "lstsq"))
    code, out, err = run_main(folder, "evaluate")
    assert code == 1 and "has no labels" in out and "Traceback" not in err, (out, err)
    assert not list((folder / "out/results").rglob("*.json"))  # no NaN score written


def test_import_without_a_config_says_so(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 2), np.float32))
    _error(
        _import(tmp_path, "x.npy", "--encoder", "src", "--dataset", "syn", "--split", "train"),
        "no pipeline.toml in",
        "--config PATH",
    )


def test_unreadable_arrays(folder):
    (folder / "junk.npy").write_bytes(b"not numpy")
    _error(
        _import(folder, "junk.npy", "--encoder", "src", "--dataset", "syn", "--split", "train"), "cannot read junk.npy"
    )
    np.save(folder / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _error(
        _import(folder, "objects.npy", "--encoder", "src", "--dataset", "syn", "--split", "train"),
        "cannot read objects.npy",
    )


@pytest.mark.parametrize(
    "index, needle",
    [
        (lambda n: np.arange(n)[::-1].copy(), "row 1 holds 198 after 199"),  # descending
        (lambda n: np.r_[0, 0, np.arange(2, n)], "row 1 holds 0 after 0"),  # repeated
        (lambda n: np.arange(n) - 1, "the index must lie in >= 0; row 0 holds -1"),  # out of range
    ],
)
def test_an_index_out_of_dataset_order_is_refused_not_sorted(folder, index, needle):
    np.save(folder / "idx.npy", index(200))
    _error(_features(folder, "src", "train", "--index", "idx.npy"), needle)
    assert _cache_files(folder) == []


def test_an_index_must_match_the_splits_other_files(folder):
    np.save(folder / "idx.npy", np.arange(200) * 2)
    _ok(_features(folder, "clip", "train", "--index", "idx.npy"))
    _error(_features(folder, "src", "train"), "the index differs from that of syn_train_clip_", "same images")
    _ok(_features(folder, "src", "train", "--index", "idx.npy"))
    assert len(_cache_files(folder)) == 2


def test_every_width_in_one_space_agrees(folder):
    """CLIP's image features and all its text embeddings share one width; an encoder's files share its own."""
    _ok(_import(folder, "classfree.npy", "--text", "classfree"))  # 8-wide CLIP text
    np.save(folder / "text9.npy", np.ones((12, 9), np.float32))
    _error(
        _import(folder, "text9.npy", "--text", "class-prompts", "--dataset", "syn", "--classnames", "classnames.txt"),
        "class-prompt embeddings are 9-wide",
        "8-wide CLIP features",
    )
    _ok(_features(folder, "src", "train"))  # 12-wide src
    np.save(folder / "src11.npy", np.ones((200, 11), np.float32))
    _error(
        _import(folder, "src11.npy", "--encoder", "src", "--dataset", "syn", "--split", "test"),
        "src features are 11-wide",
        "12-wide src features",
    )
    assert len(_cache_files(folder)) == 2
