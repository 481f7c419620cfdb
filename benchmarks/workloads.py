"""The benchmark's models and batches (seeded; no torchvision).

Every model has a few planted dead units (a bias of -1e4 on the first two units of some
layers that feed a ReLU), so the floor-vs-scan check compares real dead counts, not only
zeros. The factories take no arguments: ``resnet50`` doubles as the ``--arch`` of the
command figure (``--arch benchmarks.workloads:resnet50``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PLANTED = 2  # dead units planted per chosen layer
ALL_FIGURES = ("forward", "grad", "memory", "mem-plain")


def plant(layer: nn.Module) -> None:
    """Kill the first ``PLANTED`` units of what ``layer`` (Linear or BatchNorm) feeds."""
    with torch.no_grad():
        bias = layer.bias
        assert isinstance(bias, torch.Tensor)
        bias[:PLANTED] = -1e4


def cnn() -> nn.Module:
    """Conv/BatchNorm/in-place ReLU/MaxPool, 3 -> 32 -> 64 -> 128 channels, 32x32 inputs."""
    layers: list[nn.Module] = []
    for cin, cout in ((3, 32), (32, 64), (64, 128)):
        bn = nn.BatchNorm2d(cout)
        plant(bn)
        layers += [
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            bn,
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 4 * 4, 10))


def _hidden(width: int = 1024) -> nn.Linear:
    layer = nn.Linear(width, width)
    plant(layer)
    return layer


def mlp() -> nn.Module:
    """6 x Linear(1024, 1024) each followed by nn.ReLU, then a 10-way head."""
    layers: list[nn.Module] = []
    for _ in range(6):
        layers += [_hidden(), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(1024, 10))


class FunctionalMLP(nn.Module):
    """The same MLP, calling F.relu in forward (functional sites)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_hidden() for _ in range(6))
        self.head = nn.Linear(1024, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: 1x1 reduce, 3x3 (stride here), 1x1 expand, residual add."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)  # called 3 times: sites relu#1..#3
        self.down: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        plant(self.bn1)
        plant(self.bn2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.down(x))


def resnet50() -> nn.Module:
    """ResNet-50 layout (blocks [3, 4, 6, 3], widths 64..2048), random weights, 25.6M params,
    49 ReLU sites (the stem's and 3 per block)."""
    stem_bn = nn.BatchNorm2d(64)
    plant(stem_bn)
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
        stem_bn,
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]
    cin = 64
    for i, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
        for b in range(blocks):
            layers.append(Bottleneck(cin, width, 2 if b == 0 and i > 0 else 1))
            cin = width * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    return nn.Sequential(*layers)


class EncoderLayer(nn.Module):
    """Pre-norm encoder layer. Its MLP flattens the tokens into the batch, so the ReLU sees
    ``(N*T, F)`` (as many transformer codebases do); relu-doctor folds it back to
    ``(N, T, F)``: samples stay batch rows, units are the F features."""

    def __init__(self, d: int, heads: int, ff: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, ff)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(ff, d)
        plant(self.fc1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(self.norm1(x)).view(n, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d)
        x = x + self.proj(attn)
        h = self.norm2(x).reshape(n * t, d)  # tokens flattened into the batch
        return x + self.fc2(self.act(self.fc1(h))).view(n, t, d)


class Transformer(nn.Module):
    """4 encoder layers, d=128, 4 heads, MLP 512, on (N, T=64, 128) inputs; mean-pooled head."""

    def __init__(self, d: int = 128, heads: int = 4, ff: int = 512, depth: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d, heads, ff) for _ in range(depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x).mean(dim=1))


@dataclass(frozen=True)
class Workload:
    name: str
    build: Callable[[], nn.Module]
    sample: tuple[int, ...]  # one sample's shape
    batch: int  # samples per batch
    batches: int  # batches per timed repetition
    mem_batch: int  # samples per batch in the flat-memory figure (40 batches stay quick)
    mem_sample: tuple[int, ...] | None = None  # one sample's shape there (None: ``sample``)
    functional: bool = False  # ReLUs are F.relu calls, not nn.ReLU modules
    figures: tuple[str, ...] = ALL_FIGURES  # the figures this workload takes part in
    reps: int | None = None  # at most this many timed repetitions (big workloads)

    @property
    def shape_note(self) -> str:
        return f"{self.batches} x {self.batch} x {'x'.join(map(str, self.sample))}"


def workloads(quick: bool) -> dict[str, Workload]:
    """Sizes: the full run takes minutes on a 2-core CPU box; --quick is a smoke run."""
    if quick:
        return {
            "cnn": Workload("cnn", cnn, (3, 32, 32), 16, 2, 4),
            "mlp": Workload("mlp", mlp, (1024,), 32, 2, 8),
            "fmlp": Workload("fmlp", FunctionalMLP, (1024,), 32, 2, 8, functional=True),
            "resnet50": Workload("resnet50", resnet50, (3, 64, 64), 1, 1, 1, (3, 32, 32)),
            "resnet224": Workload(
                "resnet224", resnet50, (3, 32, 32), 2, 1, 1, figures=("grad",), reps=3
            ),
            "transformer": Workload("transformer", Transformer, (16, 128), 4, 2, 2),
        }
    return {
        # 8 batches: what `relu-doctor scan` feeds by default
        "cnn": Workload("cnn", cnn, (3, 32, 32), 64, 8, 16),
        "mlp": Workload("mlp", mlp, (1024,), 256, 8, 64),
        "fmlp": Workload("fmlp", FunctionalMLP, (1024,), 256, 8, 64, functional=True),
        "resnet50": Workload("resnet50", resnet50, (3, 224, 224), 8, 2, 1, (3, 112, 112)),
        # the user's case of issue 14: 16 x 8 batches at 224x224 with gradients (~1 min a side)
        "resnet224": Workload(
            "resnet224", resnet50, (3, 224, 224), 16, 8, 1, figures=("grad",), reps=3
        ),
        "transformer": Workload("transformer", Transformer, (64, 128), 16, 8, 4),
    }


@functools.cache
def build(w: Workload, device: torch.device) -> nn.Module:
    """Seeded; built once per process (a scan leaves the model exactly as it was)."""
    torch.manual_seed(0)
    return w.build().to(device).eval()


def make_batches(w: Workload, device: torch.device) -> list[torch.Tensor]:
    """The timed figures' batches, built once: every side sees the same tensors."""
    g = torch.Generator().manual_seed(1)
    return [torch.randn((w.batch, *w.sample), generator=g).to(device) for _ in range(w.batches)]


def stream(w: Workload, n: int, device: torch.device) -> Iterator[torch.Tensor]:
    """The flat-memory figure's generator of fresh batches: only the current one is alive."""
    g = torch.Generator().manual_seed(1)
    shape = (w.mem_batch, *(w.mem_sample or w.sample))
    for _ in range(n):
        yield torch.randn(shape, generator=g).to(device)
