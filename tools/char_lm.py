"""PyTorch's LSTM on `cinder train rnn --task char-lm`'s recipe, to tell what
the recipe can reach from what cinder's kernels reach.

Same text (the regular files of /usr/share/common-licenses in name order,
the last 10% held out), the same model (embedding, stacked LSTM, dropout,
linear head), AdamW with decoupled weight decay 0.01, a cosine schedule
stepped per epoch, the same two held-out readings: 16 stretches with the
state carried (`test_bits_per_char`) and zero-state windows
(`test_bits_per_char_windows`). `--windows` trains on shuffled zero-state
windows instead of stretches with the state carried (cinder before
training carried its state).

    pip install torch
    python3 tools/char_lm.py [--epochs 4] [--hidden 256] [--dropout 0.2] ...
"""

import argparse
import math
import os
import random
import time

import torch
from torch import nn

TEXT_DIR = "/usr/share/common-licenses"
HELD_OUT_STREAMS = 16


def corpus():
    names = sorted(
        n
        for n in os.listdir(TEXT_DIR)
        if os.path.isfile(os.path.join(TEXT_DIR, n))
        and not os.path.islink(os.path.join(TEXT_DIR, n))
    )
    text = "".join(open(os.path.join(TEXT_DIR, n), encoding="utf-8").read() for n in names)
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in text])
    cut = len(ids) - len(ids) // 10
    return ids[:cut], ids[cut:], len(vocab)


class CharLm(nn.Module):
    def __init__(self, vocab, args):
        super().__init__()
        self.embedding = nn.Embedding(vocab, args.embedding)
        self.rnn = nn.LSTM(
            args.embedding, args.hidden, args.layers, batch_first=True, dropout=args.dropout
        )
        self.dropout = nn.Dropout(args.dropout)
        self.head = nn.Linear(args.hidden, vocab)

    def forward(self, x, state=None):
        out, state = self.rnn(self.embedding(x), state)
        return self.head(self.dropout(out)), state


def loss_of(model, x, y, state=None):
    scores, state = model(x, state)
    return nn.functional.cross_entropy(scores.reshape(-1, scores.shape[-1]), y.reshape(-1)), state


def streamed_bits(model, text, steps):
    """Held-out text as 16 stretches side by side, the state carried."""
    model.eval()
    length = (len(text) - 1) // HELD_OUT_STREAMS
    rows = torch.stack([text[s * length : (s + 1) * length + 1] for s in range(HELD_OUT_STREAMS)])
    nats, chars, state = 0.0, 0, None
    with torch.no_grad():
        for start in range(0, length, steps):
            end = min(start + steps, length)
            loss, state = loss_of(model, rows[:, start:end], rows[:, start + 1 : end + 1], state)
            nats += loss.item() * rows.shape[0] * (end - start)
            chars += rows.shape[0] * (end - start)
    model.train()
    return nats / chars / math.log(2)


def window_bits(model, text, steps):
    """Held-out text as windows of `steps`, each from a zero state."""
    model.eval()
    starts = list(range(0, len(text) - steps, steps))
    nats, chars = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(starts), 64):
            batch = starts[i : i + 64]
            x = torch.stack([text[s : s + steps] for s in batch])
            y = torch.stack([text[s + 1 : s + steps + 1] for s in batch])
            loss, _ = loss_of(model, x, y)
            nats += loss.item() * y.numel()
            chars += y.numel()
    model.train()
    return nats / chars / math.log(2)


def stream_batches(text, streams, steps, rng):
    """As cinder's `stream_starts`: stretches without gaps from an offset
    below `steps`, as many chunks every epoch."""
    chunks = (len(text) - steps) // streams // steps
    offset = rng.randrange(steps)
    stretch = chunks * steps
    for chunk in range(chunks):
        at = [offset + s * stretch + chunk * steps for s in range(streams)]
        x = torch.stack([text[a : a + steps] for a in at])
        y = torch.stack([text[a + 1 : a + steps + 1] for a in at])
        yield x, y, chunk > 0


def window_batches(text, batch, steps, rng):
    offset = rng.randrange(steps)
    starts = list(range(offset, len(text) - steps, steps))
    rng.shuffle(starts)
    for i in range(0, len(starts), batch):
        at = starts[i : i + batch]
        x = torch.stack([text[a : a + steps] for a in at])
        y = torch.stack([text[a + 1 : a + steps + 1] for a in at])
        yield x, y, False


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--embedding", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=6e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--clip-grad", type=float, default=1.0)
    p.add_argument("--windows", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    train, held_out, vocab = corpus()
    model = CharLm(vocab, args)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    started = time.time()
    for epoch in range(args.epochs):
        if args.windows:
            batches = window_batches(train, args.batch_size, args.steps, rng)
        else:
            batches = stream_batches(train, args.batch_size, args.steps, rng)
        state = None
        for x, y, continues in batches:
            loss, state = loss_of(model, x, y, state if continues else None)
            state = tuple(s.detach() for s in state)
            opt.zero_grad()
            loss.backward()
            if args.clip_grad > 0:
                nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            opt.step()
        schedule.step()
        print(
            f"epoch {epoch + 1}: test_bits_per_char {streamed_bits(model, held_out, args.steps):.3f}"
            f" windows {window_bits(model, held_out, args.steps):.3f}"
            f" ({time.time() - started:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
