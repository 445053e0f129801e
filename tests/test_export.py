"""`pipeline export` and `zoomshot.load_model` on the default world: provenance, the open_clip API, checks."""

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import open_clip
import pytest
import torch
from helpers import inproc, run_main
from safetensors.torch import load_file, save

from zoomshot import load_model
from zoomshot.cache.errors import PipelineError
from zoomshot.extract.shipped import ASSETS, MODEL_CONFIGS
from zoomshot.extract.world import CLASSNAMES, ShapesWorld

TEMPLATES = json.loads((ASSETS / "world_templates.json").read_text())["shapes"]


def cached(folder: Path, encoder: str, n: int) -> tuple[torch.Tensor, list[int]]:
    """The first n cached test features of `encoder` and their dataset indices."""
    path = next(p for p in (folder / "zoomshot-out/cache/features").glob(f"shapes_test_{encoder}_*.h5"))
    with h5py.File(path) as f:
        return torch.from_numpy(f["features"][:n].astype("float32")), f["index"][:n].tolist()


def test_export_records_provenance(default_exports):
    folder, run = default_exports
    out = folder / "exports/cnn"
    manifest = json.loads((out / "zoomshot_model.json").read_text())
    record = json.loads((folder / "zoomshot-out/runs" / run / "run.json").read_text())
    assert manifest["kind"] == "mapped" and manifest["name"] == run
    assert manifest["run"]["params"] == record["params"] and manifest["run"]["inputs"] == record["inputs"]
    assert manifest["run"]["inputs"]["checksums"]  # the training files by content
    for role, asset in (("encoder", "tiny_cnn"), ("clip", "tiny_clip")):
        sha = hashlib.sha256((ASSETS / "weights" / f"{asset}.safetensors").read_bytes()).hexdigest()
        assert manifest[role]["identity"]["weights"] == f"sha256:{sha}"
        assert manifest[role]["weights"] == {"source": "asset", "ref": f"assets:weights/{asset}.safetensors"}
    assert manifest["encoder"]["preprocess"]["input_size"] == [3, 64, 64]
    assert manifest["maps"]["sha256"] == record["maps_sha256"]
    result = json.loads((folder / "zoomshot-out/results" / run / "shapes-test.json").read_text())
    evaluated = next(e for e in manifest["evaluated"] if e["file"] == "shapes-test.json")
    assert evaluated["acc1"] == result["metrics"]["acc1"] > 0.7
    assert manifest["templates"]["templates"] == TEMPLATES
    assert json.loads((folder / "exports/clip/zoomshot_model.json").read_text())["kind"] == "clip"


def test_loaded_model_maps_new_images_like_the_cached_features(default_exports):
    folder, run = default_exports
    model, preprocess, _ = load_model(folder / "exports/cnn")
    features, index = cached(folder, "cnn", 16)
    world = ShapesWorld("test", size=1280, seed=0)
    images = torch.stack([preprocess(world.image(i)) for i in index])
    with torch.inference_mode():
        got = model.encode_image(images)
    maps = load_file(folder / "zoomshot-out/runs" / run / "maps.safetensors")
    expected = ((features * maps["scale_source"].float()) @ maps["h.weight"].T + maps["h.bias"]) / maps[
        "scale_clip"
    ].float()
    assert got.shape == (16, maps["h.weight"].shape[0]) == (16, 128)
    assert torch.nn.functional.cosine_similarity(got, expected).min() > 0.999  # float16 cache vs float32


def test_open_clip_code_runs_unchanged(default_exports):
    """open_clip's own `build_zero_shot_classifier` and `get_logits`-style scoring on the loaded models:
    the CLIP export gives exactly what the model from open_clip's loader gives, the mapped one shares its
    text tower and classifies the world's test images."""
    folder, _ = default_exports
    open_clip.add_model_config(MODEL_CONFIGS)
    reference, _, ref_preprocess = open_clip.create_model_and_transforms(
        "zoomshot-tiny-clip", pretrained=str(ASSETS / "weights/tiny_clip.safetensors")
    )
    reference.eval()
    templates = [lambda c, t=t: t.replace("{c}", c) for t in TEMPLATES]

    def zero_shot(model, preprocess, tokenizer, images):
        """Code written for an open_clip model."""
        with torch.no_grad():
            classifier = open_clip.build_zero_shot_classifier(model, tokenizer, CLASSNAMES, templates, device="cpu")
            features = model.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True)
            return model.logit_scale.exp() * features @ classifier, classifier

    world = ShapesWorld("test", size=1280, seed=0)
    images, labels = [world.image(i) for i in range(64)], world.labels()[:64]
    expected, ref_classifier = zero_shot(
        reference, ref_preprocess, open_clip.get_tokenizer("zoomshot-tiny-clip"), images
    )
    clip_logits, clip_classifier = zero_shot(*load_model(folder / "exports/clip"), images)
    assert torch.equal(clip_classifier, ref_classifier) and torch.allclose(clip_logits, expected, atol=1e-5)
    cnn_logits, cnn_classifier = zero_shot(*load_model(folder / "exports/cnn"), images)
    assert torch.equal(cnn_classifier, ref_classifier)
    assert (cnn_logits.argmax(1).numpy() == labels).mean() > 0.6
    model, _, tokenizer = load_model(folder / "exports/cnn")
    with torch.no_grad():
        image_features, text_features, scale = model(torch.zeros(2, 3, 64, 64), tokenizer(["a red circle."]))
    assert image_features.norm(dim=-1) == pytest.approx(1.0) and text_features.shape == (1, 128)
    assert scale == pytest.approx(reference.logit_scale.exp().item())


def _export_with_local_weights(folder: Path, run: str, work: Path) -> Path:
    """Export `run` from a config that names its weights as local files in `work/weights`."""
    (work / "weights").mkdir(parents=True)
    for asset in ("tiny_clip", "tiny_cnn", "tiny_vit"):
        shutil.copy(ASSETS / "weights" / f"{asset}.safetensors", work / "weights")
    config = (folder / "pipeline.toml").read_text().replace('"assets:weights/tiny_', '"weights/tiny_')
    (work / "pipeline.toml").write_text(config.replace('"zoomshot-out/', f'"{folder}/zoomshot-out/'))
    inproc(work, "export", run, "--out", "exported")
    return work / "exported"


def test_local_weights_are_copied_and_the_export_moves(default_exports, tmp_path):
    """Weights given as local files travel inside the export: it loads after being moved, with the
    originals gone; a copied file changed afterwards is refused by its checksum."""
    folder, run = default_exports
    work = tmp_path / "work"
    exported = _export_with_local_weights(folder, run, work)
    manifest = json.loads((exported / "zoomshot_model.json").read_text())
    assert manifest["encoder"]["weights"] == {"source": "file", "ref": "weights/encoder/tiny_cnn.safetensors"}
    moved = tmp_path / "moved"
    shutil.move(exported, moved)
    shutil.rmtree(work / "weights")
    model, _, _ = load_model(moved)
    reference, _, _ = load_model(folder / "exports/cnn")
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(model.encode_image(x), reference.encode_image(x))
    with open(moved / "weights/encoder/tiny_cnn.safetensors", "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    with pytest.raises(PipelineError, match="encoder weights .* do not match their recorded checksum"):
        load_model(moved)


def test_saving_over_the_original_weights_leaves_the_export_intact(default_exports, tmp_path):
    """The export holds copies, not hard links: a later save over the user's file (in place, as torch.save
    and safetensors do) changes neither what the export loads nor its checksums."""
    folder, run = default_exports
    exported = _export_with_local_weights(folder, run, tmp_path / "work")
    original = tmp_path / "work/weights/tiny_cnn.safetensors"
    retrained = {k: v + 1 for k, v in load_file(original).items()}
    with open(original, "wb") as f:  # the same file, rewritten
        f.write(save(retrained))
    model, _, _ = load_model(exported)
    reference, _, _ = load_model(folder / "exports/cnn")
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(model.encode_image(x), reference.encode_image(x))


def _damaged_copy(src: Path, dst: Path, damage) -> Path:
    shutil.copytree(src, dst)
    damage(dst)
    return dst


def _edit_manifest(change):
    def edit(folder: Path):
        m = json.loads((folder / "zoomshot_model.json").read_text())
        change(m)
        (folder / "zoomshot_model.json").write_text(json.dumps(m))

    return edit


def _flip_maps(folder: Path):
    data = bytearray((folder / "maps.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (folder / "maps.safetensors").write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, message",
    [
        (_flip_maps, "maps.safetensors does not match its recorded sha256"),
        (lambda f: (f / "maps.safetensors").unlink(), "maps.safetensors is missing"),
        (lambda f: (f / "zoomshot_model.json").write_text("{ torn"), "zoomshot_model.json is damaged"),
        (lambda f: (f / "zoomshot_model.json").unlink(), "holds no zoomshot_model.json"),
        (_edit_manifest(lambda m: m.update(format="zoomshot-model/0")), "this version reads 'zoomshot-model/1'"),
        (_edit_manifest(lambda m: m["encoder"]["identity"].update(model="test_vit")), "identity does not match"),
        (_edit_manifest(lambda m: m["encoder"]["preprocess"].update(input_size=[3, 96, 96])), "preprocessing differs"),
        (
            _edit_manifest(lambda m: m["clip"]["identity"].update(weights="sha256:" + "0" * 64)),
            "CLIP weights .* do not match their recorded checksum",
        ),
    ],
)
def test_a_damaged_or_mismatched_export_is_one_line(default_exports, tmp_path, damage, message):
    folder, _ = default_exports
    bad = _damaged_copy(folder / "exports/cnn", tmp_path / "bad", damage)
    with pytest.raises(PipelineError, match=message):
        load_model(bad)
    ShapesWorld("test", size=1, seed=0).image(0).save(tmp_path / "image.png")
    code, out, err = run_main(
        tmp_path, "predict", "--model", str(bad), "--classes", "red circle,blue square", "image.png"
    )
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err


def test_export_refuses_bad_input_and_never_overwrites(default_exports, tmp_path):
    folder, run = default_exports
    code, _, err = run_main(folder, "export", "0123456789ab", "--out", str(tmp_path / "x"))
    assert code == 2 and "no run named 0123456789ab" in err and not (tmp_path / "x").exists()
    before = (folder / "exports/cnn/zoomshot_model.json").read_bytes()
    code, _, err = run_main(folder, "export", run, "--out", "exports/cnn")
    assert code == 2 and "already exists" in err and err.count("\n") == 1
    assert (folder / "exports/cnn/zoomshot_model.json").read_bytes() == before
    (tmp_path / "file").write_text("a file, not a folder")
    code, _, err = run_main(folder, "export", run, "--out", str(tmp_path / "file/sub"))
    assert code == 2 and "cannot write --out" in err
    assert not list((folder / "exports").glob(".*.tmp"))  # nothing half-written left behind
