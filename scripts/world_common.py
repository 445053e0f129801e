"""Shared helpers of the scripts that train the tiny world models (issue 5).

Used by ``scripts/train_tiny_clip.py``, ``scripts/train_tiny_encoders.py`` and
``tests/test_tiny_weights.py``. Everything runs offline on CPU.

* image banks: a fixed range of ``ShapesWorld`` samples rendered once into a uint8 tensor
  ``(N, 3, H, W)``; normalising it with a model's mean/std gives exactly the tensors of the model's
  eval transform (Resize/CenterCrop are the identity at the native 64 px, checked by
  :func:`check_bank_matches_transform`).
* the caption source of the tiny CLIP (:func:`clip_training_world`, :func:`clip_training_captions`):
  a world built with ``include_held_out=False``, so held-out colour-shape combinations never occur.
* zero-shot evaluation with the world templates, and the closed-form least-squares transfer check
  (``python scripts/world_common.py transfer``).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
MODEL_CONFIG_DIR = REPO / "extract" / "assets" / "model_configs"
WEIGHTS_DIR = REPO / "extract" / "assets" / "weights"
CLIP_MODEL = "zoomshot-tiny-clip"
IMAGE_SIZE = 64
TIMM_OVERLAY = dict(input_size=(3, IMAGE_SIZE, IMAGE_SIZE), crop_pct=1.0)
#: timm keyword arguments of the two tiny encoders (besides num_classes / pretrained).
ENCODER_OPTIONS = {
    "test_resnet": dict(),
    "test_vit": dict(img_size=IMAGE_SIZE),
}


def world_module():
    """``zoomshot.extract.world`` (installed package) or ``extract.world`` (repo on the path)."""
    try:
        from zoomshot.extract import world  # type: ignore
    except ImportError:
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        from extract import world  # type: ignore
    return world


def setup(threads: int = 2) -> None:
    torch.set_num_threads(threads)


def register_clip_config():
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    return open_clip


# ----------------------------------------------------------------------------------------------------
# Worlds, captions, image banks
# ----------------------------------------------------------------------------------------------------
def clip_training_world(size: int, seed: int = 0):
    """The world the tiny CLIP is trained on: train split, held-out combinations never drawn."""
    W = world_module()
    return W.ShapesWorld(split="train", size=size, seed=seed, image_size=IMAGE_SIZE, include_held_out=False)


def clip_training_captions(size: int, seed: int = 0) -> list[str]:
    """The captions of :func:`clip_training_world`, in order: the only text the tiny CLIP sees."""
    return clip_training_world(size, seed).captions()


def encoder_training_world(size: int, seed: int = 1):
    """The world the tiny timm encoders are trained on (all classes; only factor labels are used)."""
    W = world_module()
    return W.ShapesWorld(split="train", size=size, seed=seed, image_size=IMAGE_SIZE, include_held_out=True)


def test_world(size: int = 2000, seed: int = 0):
    W = world_module()
    return W.ShapesWorld(split="test", size=size, seed=seed, image_size=IMAGE_SIZE, include_held_out=True)


def render_bank(world, indices=None) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """Render samples of ``world`` into a uint8 tensor (N, 3, H, W) plus their factor ids."""
    W = world_module()
    idx = range(len(world)) if indices is None else list(indices)
    n = len(idx)
    s = world.image_size
    bank = torch.empty((n, s, s, 3), dtype=torch.uint8)
    keys = ("label", "shape", "colour", "size", "background", "template")
    facts = {k: np.empty(n, dtype=np.int64) for k in keys}
    for j, i in enumerate(idx):
        spec = world.spec(i)
        bank[j] = torch.from_numpy(np.array(W.render(spec), dtype=np.uint8))
        for k in keys:
            facts[k][j] = spec[k]
    return bank.permute(0, 3, 1, 2).contiguous(), facts


def normalize(bank: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 normalised like ToTensor + Normalize(mean, std)."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    sd = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (bank.float() / 255.0 - m) / sd


def transform_mean_std(transform) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of the Normalize step of a torchvision Compose."""
    for t in transform.transforms:
        if type(t).__name__ == "Normalize":
            return tuple(float(v) for v in torch.as_tensor(t.mean)), tuple(float(v) for v in torch.as_tensor(t.std))
    raise ValueError(f"no Normalize in {transform}")


def check_bank_matches_transform(world, transform, n: int = 8) -> float:
    """Max abs difference between the bank route and ``transform`` applied to the PIL images."""
    bank, _ = render_bank(world, range(n))
    mean, std = transform_mean_std(transform)
    ours = normalize(bank, mean, std)
    ref = torch.stack([transform(world[i][0]) for i in range(n)])
    return float((ours - ref).abs().max())


# ----------------------------------------------------------------------------------------------------
# CLIP zero-shot
# ----------------------------------------------------------------------------------------------------
def templates(key: str = "shapes") -> list[str]:
    from zoomshot.extract.shipped import TEMPLATES

    return json.loads(TEMPLATES.read_text())[key]


@torch.no_grad()
def text_classifier(model, tokenizer, classnames=None, tmpl=None) -> torch.Tensor:
    """(C, d) unit-norm class embeddings, as `pipeline evaluate` builds them from the prompts."""
    from zoomshot.evaluate.metrics import class_embeddings
    from zoomshot.extract.prompts import class_prompts

    W = world_module()
    classnames = list(W.CLASSNAMES) if classnames is None else classnames
    tmpl = templates() if tmpl is None else tmpl
    prompts, class_of_prompt = class_prompts(tmpl, classnames)
    return class_embeddings(model.encode_text(tokenizer(prompts)), torch.from_numpy(class_of_prompt), len(classnames))


@torch.no_grad()
def clip_image_features(model, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    out = [model.encode_image(images[i : i + batch]).float() for i in range(0, len(images), batch)]
    f = torch.cat(out)
    return f / f.norm(dim=-1, keepdim=True)


def top1(features: torch.Tensor, classifier: torch.Tensor, labels, mask=None) -> float:
    f = features / features.norm(dim=-1, keepdim=True)
    pred = (f @ classifier.T).argmax(1).numpy()
    labels = np.asarray(labels)
    ok = pred == labels
    if mask is not None:
        ok = ok[np.asarray(mask)]
    return float(ok.mean())


def held_out_mask(labels) -> np.ndarray:
    W = world_module()
    return np.isin(np.asarray(labels), np.array(W.HELD_OUT_LABELS))


def load_clip(pretrained: str | None):
    open_clip = register_clip_config()
    model, _, val = open_clip.create_model_and_transforms(CLIP_MODEL, pretrained=pretrained)
    model.eval()
    return model, val, open_clip.get_tokenizer(CLIP_MODEL)


def clip_zero_shot(model, val_transform, tokenizer, world) -> dict:
    """Zero-shot top-1 of a CLIP on ``world``: overall, held-out classes only, seen classes only."""
    bank, facts = render_bank(world)
    images = normalize(bank, *transform_mean_std(val_transform))
    feats = clip_image_features(model, images)
    clf = text_classifier(model, tokenizer)
    mask = held_out_mask(facts["label"])
    return {
        "top1": top1(feats, clf, facts["label"]),
        "top1_held_out": top1(feats, clf, facts["label"], mask),
        "top1_seen": top1(feats, clf, facts["label"], ~mask),
        "n": len(facts["label"]),
        "n_held_out": int(mask.sum()),
    }


# ----------------------------------------------------------------------------------------------------
# timm encoders
# ----------------------------------------------------------------------------------------------------
def build_encoder(name: str, num_classes: int, file: str | None = None):
    import timm

    overlay = dict(TIMM_OVERLAY)
    kwargs = dict(ENCODER_OPTIONS[name])
    if file is not None:
        overlay["file"] = str(file)
        kwargs["pretrained"] = True
    return timm.create_model(name, num_classes=num_classes, pretrained_cfg_overlay=overlay, **kwargs)


def encoder_transform(model):
    import timm

    return timm.data.create_transform(**timm.data.resolve_model_data_config(model))


@torch.no_grad()
def encoder_features(model, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[i : i + batch]).float() for i in range(0, len(images), batch)])


def save_state_dict(model_or_sd, path: str | Path, dtype=None, drop_prefixes: tuple[str, ...] = ()) -> None:
    from safetensors.torch import save_file

    sd = model_or_sd if isinstance(model_or_sd, dict) else model_or_sd.state_dict()
    out = {}
    for k, v in sd.items():
        if any(k.startswith(p) for p in drop_prefixes):
            continue
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous().clone()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path), metadata={"format": "pt"})


def adamw(named_params, lr: float, wd: float, no_decay=lambda name, p: p.ndim < 2, **kwargs) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (and on whatever `no_decay` spares)."""
    decay, rest = [], []
    for name, p in named_params:
        (rest if no_decay(name, p) else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}], lr=lr, **kwargs
    )


def batch_indices(n: int, batch: int, steps: int, seed: int):
    """(step, row indices) for `steps` batches over seeded reshuffles of range(n): the fixed data order."""
    gen = torch.Generator().manual_seed(seed)
    perm, pos = torch.randperm(n, generator=gen), 0
    for step in range(steps):
        if pos + batch > len(perm):
            perm, pos = torch.randperm(n, generator=gen), 0
        yield step, perm[pos : pos + batch]
        pos += batch


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 0."""
    if step < warmup:
        return float(lr * (step + 1) / warmup)
    p = (step - warmup) / max(1, steps - warmup)
    return float(lr * 0.5 * (1.0 + np.cos(np.pi * p)))


def optimise(
    opt: torch.optim.Optimizer,
    n: int,
    batch: int,
    steps: int,
    seed: int,
    lr: float,
    warmup: int,
    loss_fn,
    tag: str,
    log=print,
    after_step=None,
) -> None:
    """The training loop every script shares: fixed data order, warm-up + cosine lr, a log line every 25
    steps. `loss_fn(idx)` returns (loss, extra log text) for one batch of bank rows."""
    t0 = time.time()
    for step, idx in batch_indices(n, batch, steps, seed):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        loss, extra = loss_fn(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step()
        if step % 25 == 0 or step == steps - 1:
            el = time.time() - t0
            log(
                f"[{tag}] step {step + 1}/{steps} loss {loss.item():.4f}{extra} {el:.0f}s ({el / (step + 1):.2f}s/step)"
            )
    log(f"[{tag}] trained {steps} steps in {time.time() - t0:.0f}s")


# ----------------------------------------------------------------------------------------------------
# Self-supervised (SimCLR) helpers
# ----------------------------------------------------------------------------------------------------
def random_views(
    x: torch.Tensor, gen: torch.Generator, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), translate: float = 0.1
) -> torch.Tensor:
    """One random geometric view per image of a float batch (N, 3, H, W), in one ``grid_sample``:
    random resized crop (area fraction in ``scale``, aspect ratio in ``ratio``), horizontal flip,
    rotation by a multiple of 90 degrees, a small extra translation (fraction of the half-width,
    reflection padding). No colour jitter, no greyscale: colour stays a feature. Deterministic
    given ``gen`` (CPU generator)."""
    import torch.nn.functional as F

    n = x.shape[0]
    u = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    area = scale[0] + (scale[1] - scale[0]) * u(n)
    logr = np.log(ratio[0]) + (np.log(ratio[1]) - np.log(ratio[0])) * u(n)
    r = torch.exp(logr)
    sx = torch.sqrt(area * r).clamp(max=1.0)
    sy = torch.sqrt(area / r).clamp(max=1.0)
    cx = (1 - sx) * (2 * u(n) - 1) + translate * (2 * u(n) - 1)
    cy = (1 - sy) * (2 * u(n) - 1) + translate * (2 * u(n) - 1)
    k = torch.randint(0, 4, (n,), generator=gen)
    flip = torch.where(u(n) < 0.5, -1.0, 1.0)
    cos = torch.tensor([1.0, 0.0, -1.0, 0.0])[k]
    sin = torch.tensor([0.0, 1.0, 0.0, -1.0])[k]
    theta = torch.zeros(n, 2, 3)
    # input coords = diag(sx, sy) @ R(k*90) @ diag(flip, 1) @ output coords + (cx, cy)
    theta[:, 0, 0] = sx * cos * flip
    theta[:, 0, 1] = -sx * sin
    theta[:, 1, 0] = sy * sin * flip
    theta[:, 1, 1] = sy * cos
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's NT-Xent loss of two batches of projections (positives: same row)."""
    import torch.nn.functional as F

    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


# ----------------------------------------------------------------------------------------------------
# Least-squares transfer check
# ----------------------------------------------------------------------------------------------------
def ridge_map(x: torch.Tensor, y: torch.Tensor, lam: float = 1e-3) -> torch.Tensor:
    """Closed-form ridge W (with bias row) minimising |[x 1] W - y|^2 + lam * n * |W|^2."""
    x = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
    y = y.double()
    a = x.T @ x + lam * len(x) * torch.eye(x.shape[1], dtype=torch.float64)
    return torch.linalg.solve(a, x.T @ y)


def apply_map(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    x = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
    return (x @ w).float()


def measure_transfer(
    n_train: int = 8000,
    n_test: int = 2000,
    lam: float = 1e-3,
    log=print,
    extra: dict | None = None,
    shipped: bool = True,
) -> dict:
    """Features of CLIP and each encoder (plus random-weight encoders) on world images; ridge
    source -> CLIP image features fitted on train; zero-shot top-1 through the map on test."""
    t0 = time.time()
    W = world_module()
    train_w = W.ShapesWorld(split="train", size=n_train, seed=0, image_size=IMAGE_SIZE)
    test_w = test_world(n_test, 0)
    tr_bank, _ = render_bank(train_w)
    te_bank, te_f = render_bank(test_w)
    clip, val, tok = load_clip(str(WEIGHTS_DIR / "tiny_clip.safetensors"))
    ms = transform_mean_std(val)
    clf = text_classifier(clip, tok)
    c_tr = clip_image_features(clip, normalize(tr_bank, *ms))
    c_te = clip_image_features(clip, normalize(te_bank, *ms))
    lab = te_f["label"]
    mask = held_out_mask(lab)
    res = {"clip": {"top1": top1(c_te, clf, lab), "top1_held_out": top1(c_te, clf, lab, mask)}}
    log(f"[transfer] clip top1={res['clip']['top1']:.4f} held_out={res['clip']['top1_held_out']:.4f}")
    torch.manual_seed(0)
    sources = (
        {
            "tiny_cnn": ("test_resnet", WEIGHTS_DIR / "tiny_cnn.safetensors"),
            "tiny_vit": ("test_vit", WEIGHTS_DIR / "tiny_vit.safetensors"),
            "random_test_resnet": ("test_resnet", None),
            "random_test_vit": ("test_vit", None),
        }
        if shipped
        else {}
    )
    sources.update(extra or {})  # label -> (timm name, file): candidates measured the same way
    for label, (name, file) in sources.items():
        if file is not None and not Path(file).is_file():
            log(f"[transfer] {label}: {file} missing, skipped")
            continue
        enc = build_encoder(name, 0, file)
        ms_e = transform_mean_std(encoder_transform(enc))
        s_tr = encoder_features(enc, normalize(tr_bank, *ms_e))
        s_te = encoder_features(enc, normalize(te_bank, *ms_e))
        mu, sd = s_tr.mean(0), s_tr.std(0) + 1e-6
        w = ridge_map((s_tr - mu) / sd, c_tr, lam)
        pred = apply_map((s_te - mu) / sd, w)
        r = {"top1": top1(pred, clf, lab), "top1_held_out": top1(pred, clf, lab, mask), "dim": s_tr.shape[1]}
        r["rel_to_clip"] = r["top1"] / res["clip"]["top1"]
        res[label] = r
        log(
            f"[transfer] {label} ({name}): dim={r['dim']} top1={r['top1']:.4f} "
            f"held_out={r['top1_held_out']:.4f} ({100 * r['rel_to_clip']:.1f}% of CLIP)"
        )
    log(f"[transfer] done in {time.time() - t0:.0f}s")
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="least-squares transfer check of the tiny weights")
    ap.add_argument("command", choices=["transfer"])
    ap.add_argument("--train", type=int, default=8000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--lam", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="LABEL=TIMM_NAME:FILE",
        help="also measure this candidate file (repeatable), e.g. ssl_cnn=test_resnet:/tmp/x.safetensors",
    )
    ap.add_argument("--extra-only", action="store_true", help="skip the shipped files and random floors")
    args = ap.parse_args(argv)
    setup(args.threads)
    extra = {}
    for item in args.extra:
        label, spec = item.split("=", 1)
        name, file = spec.split(":", 1)
        extra[label] = (name, Path(file))
    res = measure_transfer(args.train, args.test, args.lam, extra=extra, shipped=not args.extra_only)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
