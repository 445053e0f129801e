"""Report figures: accuracy against fraction / epochs, loss curves and the modality-gap projection are
written as valid PNG files, and only when the results support them."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from zoomshot.cache.runs import Maps, write_run  # noqa: E402

from zoomshot.evaluate.plots import pca_2d, projection_plot, write_plots  # noqa: E402
from zoomshot.evaluate.report import summary_rows  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ENCODERS = ("cnn", "vit")
FRACTIONS = (0.25, 1.0)
EPOCHS = (10, 30)
SEEDS = (0, 1)


def result(dataset, encoder, variant, method, fraction, epochs, seed, acc1):
    run = "clip" if method == "clip" else f"{encoder}-{variant}-{fraction}-{epochs}-{seed}"
    return {"dataset": dataset, "split": "test", "encoder": encoder, "method": method, "variant": variant,
            "fraction": fraction, "epochs": epochs, "seed": seed, "run": run, "created": "t0",
            "metrics": {"acc1": acc1, "acc5": min(1.0, acc1 + 0.2), "mean_per_class_recall": acc1,
                        "teacher_agreement": acc1, "clip_acc1": 0.9}}


def sweep_results(dataset="shapes", fractions=FRACTIONS, epochs=EPOCHS):
    """Zoom-shot variants over fractions x epochs x seeds, an lstsq baseline (no epochs), and CLIP."""
    out = [result(dataset, "clip", "clip", "clip", None, None, 0, 0.9)]
    for enc in ENCODERS:
        for f in fractions:
            for s in SEEDS:
                out.append(result(dataset, enc, "lstsq", "lstsq", f, None, s, 0.4 + 0.1 * f))
                for variant in ("mse", "mse+cyc"):
                    for e in epochs:
                        out.append(result(dataset, enc, variant, "zoomshot", f, e, s,
                                          0.3 + 0.2 * f + e / 200 + 0.01 * s))
    return out


def write_runs(runs_dir, results):
    """run.json per result run: zoomshot runs with a decreasing loss history, baselines with none."""
    for r in results:
        if r["method"] == "clip":
            continue
        n = r["epochs"] or 0
        history = [{"epoch": i, "total": 1.0 / (i + 1), "mse": 1.0 / (i + 1)} for i in range(n)]
        record = {k: r[k] for k in ("encoder", "variant", "method", "fraction", "epochs", "seed")}
        record.update(name=r["run"], params={"epochs": r["epochs"]}, history=history, encoder_key="e", clip="clip",
                      clip_key="c", train=["syn:train"], inputs={"files": [], "checksums": {}})
        write_run(runs_dir / r["run"], record, Maps(torch.eye(2), torch.zeros(2), torch.eye(2), torch.zeros(2), 1, 1))


def assert_png(path):
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] > 100 and image.shape[1] > 100


def gap_groups(rng, n=60, d=16):
    """Image-like points around +e1 and text-like points around -e1 (a modality gap along e1)."""
    e1 = np.zeros(d)
    e1[0] = 1.0
    image = 3 * e1 + 0.3 * rng.standard_normal((n, d))
    text = -3 * e1 + 0.3 * rng.standard_normal((n // 2, d))
    return image, text


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots")
    results = sweep_results()
    write_runs(root / "runs", results)
    image, text = gap_groups(np.random.default_rng(0))
    projection = {"CLIP image (test)": image, "CLIP text (class prompts)": text}
    written = write_plots(results, root / "runs", root / "figures", projection=projection)
    return root, results, written


def test_every_expected_figure_is_written_as_a_png(sweep):
    root, _, written = sweep
    names = sorted(p.name for p in written)
    assert names == sorted(["acc_vs_fraction_shapes.png", "acc_vs_epochs_shapes.png", "loss_curves.png",
                            "projection_shapes.png"])
    assert sorted(p.name for p in (root / "figures").iterdir()) == names
    for path in written:
        assert_png(path)


def test_one_panel_per_encoder_makes_figures_wider_than_tall(sweep):
    _, _, written = sweep
    for path in written:
        if path.name.startswith(("acc_vs", "loss")):
            height, width = mpimg.imread(path).shape[:2]
            assert width > 1.5 * height  # two encoder panels side by side


def test_summary_rows_feeding_the_plots_average_seeds(sweep):
    _, results, _ = sweep
    rows = [r for r in summary_rows(results) if r["variant"] == "mse" and r["encoder"] == "cnn"]
    assert all(r["n_seeds"] == len(SEEDS) for r in rows)
    assert len(rows) == len(FRACTIONS) * len(EPOCHS)


def test_single_fraction_and_single_epochs_draw_no_sweep_plots(tmp_path):
    results = sweep_results(fractions=(1.0,), epochs=(30,))
    write_runs(tmp_path / "runs", results)
    written = write_plots(results, tmp_path / "runs", tmp_path / "figures")
    assert [p.name for p in written] == ["loss_curves.png"]
    assert not (tmp_path / "figures" / "acc_vs_fraction_shapes.png").exists()
    assert not (tmp_path / "figures" / "acc_vs_epochs_shapes.png").exists()
    assert_png(written[0])


def test_epochs_plot_ignores_baselines_without_epochs(tmp_path):
    """Only lstsq varies the fraction; zoomshot is at one epochs value: no epochs plot."""
    results = [r for r in sweep_results(epochs=(30,))]
    written = write_plots(results, tmp_path / "missing-runs", tmp_path / "figures")
    assert [p.name for p in written] == ["acc_vs_fraction_shapes.png"]


def test_runs_without_history_or_run_json_give_no_loss_plot(tmp_path):
    results = [r for r in sweep_results() if r["method"] in ("lstsq", "clip")]
    write_runs(tmp_path / "runs", results)   # closed-form runs: empty histories
    written = write_plots(results, tmp_path / "runs", tmp_path / "figures")
    assert "loss_curves.png" not in [p.name for p in written]
    assert "acc_vs_fraction_shapes.png" in [p.name for p in written]


def test_one_figure_per_dataset(tmp_path):
    results = sweep_results("shapes") + sweep_results("cifar", epochs=(30,))
    written = {p.name for p in write_plots(results, tmp_path / "runs", tmp_path / "figures")}
    assert written == {"acc_vs_fraction_shapes.png", "acc_vs_epochs_shapes.png", "acc_vs_fraction_cifar.png"}


def test_pca_first_component_separates_a_modality_gap():
    rng = np.random.default_rng(1)
    image, text = gap_groups(rng)
    mapped = image + 0.1 * rng.standard_normal(image.shape)
    coords = pca_2d([image, text, mapped])
    assert [c.shape for c in coords] == [(len(image), 2), (len(text), 2), (len(mapped), 2)]
    pc1_image, pc1_text, pc1_mapped = (c[:, 0] for c in coords)
    assert np.sign(pc1_image).min() == np.sign(pc1_image).max() != 0
    assert np.all(np.sign(pc1_text) == -np.sign(pc1_image[0]))
    assert np.all(np.sign(pc1_mapped) == np.sign(pc1_image[0]))
    # rows are L2-normalised first: scaling a group changes nothing
    again = pca_2d([10 * image, text, mapped])
    np.testing.assert_allclose(again[0], coords[0], atol=1e-9)


def test_pca_rejects_groups_of_different_width():
    with pytest.raises(ValueError, match="same width"):
        pca_2d([np.ones((3, 4)), np.ones((3, 5))])


def test_projection_plot_writes_a_png(tmp_path):
    image, text = gap_groups(np.random.default_rng(2))
    path = projection_plot({"CLIP image (test)": image, "CLIP text (class prompts)": text},
                           tmp_path / "projection_shapes.png", "shapes: modality gap")
    assert path == tmp_path / "projection_shapes.png"
    assert_png(path)
