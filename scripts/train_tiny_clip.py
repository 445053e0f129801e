"""Train the tiny CLIP of the shapes world (``zoomshot-tiny-clip``) and save it as safetensors.

    python scripts/train_tiny_clip.py --out extract/assets/weights/tiny_clip.safetensors

Contrastive (symmetric InfoNCE with the model's learnable logit scale) on image-caption pairs of
``ShapesWorld(split="train", include_held_out=False)``: the held-out colour-shape combinations never
appear in its captions (nor images). Images are rendered once into a bank and normalised with the
model's own val-transform mean/std (identical tensors to the val transform at 64 px). Pairs whose
captions are identical count as positives of each other (multi-positive targets).

Deterministic: fixed seed, fixed step count, fixed data order (same machine / thread count).
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import world_common as wc  # noqa: E402


def soft_targets(caption_ids: torch.Tensor) -> torch.Tensor:
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    return same / same.sum(1, keepdim=True)


def train(
    steps: int,
    batch: int,
    bank_size: int,
    lr: float,
    wd: float,
    warmup: int,
    seed: int,
    threads: int = 1,
    amp: bool = True,
    init: str | None = None,
    log=print,
):
    wc.setup(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)
    open_clip = wc.register_clip_config()
    model, _, val = open_clip.create_model_and_transforms(wc.CLIP_MODEL, pretrained=None)
    tokenizer = open_clip.get_tokenizer(wc.CLIP_MODEL)
    if init:  # continue from an earlier stage (weights cast to float32)
        from safetensors.torch import load_file

        model.load_state_dict({k: v.float() for k, v in load_file(init).items()}, strict=True)
        log(f"[clip] initialised from {init}")
    t0 = time.time()
    world = wc.clip_training_world(bank_size, seed)
    bank, facts = wc.render_bank(world)
    captions = world.captions()
    W = wc.world_module()
    assert not any(W.is_held_out(c) for c in captions), "held-out combination in a training caption"
    uniq = sorted(set(captions))
    index = {c: i for i, c in enumerate(uniq)}
    cap_id = torch.tensor([index[c] for c in captions], dtype=torch.long)
    tokens = tokenizer(uniq)
    mean, std = wc.transform_mean_std(val)
    log(
        f"[clip] bank {tuple(bank.shape)} with {len(uniq)} distinct captions in {time.time() - t0:.1f}s; "
        f"bank==val transform: max diff {wc.check_bank_matches_transform(world, val):.2e}"
    )

    opt = wc.adamw(
        model.named_parameters(),
        lr,
        wd,
        betas=(0.9, 0.98),
        eps=1e-6,
        no_decay=lambda n, p: p.ndim < 2 or "logit_scale" in n or "embedding" in n,
    )
    model.train()

    def loss_fn(idx):
        ids = cap_id[idx]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            img_f, txt_f, scale = model(wc.normalize(bank[idx], mean, std), tokens[ids])
        logits = scale.float() * img_f.float() @ txt_f.float().T
        tgt = soft_targets(ids)
        return 0.5 * (F.cross_entropy(logits, tgt) + F.cross_entropy(logits.T, tgt)), f" scale {scale.item():.1f}"

    def clamp_scale():
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100.0))

    wc.optimise(opt, len(bank), batch, steps, seed, lr, warmup, loss_fn, "clip", log, after_step=clamp_scale)
    model.eval()
    return model, val, tokenizer


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(wc.WEIGHTS_DIR / "tiny_clip.safetensors"))
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--bank", type=int, default=32768, help="training images rendered once")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 is fastest on the shared 2-core machine; the weights depend on it)",
    )
    ap.add_argument("--no-amp", action="store_true", help="train in float32 instead of bf16 autocast")
    ap.add_argument("--test-size", type=int, default=2000)
    ap.add_argument("--init", default=None, help="start from this safetensors state_dict (a previous stage)")
    ap.add_argument("--fp32", action="store_true", help="save float32 (default float16)")
    args = ap.parse_args(argv)
    t0 = time.time()
    model, val, tok = train(
        args.steps,
        args.batch,
        args.bank,
        args.lr,
        args.wd,
        args.warmup,
        args.seed,
        args.threads,
        amp=not args.no_amp,
        init=args.init,
    )
    test = wc.test_world(args.test_size, 0)
    res = wc.clip_zero_shot(model, val, tok, test)
    print(f"[clip] in-memory zero-shot: {json.dumps(res)}")
    wc.save_state_dict(model, args.out, dtype=None if args.fp32 else torch.float16)
    model2, val2, tok2 = wc.load_clip(args.out)
    res2 = wc.clip_zero_shot(model2, val2, tok2, test)
    print(
        f"[clip] reloaded from {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB): "
        f"top1={res2['top1']:.4f} held_out={res2['top1_held_out']:.4f} seen={res2['top1_seen']:.4f} "
        f"(n={res2['n']}, held-out n={res2['n_held_out']}); total {time.time() - t0:.0f}s"
    )


if __name__ == "__main__":
    main()
