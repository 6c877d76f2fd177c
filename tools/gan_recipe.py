"""The DCGAN recipe of `cinder train gan`, run in PyTorch and measured with
cinder's own judge: a fast check of what the recipe can reach on the shipped
MNIST subset, apart from cinder.

cinder's DCGAN matches PyTorch step for step (tests/torch_parity.rs), so a
recipe's quality can be explored here in minutes, where a 25-epoch run on a
software adapter takes an hour. The figures it prints are the ones
`cinder train gan` writes to metrics.csv: the Fréchet distance between the
judge's 128 penultimate features of 1000 held-out real digits and 1000
generated ones, the rarest and commonest class among the generated digits,
and the share the judge calls with at least 90% confidence.

    pip install torch safetensors numpy
    cargo run --release -p cinder-cli -- train gan --epochs 1 --out runs/gan   # trains the judge
    python3 tools/gan_recipe.py --judge runs/gan/judge/model.safetensors [--batch 32] [--g1 256 --g2 128] ...

The networks are cinder's GanSpec::dcgan(28, 100) (PyTorch's DCGAN example
laid out for 28x28), with the widths as options; the recipe is DCGAN's: BCE
on logits, Adam 2e-4 with betas (0.5, 0.999) for both networks, the
discriminator on a real batch and on the detached generated one, then the
generator against the updated discriminator on the same generated batch.
"""

import argparse
import gzip
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.numpy import load_file

DATA = "crates/cinder-data/data/mnist-5k/"
LATENT = 100


def read_idx(path):
    raw = gzip.open(path).read()
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(raw[3])]
    return np.frombuffer(raw[4 + 4 * raw[3] :], np.uint8).reshape(dims)


class Judge(nn.Module):
    """cinder's LeNet (`cinder train cnn --model lenet`): its layers 0, 3, 7
    and 9 hold the weights."""

    def __init__(self, weights):
        super().__init__()
        self.c0 = nn.Conv2d(1, 32, 3, padding=1)
        self.c3 = nn.Conv2d(32, 64, 3, padding=1)
        self.l7 = nn.Linear(3136, 128)
        self.l9 = nn.Linear(128, 10)
        with torch.no_grad():
            for name, index in (("c0", "0"), ("c3", "3"), ("l7", "7"), ("l9", "9")):
                getattr(self, name).weight.copy_(torch.tensor(weights[index + ".weight"]))
                getattr(self, name).bias.copy_(torch.tensor(weights[index + ".bias"]))

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c0(x)), 2)
        x = F.max_pool2d(F.relu(self.c3(x)), 2)
        features = F.relu(self.l7(x.flatten(1)))
        return features, self.l9(features)


def gaussian(features):
    f = features.double()
    return f.mean(0), torch.cov(f.T)


def frechet(a, b):
    (m1, c1), (m2, c2) = a, b
    root = torch.linalg.eigvals(c1 @ c2).real.clamp(min=0).sqrt().sum()
    return float(((m1 - m2) ** 2).sum() + torch.trace(c1) + torch.trace(c2) - 2 * root)


def networks(args):
    g = nn.Sequential(
        nn.ConvTranspose2d(LATENT, args.g1, 7, 1, 0, bias=False), nn.BatchNorm2d(args.g1), nn.ReLU(),
        nn.ConvTranspose2d(args.g1, args.g2, 4, 2, 1, bias=False), nn.BatchNorm2d(args.g2), nn.ReLU(),
        nn.ConvTranspose2d(args.g2, 1, 4, 2, 1, bias=False), nn.Tanh(),
    )
    d = [nn.Conv2d(1, args.d1, 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
    d += [nn.Dropout(args.dropout)] if args.dropout else []
    d += [nn.Conv2d(args.d1, args.d2, 4, 2, 1, bias=False), nn.BatchNorm2d(args.d2), nn.LeakyReLU(0.2)]
    d += [nn.Dropout(args.dropout)] if args.dropout else []
    d += [nn.Flatten(), nn.Linear(args.d2 * 49, 1)]
    d = nn.Sequential(*d)
    for m in list(g.modules()) + list(d.modules()):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1, 0.02)
            nn.init.zeros_(m.bias)
    return g, d


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--judge", required=True, help="a cinder LeNet model.safetensors on 28x28 digits")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--every", type=int, default=5, help="measure every N epochs")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--smoothing", type=float, default=0.0, help="one-sided: real target 1 - s")
    p.add_argument("--g1", type=int, default=128)
    p.add_argument("--g2", type=int, default=64)
    p.add_argument("--d1", type=int, default=64)
    p.add_argument("--d2", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)

    train = torch.tensor(read_idx(DATA + "train-images-idx3-ubyte.gz"), dtype=torch.float32)
    held = torch.tensor(read_idx(DATA + "t10k-images-idx3-ubyte.gz"), dtype=torch.float32)
    real_images = train.div(255).unsqueeze(1) * 2 - 1
    judge = Judge(load_file(args.judge)).eval()
    with torch.no_grad():
        features, logits = judge(held.div(255).unsqueeze(1))
        real = gaussian(features)
        confident = float((logits.softmax(1).max(1).values >= 0.9).float().mean())
    print(f"held-out real digits called with 90% confidence: {confident:.3f}")

    g, d = networks(args)
    g_opt = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    started, steps = time.time(), 0
    for epoch in range(1, args.epochs + 1):
        g.train()
        d.train()
        order = torch.randperm(len(real_images))
        for i in range(0, len(order) - args.batch + 1, args.batch):
            batch = real_images[order[i : i + args.batch]]
            n = len(batch)
            fake = g(torch.randn(n, LATENT, 1, 1))
            d_opt.zero_grad()
            d_loss = bce(d(batch).squeeze(1), torch.full((n,), 1 - args.smoothing))
            d_loss = d_loss + bce(d(fake.detach()).squeeze(1), torch.zeros(n))
            d_loss.backward()
            d_opt.step()
            g_opt.zero_grad()
            bce(d(fake).squeeze(1), torch.ones(n)).backward()
            g_opt.step()
            steps += 1
        if epoch % args.every and epoch != args.epochs:
            continue
        g.eval()
        with torch.no_grad():
            features, logits = judge(g(torch.randn(1000, LATENT, 1, 1)).add(1).mul(0.5))
            calls = logits.softmax(1)
            share = torch.bincount(calls.argmax(1), minlength=10).float() / 1000
            confident = float((calls.max(1).values >= 0.9).float().mean())
            distance = frechet(gaussian(features), real)
        print(
            f"epoch {epoch:3d} ({steps} steps, {time.time() - started:.0f} s): Fréchet distance {distance:7.1f}, "
            f"classes {float(share.min()):.1%} to {float(share.max()):.1%}, called with 90% {confident:.1%}",
            flush=True,
        )


if __name__ == "__main__":
    main()
