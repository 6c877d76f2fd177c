"""Writes the PyTorch fixtures of the DCGAN parity test: state_dicts that
PyTorch itself saved for a DCGAN generator and discriminator (unconditional
and label-conditioned), and what PyTorch computes with them, so the test can
check that cinder loads them and gives the same numbers.

    pip install torch safetensors numpy
    python3 tools/gan_fixtures.py tests/fixtures

(The files in tests/fixtures were written with torch 2.15.0 on the CPU;
reruns give identical files.)

The models follow PyTorch's DCGAN example, with these module names (so the
state_dict keys read `main.0.weight`, `main.1.running_mean`,
`label_embedding.weight`, ...):

- Generator(nz, base, classes): `label_embedding` = Embedding(classes,
  classes) when conditional, concatenated to z; `main` = ConvTranspose2d(nz +
  classes, 128, base, 1, 0) (0), BatchNorm2d(128) (1), ReLU (2),
  ConvTranspose2d(128, 64, 4, 2, 1) (3), BatchNorm2d(64) (4), ReLU (5),
  ConvTranspose2d(64, 1, 4, 2, 1) (6), Tanh (7); convolutions without bias.
  z `[B, nz]` -> images `[B, 1, 4 * base, 4 * base]`.
- Discriminator(base, classes): `label_embedding` = Embedding(classes, size *
  size) when conditional, viewed as a second image channel; `main` =
  Conv2d(1 (+1), 64, 4, 2, 1) (0), LeakyReLU(0.2) (1), Conv2d(64, 128, 4, 2,
  1) (2), BatchNorm2d(128) (3), LeakyReLU(0.2) (4), Flatten (5),
  Linear(128 * base * base, 1) (6); convolutions without bias.
  images -> logits `[B]`.

Weights as in the DCGAN paper: convolution weights normal(0, 0.02), batch
norm weight normal(1, 0.02) and bias 0, Linear and Embedding PyTorch's
defaults. Batch norm keeps PyTorch's defaults, eps 1e-5 and momentum 0.1.
Then 2 steps of ordinary GAN training in training mode on random data (batch
8, images uniform in [-1, 1]), Adam lr 2e-4 betas (0.5, 0.999) for each
network, BCE with logits: D on real (target 1) and on the detached G(z)
(target 0), then G with D(G(z)) against target 1. So the batch-norm running
statistics and num_batches_tracked are not their initial values.

The cases: `torch_dcgan` (unconditional, nz 100, base 7: 28x28 images) and
`torch_cdcgan` (10 classes, nz 16, base 2: 8x8 images). For each NAME it
writes:
- NAME_g.safetensors (conditional only), NAME_d.safetensors: the trained
  generator's and discriminator's `state_dict()`, saved with
  `safetensors.torch.save_file` (float32, num_batches_tracked int64).
- torch_dcgan_g.pt (unconditional only, instead of its .safetensors, to
  keep the repository small): the generator's state_dict saved with
  `torch.save(G.state_dict())`, PyTorch's own zip format.
- NAME_expected.safetensors, for a batch of B = 5 (float32 unless noted):
  - `z` `[B, nz]`; `labels` `[B]` int64 (conditional only, classes 0..9,
    several distinct); `images` `[B, 1, size, size]` uniform in [-1, 1].
  - `g_eval`: G in eval mode on (z, labels); `d_eval`: D in eval mode on
    (images, labels).
  - From training mode, on copies of the saved state (so the buffers start
    at the saved values), these forwards in this order:
    (a) `d_train` = D(images, labels);
    (b) fake = G(z, labels), saved as `g_train`;
    (c) D(fake.detach(), labels); `loss_d` = BCE(a, ones) + BCE(c, zeros)
        (each the mean over the batch), shape [1]; backward; `d_grad.<param>`
        for every D parameter; then all gradients zeroed;
    (d) `loss_g` = BCE(D(fake, labels), ones), the same fake as (b), not
        recomputed, shape [1]; backward; `g_grad.<param>` for every G
        parameter, but the unconditional `main.0.weight` (2.5 MB; the
        conditional case checks that layer's gradient).
    So G's batch norms ran once (b) and D's three times (a, c, d).
  - `g_after.<buffer>`, `d_after.<buffer>`: every running_mean and
    running_var of G and D after (d).
"""

import copy
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

TRAIN_BATCH = 8
BATCH = 5


class Generator(nn.Module):
    """The DCGAN generator; base 7 for 28x28 images, 2 for 8x8."""

    def __init__(self, nz, base, classes=0):
        super().__init__()
        self.classes = classes
        if classes:
            self.label_embedding = nn.Embedding(classes, classes)
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz + classes, 128, base, 1, 0, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(True),
            nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(True),
            nn.ConvTranspose2d(64, 1, 4, 2, 1, bias=False),
            nn.Tanh(),
        )

    def forward(self, z, labels=None):
        if self.classes:
            z = torch.cat([z, self.label_embedding(labels)], 1)
        return self.main(z[:, :, None, None])


class Discriminator(nn.Module):
    """The DCGAN discriminator: images [B, 1, 4 * base, 4 * base] -> logits [B]."""

    def __init__(self, base, classes=0):
        super().__init__()
        self.classes = classes
        self.size = 4 * base
        if classes:
            self.label_embedding = nn.Embedding(classes, self.size * self.size)
        self.main = nn.Sequential(
            nn.Conv2d(1 + (1 if classes else 0), 64, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(64, 128, 4, 2, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.LeakyReLU(0.2, True),
            nn.Flatten(),
            nn.Linear(128 * base * base, 1),
        )

    def forward(self, x, labels=None):
        if self.classes:
            planes = self.label_embedding(labels).view(-1, 1, self.size, self.size)
            x = torch.cat([x, planes], 1)
        return self.main(x).view(-1)


def dcgan_init(module):
    """The DCGAN paper's initialisation; Linear and Embedding keep PyTorch's."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def bce(logits, target):
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def batch(gen, n, nz, size, classes):
    """Noise, labels (None when unconditional) and real-like images."""
    z = torch.randn((n, nz), generator=gen)
    labels = torch.randint(0, classes, (n,), generator=gen) if classes else None
    images = torch.rand((n, 1, size, size), generator=gen) * 2 - 1
    return z, labels, images


def train(g, d, gen, nz, size, classes, steps=2):
    """Ordinary GAN training: a D step on real and detached fake, then a G step."""
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    g.train()
    d.train()
    for _ in range(steps):
        z, labels, images = batch(gen, TRAIN_BATCH, nz, size, classes)
        fake = g(z, labels)
        opt_d.zero_grad()
        loss_d = bce(d(images, labels), 1.0) + bce(d(fake.detach(), labels), 0.0)
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad()
        bce(d(fake, labels), 1.0).backward()
        opt_g.step()


def state(model):
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def running_stats(model, prefix):
    return {
        f"{prefix}.{k}": b.detach().clone()
        for k, b in model.named_buffers()
        if k.endswith("running_mean") or k.endswith("running_var")
    }


def expected_outputs(g, d, gen, nz, size, classes):
    """What PyTorch computes with the saved G and D (see the module docstring)."""
    z, labels, images = batch(gen, BATCH, nz, size, classes)
    expected = {"z": z, "images": images}
    if classes:
        expected["labels"] = labels
    g.eval()
    d.eval()
    with torch.no_grad():
        expected["g_eval"] = g(z, labels)
        expected["d_eval"] = d(images, labels)

    g, d = copy.deepcopy(g), copy.deepcopy(d)
    g.train()
    d.train()
    g.zero_grad()
    d.zero_grad()
    d_real = d(images, labels)  # (a)
    fake = g(z, labels)  # (b)
    d_fake = d(fake.detach(), labels)  # (c)
    loss_d = bce(d_real, 1.0) + bce(d_fake, 0.0)
    loss_d.backward()
    expected["d_train"] = d_real.detach()
    expected["g_train"] = fake.detach()
    expected["loss_d"] = loss_d.detach().reshape(1)
    for k, p in d.named_parameters():
        expected[f"d_grad.{k}"] = p.grad.detach().clone()
    g.zero_grad()
    d.zero_grad()
    loss_g = bce(d(fake, labels), 1.0)  # (d)
    loss_g.backward()
    expected["loss_g"] = loss_g.detach().reshape(1)
    for k, p in g.named_parameters():
        if classes or k != "main.0.weight":
            expected[f"g_grad.{k}"] = p.grad.detach().clone()
    expected.update(running_stats(g, "g_after"))
    expected.update(running_stats(d, "d_after"))
    return {k: v.contiguous() for k, v in expected.items()}


def write(out_dir, name, nz, base, classes, seed, pt=False):
    torch.manual_seed(seed)
    g = Generator(nz, base, classes)
    d = Discriminator(base, classes)
    g.apply(dcgan_init)
    d.apply(dcgan_init)
    gen = torch.Generator().manual_seed(seed + 100)
    size = 4 * base
    train(g, d, gen, nz, size, classes)
    paths = [os.path.join(out_dir, f"{name}_d.safetensors")]
    save_file(state(d), paths[-1])
    if pt:
        paths.append(os.path.join(out_dir, f"{name}_g.pt"))
        torch.save(g.state_dict(), paths[-1])
    else:
        paths.append(os.path.join(out_dir, f"{name}_g.safetensors"))
        save_file(state(g), paths[-1])
    paths.append(os.path.join(out_dir, f"{name}_expected.safetensors"))
    save_file(expected_outputs(g, d, gen, nz, size, classes), paths[-1])
    return paths


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    os.makedirs(out_dir, exist_ok=True)
    paths = write(out_dir, "torch_dcgan", nz=100, base=7, classes=0, seed=20, pt=True)
    paths += write(out_dir, "torch_cdcgan", nz=16, base=2, classes=10, seed=21)
    for path in paths:
        print(f"{os.path.getsize(path):>9}  {path}")


if __name__ == "__main__":
    main()
