"""dst's seven models in PyTorch, under the names `dst export` writes, and a check of an export.

    from dst_models import build, load_export
    model = build("vgg16")                                   # lenet300, lenet5, lstm-a, lstm-b,
    model.load_state_dict(load_export("a.safetensors"))      # vgg16, wrn-16-8, wrn-16-1
    model.eval()                                             # batch norms: running statistics

`load_export` reads either format (`--format dense` or `csr`: CSR triplets expanded over each
weight's row view). Inputs as dst reads them: MNIST pixels / 255 (LeNet-300-100 flattens, LeNet-5
takes 1x28x28, the LSTMs 28 steps of 28 pixels); CIFAR-10 pixels / 255 normalised per channel
with mean (0.4914, 0.4822, 0.4465) and std (0.2023, 0.1994, 0.2010).

As a script it checks an export against `dst infer` (needs torch, numpy, safetensors):

    dst infer a.safetensors [--data DIR] --out pred.csv
    python3 tests/pytorch/dst_models.py a.safetensors pred.csv [--data DIR]

It loads the export with strict=True into the model here, classifies the same test images and
prints the largest logit difference and how many predictions agree; it exits non-zero when a
logit differs by more than 1e-4 (1 + |logit|). Without --data it reads the embedded MNIST
subset (assets/mnist-subset); CIFAR-10 exports need --data (the folder with test_batch.bin).
"""

import argparse
import csv
import gzip
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

BN_EPS = 1e-5
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


class LeNet300(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(784, 300), nn.Linear(300, 100), nn.Linear(100, 10)

    def forward(self, x):
        h = F.relu(self.fc1(x.reshape(-1, 784)))
        return self.fc3(F.relu(self.fc2(h)))


class LeNet5(nn.Module):
    """LeNet-5-Caffe: conv 5x5 20, ReLU, max-pool 2, conv 5x5 50, ReLU, max-pool 2, FC 800-500-10."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5)
        self.fc3, self.fc4 = nn.Linear(800, 500), nn.Linear(500, 10)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.conv1(x.reshape(-1, 1, 28, 28))), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return self.fc4(F.relu(self.fc3(h.reshape(-1, 800))))


class LSTMNet(nn.Module):
    """Each image as 28 steps of 28 pixels through two LSTM layers (zero initial states), the FC
    on the last step's output."""

    def __init__(self, hidden):
        super().__init__()
        self.lstm1 = nn.LSTM(28, hidden, batch_first=True)
        self.lstm2 = nn.LSTM(hidden, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, 10)

    def forward(self, x):
        h, _ = self.lstm1(x.reshape(-1, 28, 28))
        h, _ = self.lstm2(h)
        return self.fc(h[:, -1])


class VGG(nn.Module):
    """VGG-16: 13 x (conv 3x3 pad 1 without bias, batch norm, ReLU), max-pools after convs 2, 4,
    7 and 10, average pool 2, FC 512-512, batch norm 1d, ReLU, FC 512-10."""

    def __init__(self):
        super().__init__()
        c_in, n = 3, 0
        for c in VGG16:
            if c != "M":
                n += 1
                setattr(self, f"conv{n}", nn.Conv2d(c_in, c, 3, 1, 1, bias=False))
                setattr(self, f"bn{n}", nn.BatchNorm2d(c, eps=BN_EPS))
                c_in = c
        self.fc1, self.bn14, self.fc2 = nn.Linear(512, 512), nn.BatchNorm1d(512, eps=BN_EPS), nn.Linear(512, 10)

    def forward(self, x):
        n = 0
        for c in VGG16:
            if c == "M":
                x = F.max_pool2d(x, 2)
            else:
                n += 1
                x = F.relu(getattr(self, f"bn{n}")(getattr(self, f"conv{n}")(x)))
        x = F.avg_pool2d(x, 2).flatten(1)
        return self.fc2(F.relu(self.bn14(self.fc1(x))))


class PreActBlock(nn.Module):
    """bn1, ReLU, conv1 (stride), bn2, ReLU, conv2; the shortcut a 1x1 strided conv of the
    pre-activated input where the width or the size changes, else the input itself."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, eps=BN_EPS)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        has_shortcut = c_in != c_out or stride != 1
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False) if has_shortcut else None

    def forward(self, x):
        a = F.relu(self.bn1(x))
        h = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return h + (self.shortcut(a) if self.shortcut is not None else x)


class WRN16(nn.Module):
    """WRN-16-k: conv 3x3 3-16, three groups of two pre-activation blocks (widths 16k, 32k, 64k;
    strides 1, 2, 2), batch norm, ReLU, average pool 8, FC 64k-10."""

    def __init__(self, k):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        c_in = 16
        for g, (width, stride) in enumerate([(16 * k, 1), (32 * k, 2), (64 * k, 2)]):
            for b in range(2):
                setattr(self, f"block{g + 1}_{b + 1}", PreActBlock(c_in, width, stride if b == 0 else 1))
                c_in = width
        self.bn = nn.BatchNorm2d(c_in, eps=BN_EPS)
        self.fc = nn.Linear(c_in, 10)

    def forward(self, x):
        x = self.conv1(x)
        for g in range(3):
            for b in range(2):
                x = getattr(self, f"block{g + 1}_{b + 1}")(x)
        x = F.avg_pool2d(F.relu(self.bn(x)), 8)
        return self.fc(x.flatten(1))


MODELS = {
    "lenet300": LeNet300,
    "lenet5": LeNet5,
    "lstm-a": lambda: LSTMNet(128),
    "lstm-b": lambda: LSTMNet(256),
    "vgg16": VGG,
    "wrn-16-8": lambda: WRN16(8),
    "wrn-16-1": lambda: WRN16(1),
}
CIFAR = {"vgg16", "wrn-16-8", "wrn-16-1"}


def build(model):
    """The PyTorch module of a dst model name."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; available: {', '.join(MODELS)}")
    return MODELS[model]()


def export_model(path):
    """The dst model name an export was made from (its metadata `model`)."""
    return safe_open(path, "pt").metadata()["model"]


def load_export(path):
    """The state dict of a dst export, either format: a CSR weight (`<name>.crow_indices`,
    `.col_indices`, `.values` over the row view `(shape[0], product of the rest)`, its dense
    shape in the metadata `<name>.shape`) expanded to its dense shape."""
    tensors = load_file(path)
    meta = safe_open(path, "pt").metadata()
    state = {}
    for entry in json.loads(meta["order"]):
        name, shape = entry["name"], entry["shape"]
        if entry["storage"] == "csr":
            rows = shape[0]
            cols = math.prod(shape[1:])
            w = torch.sparse_csr_tensor(
                tensors[f"{name}.crow_indices"].long(),
                tensors[f"{name}.col_indices"].long(),
                tensors[f"{name}.values"],
                size=(rows, cols),
            )
            state[name] = w.to_dense().reshape(shape)
        else:
            state[name] = tensors[name]
    return state


def _idx(path):
    raw = gzip.open(path, "rb").read() if path.endswith(".gz") else open(path, "rb").read()
    dims = struct.unpack(f">{raw[3]}I", raw[4:4 + 4 * raw[3]])
    return np.frombuffer(raw[4 + 4 * raw[3]:], dtype=np.uint8).reshape(dims)


def _mnist_file(folder, name):
    for candidate in (name, name + ".gz"):
        p = os.path.join(folder, candidate)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(f"{folder}: no {name} (raw or .gz)")


def test_images(model, data=None):
    """The test images (as the model takes them) and labels dst classifies for `model`."""
    if model in CIFAR:
        if data is None:
            raise SystemExit(f"{model} classifies CIFAR-10: give --data DIR (the folder with test_batch.bin)")
        p = os.path.join(data, "test_batch.bin")
        if not os.path.exists(p):
            p = os.path.join(data, "cifar-10-batches-bin", "test_batch.bin")
        raw = np.fromfile(p, dtype=np.uint8).reshape(-1, 3073)
        x = raw[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255.0)
        mean = np.array(CIFAR_MEAN, dtype=np.float32)[None, :, None, None]
        std = np.array(CIFAR_STD, dtype=np.float32)[None, :, None, None]
        return torch.from_numpy(((x - mean) / std).astype(np.float32)), raw[:, 0].astype(np.int64)
    folder = data or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "assets", "mnist-subset")
    x = _idx(_mnist_file(folder, "t10k-images-idx3-ubyte")).astype(np.float32) / np.float32(255.0)
    y = _idx(_mnist_file(folder, "t10k-labels-idx1-ubyte")).astype(np.int64)
    return torch.from_numpy(x), y


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export", help="a `dst export` file (dense or csr)")
    ap.add_argument("predictions", help="the CSV of `dst infer EXPORT --out FILE`")
    ap.add_argument("--data", help="the folder `dst infer --data` read (default: the embedded subset)")
    args = ap.parse_args(argv)
    model_name = export_model(args.export)
    model = build(model_name)
    model.load_state_dict(load_export(args.export), strict=True)
    model.eval()
    x, labels = test_images(model_name, args.data)
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + 500]) for i in range(0, len(x), 500)]).double().numpy()
    rows = list(csv.DictReader(open(args.predictions)))
    theirs = np.array([[float(r[f"logit_{c}"]) for c in range(10)] for r in rows])
    their_labels = np.array([int(r["label"]) for r in rows])
    if theirs.shape != logits.shape or not (their_labels == labels).all():
        raise SystemExit(f"{args.predictions} is not `dst infer`'s output on these test images")
    worst = float((np.abs(logits - theirs) / (1.0 + np.abs(theirs))).max())
    agree = int((logits.argmax(1) == np.array([int(r["prediction"]) for r in rows])).sum())
    print(
        f"{model_name}: strict load OK; {len(rows)} images, largest logit difference "
        f"{np.abs(logits - theirs).max():.3e} ({worst:.3e} relative to 1 + |logit|), "
        f"predictions agree on {agree}; accuracy {100.0 * (logits.argmax(1) == labels).mean():.2f}%"
    )
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
