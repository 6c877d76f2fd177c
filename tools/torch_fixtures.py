"""Writes the PyTorch fixtures of tests/torch_parity.rs: state_dicts that
PyTorch itself saved for cinder-cnn's two networks, and what PyTorch computes
with them, so the test can check that cinder loads them and gives the same
numbers.

    python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch==2.5.1 safetensors numpy
    /tmp/torch/bin/python tools/torch_fixtures.py tests/fixtures

For each network NAME it writes:
- NAME.safetensors: `model.state_dict()` after a few SGD steps in training
  mode (so batch-norm statistics and num_batches_tracked are not their
  initial values), saved with `safetensors.torch.save_file`, the way a user
  exports a PyTorch model for cinder.
- NAME.pt: the same state_dict saved with `torch.save(model.state_dict())`,
  PyTorch's own format (for the LeNet; the ResNet's is saved inside a
  dictionary, `{"model": state_dict, "epoch": 3}`, as training scripts do).
- half_weights.pt: a `Linear(2, 3)` state_dict in half precision (weight in
  float16, bias in bfloat16), for the dtype conversion on load.
- torch_lstm / torch_gru (.pt and .safetensors): the state_dicts of a
  2-layer bidirectional `nn.LSTM(5, 6, batch_first=True)` and a
  `nn.GRU(5, 7, batch_first=True)`, and NAME_expected.safetensors: `x`
  `[3, 8, 5]`, `lengths`, `h0` (and `c0`), the packed run's padded
  `output`, `h_n` (and `c_n`), the loss `sum(output * w_out) + sum(h_n *
  w_h)` (and `+ sum(c_n * w_c)`) with its weights, and the gradients of
  every parameter, of `x`, `h0` and `c0`.
- NAME_expected.safetensors: `x` (the input), `y` (the labels), `eval_logits`
  (the model in eval mode on x), and from one training-mode forward and
  backward on (x, y): `train_logits`, `loss` (mean cross-entropy),
  `grad.<parameter>` for every parameter and `after.<buffer>` for every
  buffer (batch norm's running statistics after that forward).
"""

import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file


def lenet(height, width, classes):
    """cinder_cnn's LeNet: the same layers, numbered as in this Sequential."""
    flat = 64 * (height // 4) * (width // 4)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, 128),
        nn.ReLU(),
        nn.Linear(128, classes),
    )


class BasicBlock(nn.Module):
    """torchvision's BasicBlock, spelled out."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(y + shortcut)


class ResNet(nn.Module):
    """cinder_cnn's small ResNet: 3x3 stem, stages of 16, 32, 64 channels."""

    def __init__(self, in_channels, classes):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = nn.Sequential(BasicBlock(16, 16, 1))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, 2))
        self.layer3 = nn.Sequential(BasicBlock(32, 64, 2))
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.layer3(self.layer2(self.layer1(y)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def write(out_dir, name, model, shape, classes, nested_pt=False):
    gen = torch.Generator().manual_seed(7)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(3):
        xb = torch.randn((8, *shape), generator=gen)
        yb = torch.randint(0, classes, (8,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(out_dir, f"{name}.safetensors"))
    if nested_pt:
        checkpoint = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}
        torch.save(checkpoint, os.path.join(out_dir, f"{name}.pt"))
    else:
        torch.save(model.state_dict(), os.path.join(out_dir, f"{name}.pt"))

    x = torch.randn((3, *shape), generator=gen)
    y = torch.randint(0, classes, (3,), generator=gen)
    expected = {"x": x, "y": y.to(torch.int32)}
    model.eval()
    with torch.no_grad():
        expected["eval_logits"] = model(x)
    model.train()
    model.zero_grad()
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    expected["train_logits"] = logits.detach()
    expected["loss"] = loss.detach().reshape(1)
    for k, p in model.named_parameters():
        expected[f"grad.{k}"] = p.grad.detach().clone()
    for k, b in model.named_buffers():
        expected[f"after.{k}"] = b.detach().clone()
    expected = {k: v.contiguous() for k, v in expected.items()}
    save_file(expected, os.path.join(out_dir, f"{name}_expected.safetensors"))


def write_recurrent(out_dir, name, layer):
    gen = torch.Generator().manual_seed(11)
    state = {k: v.detach().clone().contiguous() for k, v in layer.state_dict().items()}
    save_file(state, os.path.join(out_dir, f"{name}.safetensors"))
    torch.save(layer.state_dict(), os.path.join(out_dir, f"{name}.pt"))
    slots = layer.num_layers * (2 if layer.bidirectional else 1)
    hidden = layer.hidden_size
    x = torch.randn((3, 8, layer.input_size), generator=gen, requires_grad=True)
    lengths = torch.tensor([8, 5, 3])
    h0 = torch.randn((slots, 3, hidden), generator=gen, requires_grad=True)
    lstm = isinstance(layer, nn.LSTM)
    c0 = torch.randn((slots, 3, hidden), generator=gen, requires_grad=True) if lstm else None
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, state = layer(packed, (h0, c0) if lstm else h0)
    output, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=8)
    h_n, c_n = state if lstm else (state, None)
    w_out = torch.randn(output.shape, generator=gen)
    w_h = torch.randn(h_n.shape, generator=gen)
    loss = (output * w_out).sum() + (h_n * w_h).sum()
    expected = {"x": x.detach(), "lengths": lengths.to(torch.int32), "h0": h0.detach()}
    if lstm:
        w_c = torch.randn(c_n.shape, generator=gen)
        loss = loss + (c_n * w_c).sum()
        expected.update({"c0": c0.detach(), "c_n": c_n.detach(), "w_c": w_c})
    layer.zero_grad()
    loss.backward()
    expected.update(
        {
            "output": output.detach(),
            "h_n": h_n.detach(),
            "w_out": w_out,
            "w_h": w_h,
            "loss": loss.detach().reshape(1),
            "grad.x": x.grad,
            "grad.h0": h0.grad,
        }
    )
    if lstm:
        expected["grad.c0"] = c0.grad
    for k, p in layer.named_parameters():
        expected[f"grad.{k}"] = p.grad.detach().clone()
    expected = {k: v.contiguous() for k, v in expected.items()}
    save_file(expected, os.path.join(out_dir, f"{name}_expected.safetensors"))


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    write(out_dir, "torch_lenet", lenet(8, 8, 10), (1, 8, 8), 10)
    torch.manual_seed(1)
    write(out_dir, "torch_resnet", ResNet(3, 10), (3, 12, 12), 10, nested_pt=True)
    half = {
        "0.weight": torch.tensor([[1.5, -2.0], [0.333984375, 65504.0], [-0.0, 3.0]], dtype=torch.float16),
        "0.bias": torch.tensor([1.0, -3.5, 0.0078125], dtype=torch.bfloat16),
    }
    torch.save(half, os.path.join(out_dir, "half_weights.pt"))
    torch.manual_seed(2)
    write_recurrent(
        out_dir,
        "torch_lstm",
        nn.LSTM(5, 6, num_layers=2, batch_first=True, bidirectional=True),
    )
    torch.manual_seed(3)
    write_recurrent(out_dir, "torch_gru", nn.GRU(5, 7, batch_first=True))


if __name__ == "__main__":
    main()
