"""Report figures, checked on the figure objects (panels, series, axis labels, legend outside the axes,
the CLIP reference) and as files (PNG and PDF), each written only when the results support it."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from zoomshot.cache.runs import Maps, write_run  # noqa: E402
from zoomshot.evaluate.gap import GapView  # noqa: E402
from zoomshot.evaluate.plots import (  # noqa: E402
    MAX_SERIES,
    NAME_CHARS,
    Projection,
    _per_class,
    _short,
    accuracy_figure,
    gap_figure,
    load_histories,
    loss_terms_figure,
    per_class_figure,
    sweeps,
    write_plots,
)
from zoomshot.evaluate.report import summary_rows  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ENCODERS = ("cnn", "vit")
FRACTIONS = (0.25, 1.0)
EPOCHS = (10, 30)
SEEDS = (0, 1)


def result(dataset, encoder, variant, method, fraction, epochs, seed, acc1):
    run = "clip" if method == "clip" else f"{encoder}-{variant}-{fraction}-{epochs}-{seed}"
    return {
        "dataset": dataset,
        "split": "test",
        "encoder": encoder,
        "method": method,
        "variant": variant,
        "fraction": fraction,
        "epochs": epochs,
        "seed": seed,
        "run": run,
        "created": "t0",
        "metrics": {
            "acc1": acc1,
            "acc5": min(1.0, acc1 + 0.2),
            "mean_per_class_recall": acc1,
            "teacher_agreement": acc1,
            "clip_acc1": 0.9,
        },
    }


def sweep_results(dataset="shapes", fractions=FRACTIONS, epochs=EPOCHS):
    """Zoom-shot variants over fractions x epochs x seeds, an lstsq baseline (no epochs), and CLIP."""
    out = [result(dataset, "clip", "clip", "clip", None, None, 0, 0.9)]
    for enc in ENCODERS:
        for f in fractions:
            for s in SEEDS:
                out.append(result(dataset, enc, "lstsq", "lstsq", f, None, s, 0.4 + 0.1 * f))
                for variant in ("mse", "mse+cyc"):
                    for e in epochs:
                        out.append(
                            result(dataset, enc, variant, "zoomshot", f, e, s, 0.3 + 0.2 * f + e / 200 + 0.01 * s)
                        )
    return out


def write_runs(runs_dir, results):
    """run.json per result run: zoomshot runs with a decreasing loss history, baselines with none."""
    for r in results:
        if r["method"] == "clip":
            continue
        n = r["epochs"] or 0
        history = [{"epoch": i, "total": 1.0 / (i + 1), "mse": 1.0 / (i + 1), "kd": 0.5 / (i + 1)} for i in range(n)]
        record = {k: r[k] for k in ("encoder", "variant", "method", "fraction", "epochs", "seed")}
        record.update(
            name=r["run"],
            params={"epochs": r["epochs"]},
            history=history,
            encoder_key="e",
            clip="clip",
            clip_key="c",
            train=["syn:train"],
            inputs={"files": [], "checksums": {}},
        )
        write_run(runs_dir / r["run"], record, Maps(torch.eye(2), torch.zeros(2), torch.eye(2), torch.zeros(2), 1, 1))


def assert_png(path):
    assert path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE
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


def gap_view(rng):
    image, text = gap_groups(rng)
    view = GapView(image, text, [f"class {i}" for i in range(len(text))])
    view.mapped["cnn mapped (mse)"] = image + 0.1 * rng.standard_normal(image.shape)
    view.gaps.update({"CLIP image": 0.5, "cnn mapped (mse)": 0.25})
    return view


def series_labels(ax):
    return [c.get_label() for c in ax.containers]


def assert_legend_outside(fig):
    fig.canvas.draw()
    assert len(fig.legends) == 1
    legend = fig.legends[0].get_window_extent()
    for ax in fig.axes:
        assert not legend.overlaps(ax.get_window_extent()), "legend drawn over a panel"
    if fig._suptitle is not None:
        assert not legend.overlaps(fig._suptitle.get_window_extent()), "legend drawn over the title"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots")
    results = sweep_results()
    write_runs(root / "runs", results)
    written = write_plots(results, root / "runs", root / "figures", {"shapes": gap_view(np.random.default_rng(0))})
    return root, results, written


def test_every_figure_is_written_as_png_and_pdf(sweep):
    root, _, written = sweep
    stems = [
        "acc_vs_fraction_shapes",
        "acc_vs_epochs_shapes",
        "loss_terms_cnn",
        "loss_terms_vit",
        "modality_gap_shapes",
    ]
    assert sorted(p.name for p in written) == sorted(f"{s}.{e}" for s in stems for e in ("png", "pdf"))
    assert sorted(p.name for p in (root / "figures").iterdir()) == sorted(p.name for p in written)
    for path in written:
        if path.suffix == ".png":
            assert_png(path)
        else:
            assert path.read_bytes()[:5] == b"%PDF-"


def test_accuracy_figure_has_a_panel_per_encoder_the_clip_line_and_error_bars(sweep):
    _, results, _ = sweep
    ((stem, sw),) = sweeps(summary_rows(results), "shapes", "fraction", {})
    assert stem == "acc_vs_fraction_shapes" and sw.title.endswith("(epochs 30)")  # the other axis at its largest
    fig = accuracy_figure(sw)
    assert [ax.get_title() for ax in fig.axes] == list(ENCODERS)
    assert fig.axes[0].get_shared_y_axes().joined(fig.axes[0], fig.axes[1])
    assert fig.axes[0].get_ylabel() == "top-1 (%)" and fig.axes[1].get_xlabel() == "training fraction (%)"
    for ax in fig.axes:
        assert series_labels(ax) == ["lstsq", "mse", "mse+cyc"]  # baselines first, then loss sets
        clip = [line for line in ax.get_lines() if line.get_label() == "CLIP zero-shot"]
        assert len(clip) == 1 and list(clip[0].get_ydata()) == pytest.approx([90.0, 90.0])
        mse = ax.containers[1]
        # mean over the two seeds at fraction 1.0, epochs 30: 0.3 + 0.2 + 0.15 + 0.005
        assert mse.lines[0].get_ydata()[-1] == pytest.approx(65.5)
        assert mse.has_yerr
    assert_legend_outside(fig)


def test_many_series_are_split_and_adapters_get_their_own_figure():
    clip = result("shapes", "clip", "clip", "clip", None, None, 0, 0.9)
    adapted_clip = {
        **result("shapes", "clip", "clip+tip-x", "tip-x", None, None, 0, 0.95),
        "base_variant": "clip",
        "run": "clip",
    }
    out = [clip, adapted_clip]
    for k in range(MAX_SERIES + 2):
        for f in FRACTIONS:
            out.append(result("shapes", "cnn", f"loss{k}", "zoomshot", f, 10, 0, 0.5 + f / 10))
            out.append(
                {**result("shapes", "cnn", f"loss{k}+tip-x", "tip-x", f, 10, 0, 0.6), "base_variant": f"loss{k}"}
            )
    found = dict(sweeps(summary_rows(out), "shapes", "fraction", {}))
    assert list(found) == [
        "acc_vs_fraction_shapes_part1",
        "acc_vs_fraction_shapes_part2",
        "acc_vs_fraction_shapes_tip-x_part1",
        "acc_vs_fraction_shapes_tip-x_part2",
    ]
    assert [len(found[s].series) for s in found] == [MAX_SERIES, 2, MAX_SERIES, 2]
    adapted = found["acc_vs_fraction_shapes_tip-x_part1"]
    assert adapted.references == {"CLIP zero-shot": 0.9, "CLIP + tip-x": 0.95}
    assert all(label.endswith(" + tip-x") for label in adapted.series)
    assert not any("tip-x" in label for label in found["acc_vs_fraction_shapes_part1"].series)


def test_loss_terms_figure_has_a_panel_per_term_and_a_line_per_run(sweep):
    root, results, _ = sweep
    records = load_histories(results, root / "runs")
    # per encoder and variant: the first seed at the largest fraction and epochs
    assert sorted((r["encoder"], r["variant"], r["fraction"], r["epochs"], r["seed"]) for r in records) == [
        (e, v, 1.0, 30, 0) for e in ENCODERS for v in ("mse", "mse+cyc")
    ]
    fig = loss_terms_figure([r for r in records if r["encoder"] == "cnn"], "cnn")
    assert [ax.get_title() for ax in fig.axes] == ["total", "L_mse", "PG-KD"]
    for ax in fig.axes:
        assert [line.get_label() for line in ax.get_lines()] == ["mse", "mse+cyc"]
        assert ax.get_yscale() == "log" and ax.get_xlabel() == "epoch"
    assert_legend_outside(fig)
    named = load_histories(results, root / "runs", [records[0]["name"]])
    assert [r["name"] for r in named] == [records[0]["name"]]


def test_projection_is_fitted_on_clip_and_its_first_axis_is_the_gap():
    rng = np.random.default_rng(1)
    image, text = gap_groups(rng)
    proj = Projection.fit(image, text)
    assert abs(proj.components[0, 0]) > 0.99  # the gap direction is e1
    assert (proj(image)[:, 0] > 0).all() and (proj(text)[:, 0] < 0).all()
    np.testing.assert_allclose(proj(10 * image), proj(image), atol=1e-9)  # rows are L2-normalised first
    with pytest.raises(ValueError, match="same width"):
        Projection.fit(np.ones((3, 4)), np.ones((3, 5)))


def test_gap_figure_draws_text_on_top_labels_a_few_classes_and_states_the_gaps():
    view = gap_view(np.random.default_rng(2))
    fig = gap_figure(view, "shapes: the modality gap")
    ax = fig.axes[0]
    *points, text = ax.collections
    assert text.get_zorder() > max(c.get_zorder() for c in points)
    assert len(text.get_offsets()) == len(view.clip_text)
    assert [t.get_text() for t in ax.texts] == [view.classnames[i] for i in (0, 5, 11, 17, 23, 29)]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["CLIP image (gap 0.50)", "cnn mapped (mse) (gap 0.25)", "CLIP class text (30 classes)"]
    assert_legend_outside(fig)


def test_gap_figure_at_1000_classes_draws_smaller_stars_with_the_same_total_ink():
    """1,000 class-text stars at the size of 30 would cover the image points; their total area stays that of 64."""
    rng = np.random.default_rng(3)
    image, _ = gap_groups(rng)
    _, text = gap_groups(rng, n=2000)
    fig = gap_figure(GapView(image, text, [f"class {i}" for i in range(1000)]), "imagenet: the modality gap")
    stars = fig.axes[0].collections[-1]
    assert len(stars.get_offsets()) == 1000 and stars.get_sizes() == pytest.approx([28 * (64 / 1000) ** 0.5])
    assert len(fig.axes[0].texts) == 6


def test_per_class_figure_lists_every_class_when_few(tmp_path):
    names = ["a", "b", "c", "d"]
    fig = per_class_figure({"cnn: mse": np.array([-0.1, -0.5, np.nan, 0.2])}, names, "shapes", shown=2)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["b", "a", "d"]
    assert [p.get_width() for p in ax.patches] == pytest.approx([-50.0, -10.0, 20.0])
    assert fig.get_suptitle() == "shapes: all 3 classes, against CLIP"
    clip = {**result("shapes", "clip", "clip", "clip", None, None, 0, 0.5), "classnames": names}
    clip["metrics"]["per_class_acc"] = [0.5, 1.0, 0.0, 0.5]
    student = result("shapes", "cnn", "mse", "zoomshot", 1.0, 10, 0, 0.4)
    student["metrics"]["per_class_acc"] = [0.5, 0.0, 0.5, 0.6]
    written = write_plots([clip, student], tmp_path / "runs", tmp_path)
    assert [p.name for p in written] == ["per_class_shapes.png", "per_class_shapes.pdf"]


def test_per_class_figure_at_1000_classes_shows_the_ends_from_result_files(tmp_path):
    """ImageNet-sized result files on disk: each panel has 2 x 10 bars (the 10 classes lost most and the
    10 best, from the per-class numbers) and a row counting the 980 left out, and the title says so."""
    import json

    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from zoomshot.evaluate.report import load_results

    names, rng = list(IMAGENET_CLASSNAMES), np.random.default_rng(0)
    clip_acc = rng.uniform(0.4, 0.9, 1000)
    diffs = {"cnn": rng.permutation(np.linspace(-0.4, 0.1, 1000)), "vit": rng.permutation(np.linspace(-0.3, 0.2, 1000))}
    clip = {**result("imagenet", "clip", "clip", "clip", None, None, 0, 0.7), "classnames": names}
    clip["metrics"]["per_class_acc"] = clip_acc.tolist()
    results = [clip]
    for enc, diff in diffs.items():
        r = result("imagenet", enc, "mse", "zoomshot", 1.0, 10, 0, 0.5)
        r["metrics"]["per_class_acc"] = (clip_acc + diff).tolist()
        results.append(r)
    (tmp_path / "results").mkdir()
    for i, r in enumerate(results):
        (tmp_path / "results" / f"{i}.json").write_text(json.dumps(r))
    loaded = load_results(tmp_path / "results")
    written = write_plots(loaded, tmp_path / "runs", tmp_path / "figures")
    assert [p.name for p in written] == ["per_class_imagenet.png", "per_class_imagenet.pdf"]
    assert_png(written[0])
    fig = per_class_figure(*_per_class(loaded, summary_rows(loaded), "imagenet"), "imagenet: top-1 per class")
    assert fig.get_suptitle() == (
        "imagenet: top-1 per class: the 10 classes lost most and the 10 best of 1,000, against CLIP"
    )
    for ax, diff in zip(fig.axes, diffs.values()):
        order = np.argsort(diff)
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert len(ax.patches) == 21 and labels[10] == "… 980 more"
        assert labels[:10] + labels[11:] == [_short(names[i]) for i in [*order[:10], *order[-10:]]]
        widths = [p.get_width() for p in ax.patches]
        assert widths[:10] + widths[11:] == pytest.approx(100 * diff[[*order[:10], *order[-10:]]], abs=1e-6)
        assert max(map(len, labels)) <= NAME_CHARS


def test_single_fraction_and_single_epochs_draw_no_sweep_plots(tmp_path):
    results = sweep_results(fractions=(1.0,), epochs=(30,))
    write_runs(tmp_path / "runs", results)
    written = write_plots(results, tmp_path / "runs", tmp_path / "figures")
    assert sorted(p.stem for p in written) == ["loss_terms_cnn"] * 2 + ["loss_terms_vit"] * 2


def test_epochs_plot_ignores_baselines_without_epochs(tmp_path):
    """Only lstsq varies the fraction; zoomshot is at one epochs value: no epochs plot."""
    written = write_plots(sweep_results(epochs=(30,)), tmp_path / "missing-runs", tmp_path / "figures")
    assert sorted(p.name for p in written) == ["acc_vs_fraction_shapes.pdf", "acc_vs_fraction_shapes.png"]


def test_one_figure_per_dataset(tmp_path):
    results = sweep_results("shapes") + sweep_results("cifar", epochs=(30,))
    written = {p.stem for p in write_plots(results, tmp_path / "runs", tmp_path / "figures")}
    assert written == {"acc_vs_fraction_shapes", "acc_vs_epochs_shapes", "acc_vs_fraction_cifar"}
