"""CNN basics with conv_ext: tensors, one convolution, the output-size formula, then a small CNN
trained with plain gradient descent on real handwritten digits.

    python examples/cnn_basics.py                 # about a minute on 2 CPU cores
    python examples/cnn_basics.py --epochs 3 --out /tmp/cnn

The data set is scikit-learn's 8x8 digits (1797 images, 10 classes), which ships inside the
scikit-learn package: nothing is downloaded. The same network is trained twice from the same
initial weights and batches, once with conv_ext.Conv2d and once with torch.nn.Conv2d, and the
two runs are printed side by side. Writes loss.png (both loss curves) and filters.png (the 16
learned first-layer filters) into --out.
"""
import argparse
import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import conv_ext


def section(title):
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)))


# ---------------------------------------------------------------------------------------------
# 1-3: tensors, a convolution, the output size
# ---------------------------------------------------------------------------------------------
def basics():
    section("1. Images are tensors of shape (N, C, H, W)")
    x = torch.randn(1, 3, 8, 8)
    print("x = torch.randn(1, 3, 8, 8)")
    print(f"  N={x.shape[0]} image, C={x.shape[1]} channels (red, green, blue), H={x.shape[2]} rows, W={x.shape[3]} columns")

    section("2. A convolution layer: 16 filters of 3x3 over 3 channels")
    torch.manual_seed(0)
    conv = conv_ext.Conv2d(3, 16, 3, 1, 1)  # in_channels, out_channels, kernel_size, stride, padding
    y = conv(x)
    print("conv = conv_ext.Conv2d(3, 16, 3, 1, 1)     # exactly nn.Conv2d's arguments")
    print(f"  weight {tuple(conv.weight.shape)}: one (3, 3, 3) filter per output channel")
    print(f"  bias   {tuple(conv.bias.shape)}: one number per output channel")
    print(f"  y = conv(x) -> {tuple(y.shape)}: 16 feature maps, each 8x8")
    # each output value is a dot product of one filter with one 3x3x3 window of the input (+ bias)
    window = F.pad(x, (1, 1, 1, 1))[0, :, 2:5, 4:7]  # padded input around output position (2, 4)
    by_hand = (conv.weight[5] * window).sum() + conv.bias[5]
    print(f"  y[0, 5, 2, 4] = {y[0, 5, 2, 4].item():+.5f}; by hand, filter 5 . window + bias = {by_hand.item():+.5f}")
    ref = nn.Conv2d(3, 16, 3, 1, 1)
    ref.load_state_dict(conv.state_dict())
    print(f"  same as torch.nn.Conv2d: max |difference| = {(ref(x) - y).abs().max().item():.1e}")

    section("3. Output size: P = (H + 2*padding - dilation*(R - 1) - 1) // stride + 1")
    for h, r, stride, padding in [(8, 3, 1, 1), (8, 3, 1, 0), (8, 3, 2, 1), (28, 5, 1, 0), (224, 7, 2, 3)]:
        p = (h + 2 * padding - (r - 1) - 1) // stride + 1
        got = conv_ext.conv2d(torch.zeros(1, 1, h, h), torch.zeros(1, 1, r, r), stride=stride, padding=padding)
        print(f"  H={h:3d} R={r} stride={stride} padding={padding} -> P = ({h} + {2 * padding} - {r - 1} - 1) // {stride} + 1"
              f" = {p:3d}   conv_ext gives {got.shape[-1]}")
        assert got.shape[-1] == p


# ---------------------------------------------------------------------------------------------
# 4: a small CNN on real digits
# ---------------------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    """(N, 1, 8, 8) -> conv 3x3 (16) -> ReLU -> conv 3x3 stride 2 (32) -> ReLU -> (N, 32, 4, 4) -> linear -> 10."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def load_digits(seed):
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:
        raise SystemExit("this example needs scikit-learn (pip install scikit-learn): it ships the digits data") from e
    data = sk_load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8), pixels 0..1
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    n_test = 360
    return (x[n_test:], y[n_test:]), (x[:n_test], y[:n_test])


def train(model, train_set, test_set, epochs, lr, batch_size, seed):
    """Plain mini-batch gradient descent: w <- w - lr * dL/dw, no momentum, no optimizer object."""
    (x, y), (xt, yt) = train_set, test_set
    gen = torch.Generator().manual_seed(seed)  # the same batches for both runs
    losses = []
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            model.zero_grad()
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= lr * p.grad
            total += loss.item() * len(idx)
        losses.append(total / len(x))
    seconds = time.perf_counter() - start
    with torch.no_grad():
        accuracy = (model(xt).argmax(1) == yt).float().mean().item()
    return losses, accuracy, seconds


def save_loss_plot(path, runs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (name, (losses, acc, _)), style in zip(runs.items(), ["-o", "--x"]):
        ax.plot(range(1, len(losses) + 1), losses, style, label=f"{name} (test accuracy {acc:.1%})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (cross-entropy)")
    ax.set_title("SmallCNN on scikit-learn digits, plain gradient descent")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_filter_plot(path, weight):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = weight.shape[0]
    fig, axes = plt.subplots(2, (k + 1) // 2, figsize=(k * 0.6, 2.8))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < k:
            ax.imshow(weight[i, 0].numpy(), cmap="gray")
            ax.set_title(str(i), fontsize=8)
    fig.suptitle("learned first-layer filters (conv1: 16 x 1 x 3 x 3)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "output"), help="folder for the PNGs")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    basics()

    section("4. A small CNN on scikit-learn's 8x8 digits")
    train_set, test_set = load_digits(args.seed)
    print(f"  {len(train_set[0])} training and {len(test_set[0])} test images of shape {tuple(train_set[0].shape[1:])}, "
          f"10 classes")
    torch.manual_seed(args.seed)
    with_nn = SmallCNN()
    with_ext = conv_ext.convert(copy.deepcopy(with_nn))  # same initial weights, convs computed by conv_ext
    print(f"  {type(with_ext.conv1).__module__}.{type(with_ext.conv1).__name__} vs {type(with_nn.conv1).__module__}."
          f"{type(with_nn.conv1).__name__}; lr={args.lr}, batch {args.batch_size}, {args.epochs} epochs")
    runs = {}
    for name, model in (("conv_ext.Conv2d", with_ext), ("nn.Conv2d", with_nn)):
        runs[name] = train(model, train_set, test_set, args.epochs, args.lr, args.batch_size, args.seed)

    print(f"\n  {'epoch':>5}  {'loss conv_ext':>13}  {'loss nn.Conv2d':>14}")
    for epoch, (a, b) in enumerate(zip(runs["conv_ext.Conv2d"][0], runs["nn.Conv2d"][0]), 1):
        print(f"  {epoch:5d}  {a:13.4f}  {b:14.4f}")
    for name, (losses, acc, seconds) in runs.items():
        print(f"  {name:16s} test accuracy {acc:6.1%}   loss {losses[0]:.3f} -> {losses[-1]:.3f}   {seconds:5.1f} s")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        save_loss_plot(out / "loss.png", runs)
        save_filter_plot(out / "filters.png", with_ext.conv1.weight.detach())
        print(f"\n  wrote {out / 'loss.png'} and {out / 'filters.png'}")
    except ImportError:
        print("\n  (matplotlib is not installed: no plots)")
    return runs


if __name__ == "__main__":
    main()
