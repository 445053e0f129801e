"""Train the two tiny timm encoders of the shapes world and save them as safetensors (no head).

    python scripts/train_tiny_encoders.py --out-dir extract/assets/weights

* ``tiny_cnn.safetensors``: timm ``test_resnet`` (a CNN), supervised on SHAPE only (8 classes).
* ``tiny_vit.safetensors``: timm ``test_vit`` (``img_size=64``), supervised on COLOUR (8 classes) and
  SIZE (2 classes), two cross-entropy losses on one 10-logit head.

Neither sees a caption or a class name: labels are the world's factor ids of
``ShapesWorld(split="train", seed=1)``. Inputs are the model's own eval-transform tensors (rendered
bank normalised with its pretrained-config mean/std, identical at 64 px). The classifier head is left
out of the saved file, so the pipeline's ``timm.create_model(name, num_classes=0, pretrained=True,
pretrained_cfg_overlay=dict(file=..., input_size=(3, 64, 64), crop_pct=1.0))`` loads every key.

``--method simclr`` (self-supervised) trains either encoder with SimCLR instead: two random geometric
views per image (``world_common.random_views``: random resized crop of area 0.5-1, flip, rotation by
multiples of 90 degrees, small translation; NO colour jitter, NO greyscale, so colour stays a feature),
NT-Xent loss (``world_common.nt_xent``) on a 2-layer MLP projection head that is dropped at save
time. No labels at all are used (no factor ids, no captions, no class names)::

    python scripts/train_tiny_encoders.py --method simclr --only cnn --cnn-steps 800 --out-dir /tmp/ssl

Deterministic: fixed seed, fixed step count, fixed data order (same machine / thread count).
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import world_common as wc  # noqa: E402

#: name -> (timm model, number of logits, head prefix left out of the file, saved file name)
ENCODERS = {
    "cnn": ("test_resnet", 8, "fc.", "tiny_cnn.safetensors"),
    "vit": ("test_vit", 10, "head.", "tiny_vit.safetensors"),
}


def loss_and_acc(which: str, logits: torch.Tensor, facts: dict[str, torch.Tensor]):
    if which == "cnn":
        y = facts["shape"]
        return F.cross_entropy(logits, y), {"shape": (logits.argmax(1) == y).float().mean().item()}
    yc, ys = facts["colour"], facts["size"]
    lc, ls = logits[:, :8], logits[:, 8:10]
    loss = F.cross_entropy(lc, yc) + F.cross_entropy(ls, ys)
    return loss, {"colour": (lc.argmax(1) == yc).float().mean().item(),
                  "size": (ls.argmax(1) == ys).float().mean().item()}


def train_one(which: str, bank: torch.Tensor, facts: dict, steps: int, batch: int, lr: float, wd: float,
              warmup: int, seed: int, log=print):
    name, n_out, _, _ = ENCODERS[which]
    torch.manual_seed(seed)
    model = wc.build_encoder(name, n_out)
    mean, std = wc.transform_mean_std(wc.encoder_transform(model))
    opt = wc.adamw(model.named_parameters(), lr, wd)
    tfacts = {k: torch.from_numpy(v) for k, v in facts.items()}
    model.train()

    def loss_fn(idx):
        loss, acc = loss_and_acc(which, model(wc.normalize(bank[idx], mean, std)),
                                 {k: v[idx] for k, v in tfacts.items()})
        return loss, f" train-batch acc { {k: round(v, 3) for k, v in acc.items()} }"

    wc.optimise(opt, len(bank), batch, steps, seed, lr, warmup, loss_fn, f"{which}] [{name}", log)
    model.eval()
    return model


def train_simclr(which: str, bank: torch.Tensor, steps: int, batch: int, lr: float, wd: float, warmup: int,
                 seed: int, temperature: float = 0.2, proj_dim: int = 64, log=print):
    """SimCLR from scratch on the unlabelled bank; returns the backbone (num_classes=0)."""
    name = ENCODERS[which][0]
    torch.manual_seed(seed)
    model = wc.build_encoder(name, 0)
    d = model.num_features
    head = torch.nn.Sequential(torch.nn.Linear(d, 2 * d), torch.nn.ReLU(), torch.nn.Linear(2 * d, proj_dim))
    mean, std = wc.transform_mean_std(wc.encoder_transform(model))
    params = list(model.named_parameters()) + [("proj." + k, v) for k, v in head.named_parameters()]
    opt = wc.adamw(params, lr, wd)
    gen = torch.Generator().manual_seed(seed + 1)
    model.train()
    head.train()

    def loss_fn(idx):
        x = wc.normalize(bank[idx], mean, std)
        v1, v2 = wc.random_views(x, gen), wc.random_views(x, gen)
        z = head(model(torch.cat([v1, v2])))
        return wc.nt_xent(z[: len(idx)], z[len(idx):], temperature), ""

    wc.optimise(opt, len(bank), batch, steps, seed, lr, warmup, loss_fn, f"{which}] [simclr {name}", log)
    model.eval()
    return model


@torch.no_grad()
def evaluate(which: str, model, test_bank: torch.Tensor, test_facts: dict) -> dict:
    mean, std = wc.transform_mean_std(wc.encoder_transform(model))
    x = wc.normalize(test_bank, mean, std)
    logits = torch.cat([model(x[i : i + 500]) for i in range(0, len(x), 500)])
    _, acc = loss_and_acc(which, logits, {k: torch.from_numpy(v) for k, v in test_facts.items()})
    return acc


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=str(wc.WEIGHTS_DIR))
    ap.add_argument("--only", choices=sorted(ENCODERS), action="append", help="train only this one (repeatable)")
    ap.add_argument("--cnn-steps", type=int, default=450)
    ap.add_argument("--vit-steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--bank", type=int, default=16384, help="training images rendered once")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", choices=["supervised", "simclr"], default="supervised",
                    help="supervised: factor labels (shipped defaults); simclr: self-supervised, no labels")
    ap.add_argument("--temperature", type=float, default=0.2, help="NT-Xent temperature (simclr)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest on the shared 2-core machine; the weights depend on it)")
    args = ap.parse_args(argv)
    wc.setup(args.threads)
    t0 = time.time()
    bank, facts = wc.render_bank(wc.encoder_training_world(args.bank, seed=1))
    test_bank, test_facts = wc.render_bank(wc.test_world(2000, 0))
    print(f"[encoders] banks {tuple(bank.shape)} / {tuple(test_bank.shape)} in {time.time() - t0:.1f}s")
    for which in args.only or sorted(ENCODERS):
        name, _, head, fname = ENCODERS[which]
        steps = args.cnn_steps if which == "cnn" else args.vit_steps
        out = Path(args.out_dir) / fname
        if args.method == "simclr":
            model = train_simclr(which, bank, steps, args.batch, args.lr, args.wd, args.warmup, args.seed,
                                 args.temperature)
            acc = "n/a (self-supervised)"
            wc.save_state_dict(model, out)  # backbone only: the projection head is a separate module
        else:
            model = train_one(which, bank, facts, steps, args.batch, args.lr, args.wd, args.warmup, args.seed)
            acc = evaluate(which, model, test_bank, test_facts)
            wc.save_state_dict(model, out, drop_prefixes=(head,))
        loaded = wc.build_encoder(name, 0, out)
        print(f"[{which}] {name} test acc {acc}; saved {out} ({out.stat().st_size / 1e6:.2f} MB, "
              f"feature width {loaded.num_features})")
    print(f"[encoders] total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
