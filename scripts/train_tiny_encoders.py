"""Train the two tiny timm encoders of the shapes world and save them as safetensors (no head).

    python scripts/train_tiny_encoders.py --out-dir extract/assets/weights

Each encoder has a recipe (``RECIPES``); the defaults re-make the shipped files:

* ``tiny_cnn.safetensors``: timm ``test_resnet`` (a CNN), ``hybrid``: cross-entropy on SHAPE and SIZE
  labels plus SimCLR (weight 0.5) on two random geometric views of every image. No colour label: what it
  knows of colour comes from the self-supervised term.
* ``tiny_vit.safetensors``: timm ``test_vit`` (``img_size=64``), ``supervised`` on COLOUR and SIZE
  labels, one cross-entropy per factor on one 10-logit head.

Neither sees a caption or a class name: labels are the world's factor ids of
``ShapesWorld(split="train", seed=1)``. Inputs are the model's own eval-transform tensors (rendered
bank normalised with its pretrained-config mean/std, identical at 64 px). The heads are left
out of the saved file, so the pipeline's ``timm.create_model(name, num_classes=0, pretrained=True,
pretrained_cfg_overlay=dict(file=..., input_size=(3, 64, 64), crop_pct=1.0))`` loads every key.

Methods (``--method`` overrides the recipe's): ``supervised`` (factor labels only), ``simclr`` (no labels
at all: two random geometric views per image (``world_common.random_views``: random resized crop of
area 0.5-1, flip, rotation by multiples of 90 degrees, small translation; NO colour jitter, NO
greyscale, so colour stays a feature), NT-Xent (``world_common.nt_xent``) on a 2-layer MLP projection
head dropped at save time), and ``hybrid`` (both losses; the factor cross-entropy on both views)::

    python scripts/train_tiny_encoders.py --method simclr --only cnn --cnn-steps 800 --out-dir /tmp/ssl

Deterministic: fixed seed, fixed step count, fixed data order (same machine / thread count).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import world_common as wc  # noqa: E402

#: number of classes of each world factor
FACTOR_CLASSES = {"shape": 8, "colour": 8, "size": 2, "background": 3}
METHODS = ("supervised", "simclr", "hybrid")


@dataclass(frozen=True)
class Recipe:
    model: str  # timm name
    file: str  # saved file name
    head: str  # state-dict prefix of the classifier head, left out of the file
    method: str
    factors: tuple[str, ...]  # supervised factors (unused by simclr)
    steps: int
    warmup: int
    ssl_weight: float = 1.0  # weight of the NT-Xent term (simclr, hybrid)


#: the shipped encoders
RECIPES = {
    "cnn": Recipe("test_resnet", "tiny_cnn.safetensors", "fc.", "hybrid", ("shape", "size"), 1200, 30, 0.5),
    "vit": Recipe("test_vit", "tiny_vit.safetensors", "head.", "supervised", ("colour", "size"), 500, 20),
}


def n_logits(factors: tuple[str, ...]) -> int:
    return sum(FACTOR_CLASSES[f] for f in factors)


def loss_and_acc(factors: tuple[str, ...], logits: torch.Tensor, facts: dict[str, torch.Tensor]):
    """One cross-entropy per supervised factor, each on its own slice of the head's logits."""
    loss, acc, start = 0.0, {}, 0
    for f in factors:
        part, y = logits[:, start : start + FACTOR_CLASSES[f]], facts[f]
        loss = loss + F.cross_entropy(part, y)
        acc[f] = (part.argmax(1) == y).float().mean().item()
        start += FACTOR_CLASSES[f]
    return loss, acc


def batch_acc(acc: dict[str, float]) -> str:
    return f" train-batch acc { {k: round(v, 3) for k, v in acc.items()} }"


def train_supervised(
    r: Recipe, bank: torch.Tensor, facts: dict, batch: int, lr: float, wd: float, seed: int, log=print
):
    """Factor cross-entropy on the plain images; returns (model with its head, logits function)."""
    torch.manual_seed(seed)
    model = wc.build_encoder(r.model, n_logits(r.factors))
    mean, std = wc.transform_mean_std(wc.encoder_transform(model))
    opt = wc.adamw(model.named_parameters(), lr, wd)
    tfacts = {k: torch.from_numpy(v) for k, v in facts.items()}
    model.train()

    def loss_fn(idx):
        loss, acc = loss_and_acc(
            r.factors, model(wc.normalize(bank[idx], mean, std)), {k: v[idx] for k, v in tfacts.items()}
        )
        return loss, batch_acc(acc)

    wc.optimise(opt, len(bank), batch, r.steps, seed, lr, r.warmup, loss_fn, r.model, log)
    model.eval()
    return model, model


def train_simclr(
    r: Recipe,
    bank: torch.Tensor,
    facts: dict | None,
    batch: int,
    lr: float,
    wd: float,
    seed: int,
    temperature: float = 0.2,
    proj_dim: int = 64,
    log=print,
):
    """SimCLR from scratch on the bank; with ``facts`` (hybrid) also a linear factor head on both views.
    Returns (backbone with num_classes=0, logits function or None)."""
    torch.manual_seed(seed)
    model = wc.build_encoder(r.model, 0)
    d = model.num_features
    head = torch.nn.Sequential(torch.nn.Linear(d, 2 * d), torch.nn.ReLU(), torch.nn.Linear(2 * d, proj_dim))
    mean, std = wc.transform_mean_std(wc.encoder_transform(model))
    params = list(model.named_parameters()) + [("proj." + k, v) for k, v in head.named_parameters()]
    cls = None
    if facts is not None:
        cls = torch.nn.Linear(d, n_logits(r.factors))
        params += [("cls." + k, v) for k, v in cls.named_parameters()]
        tfacts = {k: torch.from_numpy(v) for k, v in facts.items()}
    opt = wc.adamw(params, lr, wd)
    gen = torch.Generator().manual_seed(seed + 1)
    model.train()
    head.train()

    def loss_fn(idx):
        x = wc.normalize(bank[idx], mean, std)
        v1, v2 = wc.random_views(x, gen), wc.random_views(x, gen)
        feats = model(torch.cat([v1, v2]))
        z = head(feats)
        loss = r.ssl_weight * wc.nt_xent(z[: len(idx)], z[len(idx) :], temperature)
        if cls is None:
            return loss, ""
        sup, acc = loss_and_acc(r.factors, cls(feats), {k: v[idx].repeat(2) for k, v in tfacts.items()})
        return loss + sup, batch_acc(acc)

    wc.optimise(opt, len(bank), batch, r.steps, seed, lr, r.warmup, loss_fn, f"{r.method} {r.model}", log)
    model.eval()
    return model, (None if cls is None else torch.nn.Sequential(model, cls))


@torch.no_grad()
def evaluate(r: Recipe, model, logits_fn, test_bank: torch.Tensor, test_facts: dict) -> dict | str:
    """Test accuracy of each supervised factor (plain test images)."""
    if logits_fn is None:
        return "n/a (self-supervised)"
    mean, std = wc.transform_mean_std(wc.encoder_transform(model))
    x = wc.normalize(test_bank, mean, std)
    logits = torch.cat([logits_fn(x[i : i + 500]) for i in range(0, len(x), 500)])
    _, acc = loss_and_acc(r.factors, logits, {k: torch.from_numpy(v) for k, v in test_facts.items()})
    return acc


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=str(wc.WEIGHTS_DIR))
    ap.add_argument("--only", choices=sorted(RECIPES), action="append", help="train only this one (repeatable)")
    ap.add_argument("--method", choices=METHODS, help="override the recipes' method")
    ap.add_argument(
        "--factors", help=f"override the recipes' supervised factors, e.g. shape,size (of {', '.join(FACTOR_CLASSES)})"
    )
    ap.add_argument("--cnn-steps", type=int, help=f"default {RECIPES['cnn'].steps}")
    ap.add_argument("--vit-steps", type=int, help=f"default {RECIPES['vit'].steps}")
    ap.add_argument("--warmup", type=int, help="override the recipes' warm-up steps")
    ap.add_argument("--ssl-weight", type=float, help="override the recipes' NT-Xent weight")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--bank", type=int, default=16384, help="training images rendered once")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.2, help="NT-Xent temperature (simclr, hybrid)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 is fastest on the shared 2-core machine; the weights depend on it)",
    )
    args = ap.parse_args(argv)
    overrides = {
        k: v
        for k, v in dict(
            method=args.method,
            warmup=args.warmup,
            ssl_weight=args.ssl_weight,
            factors=args.factors and tuple(args.factors.split(",")),
        ).items()
        if v is not None
    }
    if set(overrides.get("factors", ())) - set(FACTOR_CLASSES):
        ap.error(f"--factors: choose from {', '.join(FACTOR_CLASSES)}")
    wc.setup(args.threads)
    t0 = time.time()
    bank, facts = wc.render_bank(wc.encoder_training_world(args.bank, seed=1))
    test_bank, test_facts = wc.render_bank(wc.test_world(2000, 0))
    print(f"[encoders] banks {tuple(bank.shape)} / {tuple(test_bank.shape)} in {time.time() - t0:.1f}s")
    for which in args.only or sorted(RECIPES):
        steps = args.cnn_steps if which == "cnn" else args.vit_steps
        r = replace(RECIPES[which], **overrides, **({} if steps is None else {"steps": steps}))
        print(f"[{which}] {r}")
        if r.method == "supervised":
            model, logits_fn = train_supervised(r, bank, facts, args.batch, args.lr, args.wd, args.seed)
        else:
            model, logits_fn = train_simclr(
                r,
                bank,
                facts if r.method == "hybrid" else None,
                args.batch,
                args.lr,
                args.wd,
                args.seed,
                args.temperature,
            )
        acc = evaluate(r, model, logits_fn, test_bank, test_facts)
        out = Path(args.out_dir) / r.file
        wc.save_state_dict(model, out, drop_prefixes=(r.head,))  # simclr/hybrid heads are separate modules
        loaded = wc.build_encoder(r.model, 0, out)
        print(
            f"[{which}] {r.model} test acc {acc}; saved {out} ({out.stat().st_size / 1e6:.2f} MB, "
            f"feature width {loaded.num_features})"
        )
    print(f"[encoders] total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
