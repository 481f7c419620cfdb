"""Tiny, deliberately broken models for the capture and "model unchanged" tests.

Most models are built with ``plant``: all weights are made non-negative and every unit gets
a small positive bias, except the chosen *dead* units, whose weight rows are zeroed and whose
bias is a large negative number. Fed with ``positive_inputs`` (values in [0.1, 1.1]) every
pre-activation of a live unit is >= 0.1 on every sample (so it fires), and the
pre-activation of a planted dead unit is exactly its bias on every sample and position (so it
never fires and its dead margin is known to the bit). ReLU outputs are >= 0, so the chain
stays positive from layer to layer.

The expected answers are written next to each model as plain constants, derived from the
planting above, never from relu-doctor's output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

DEAD_BIAS = -1e4
ALIVE_BIAS = 0.1


def plant(
    layer: nn.Linear | nn.Conv1d | nn.Conv2d,
    dead: Sequence[int],
    *,
    margin: float = DEAD_BIAS,
    alive_bias: float = ALIVE_BIAS,
) -> nn.Module:
    """Units/channels in ``dead`` never fire (pre-activation == ``margin`` exactly); all
    other units fire on every sample of non-negative inputs."""
    with torch.no_grad():
        layer.weight.abs_()
        layer.bias.fill_(alive_bias)
        for j in dead:
            layer.weight[j] = 0.0
            layer.bias[j] = margin
    return layer


def positive_inputs(*shape: int, seed: int = 0) -> torch.Tensor:
    """Seeded inputs in [0.1, 1.1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) + 0.1


def _seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


# --- functional-only --------------------------------------------------------------------


class FunctionalMLP(nn.Module):
    """Every functional spelling of ReLU, all called from the root module's forward."""

    IN = 4
    # site -> (units, planted dead units)
    EXPECTED: ClassVar = {
        "relu#1": (6, [0]),  # F.relu
        "relu#2": (5, [1, 2]),  # torch.relu
        "relu#3": (4, []),  # Tensor.relu
        "relu#4": (7, [3, 5]),  # Tensor.relu_
        "relu#5": (3, [0]),  # F.relu(inplace=True)
    }

    def __init__(self) -> None:
        super().__init__()
        _seeded()
        widths = [self.IN] + [u for u, _ in self.EXPECTED.values()]
        dead = [d for _, d in self.EXPECTED.values()]
        self.fc1, self.fc2, self.fc3, self.fc4, self.fc5 = (
            plant(nn.Linear(widths[i], widths[i + 1]), dead[i]) for i in range(5)
        )
        self.out = nn.Linear(widths[-1], 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(x))
        h = torch.relu(self.fc2(h))
        h = self.fc3(h).relu()
        h = self.fc4(h).relu_()
        h = F.relu(self.fc5(h), inplace=True)
        return self.out(h)


# --- one nn.ReLU called twice -----------------------------------------------------------


class ReusedReLU(nn.Module):
    IN = 4
    EXPECTED: ClassVar = {"act#1": (6, [0, 1]), "act#2": (5, [2])}

    def __init__(self) -> None:
        super().__init__()
        _seeded()
        self.fc1 = plant(nn.Linear(self.IN, 6), [0, 1])
        self.fc2 = plant(nn.Linear(6, 5), [2])
        self.act = nn.ReLU()
        self.out = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.fc2(self.act(self.fc1(x)))))


# --- in-place nn.ReLU -------------------------------------------------------------------


class InplaceReLU(nn.Module):
    """Two dead units with exactly representable margins -123.5 and -7.25."""

    IN = 4
    MARGINS: ClassVar = {1: -123.5, 4: -7.25}
    UNITS = 6

    def __init__(self) -> None:
        super().__init__()
        _seeded()
        self.fc = plant(nn.Linear(self.IN, self.UNITS), [])
        with torch.no_grad():
            for j, m in self.MARGINS.items():
                self.fc.weight[j] = 0.0
                self.fc.bias[j] = m
        self.act = nn.ReLU(inplace=True)
        self.out = nn.Linear(self.UNITS, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.fc(x)))


# --- ReLU6 and a plain Hardtanh ---------------------------------------------------------


class ReLU6Model(nn.Module):
    """Parallel branches: nn.ReLU6, F.relu6, F.hardtanh(x, 0, 6), and a plain nn.Hardtanh()
    (not a ReLU site). In each ReLU6 branch unit 0 is pushed to +100 (output capped at 6)."""

    IN = 4
    EXPECTED: ClassVar = {  # site -> (kind, units, dead)
        "r6": ("module", 5, [1, 3]),
        "relu6#1": ("functional", 4, [2]),
        "relu6#2": ("functional", 6, [1, 2, 5]),
    }

    def __init__(self) -> None:
        super().__init__()
        _seeded()
        self.fa = plant(nn.Linear(self.IN, 5), [1, 3])
        self.fb = plant(nn.Linear(self.IN, 4), [2])
        self.fc = plant(nn.Linear(self.IN, 6), [1, 2, 5])
        self.fd = plant(nn.Linear(self.IN, 3), [0])
        with torch.no_grad():
            for layer in (self.fa, self.fb, self.fc):
                layer.bias[0] = 100.0
        self.r6 = nn.ReLU6()
        self.ht = nn.Hardtanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.r6(self.fa(x))
        b = F.relu6(self.fb(x))
        c = F.hardtanh(self.fc(x), 0.0, 6.0)
        d = self.ht(self.fd(x))
        return torch.cat([a, b, c, d], dim=1)


# --- the rest of the family -------------------------------------------------------------


class FamilyModel(nn.Module):
    """Parallel branches: ReLU (counted), LeakyReLU, PReLU, ELU (listed, not counted)."""

    IN = 4
    EXPECTED: ClassVar = {  # site -> (kind, units, dead, counted)
        "relu": ("module", 6, [0, 2], True),
        "leaky": ("LeakyReLU", 5, [1], False),
        "prelu": ("PReLU", 4, [0, 1, 3], False),
        "elu": ("ELU", 3, [2], False),
    }

    def __init__(self) -> None:
        super().__init__()
        _seeded()
        self.fa = plant(nn.Linear(self.IN, 6), [0, 2])
        self.fb = plant(nn.Linear(self.IN, 5), [1])
        self.fc = plant(nn.Linear(self.IN, 4), [0, 1, 3])
        self.fd = plant(nn.Linear(self.IN, 3), [2])
        self.relu = nn.ReLU()
        self.leaky = nn.LeakyReLU(0.1)
        self.prelu = nn.PReLU()
        self.elu = nn.ELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.relu(self.fa(x)),
                self.leaky(self.fb(x)),
                self.prelu(self.fc(x)),
                self.elu(self.fd(x)),
            ],
            dim=1,
        )


# --- TorchScript / export ---------------------------------------------------------------


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = plant(nn.Linear(5, 6), [0, 2])
        self.act = nn.ReLU()
        self.fc2 = plant(nn.Linear(6, 4), [3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc2(self.act(self.fc1(x))))


class ScriptNet(nn.Module):
    """nn.ReLU at the root, and nn.ReLU + F.relu inside a submodule."""

    IN = 4
    EXPECTED: ClassVar = {"act0": (5, [1]), "block.act": (6, [0, 2]), "block:relu#1": (4, [3])}

    def __init__(self) -> None:
        super().__init__()
        _seeded()
        self.fc0 = plant(nn.Linear(self.IN, 5), [1])
        self.act0 = nn.ReLU()
        self.block = Block()
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.block(self.act0(self.fc0(x))))


# --- conv nets --------------------------------------------------------------------------


class ConvNet(nn.Module):
    """Conv2d -> BatchNorm -> ReLU -> MaxPool -> Conv2d -> MaxPool -> F.relu -> (as a
    sequence) Conv1d -> ReLU. Units are channels. One channel of the first block dies in
    the BatchNorm (bias -1e4), the rest in the convolutions."""

    IN = (3, 8, 8)
    EXPECTED: ClassVar = {  # site -> (units, dead channels)
        "act1": (6, [1, 4]),
        "relu#1": (5, [0]),
        "act3": (7, [2, 3, 6]),
    }

    def __init__(self) -> None:
        super().__init__()
        _seeded()
        self.conv1 = plant(nn.Conv2d(3, 6, 3, padding=1), [1])
        self.bn1 = nn.BatchNorm2d(6)
        with torch.no_grad():
            self.bn1.bias[4] = DEAD_BIAS  # dies after the BatchNorm, not in the conv
        self.act1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = plant(nn.Conv2d(6, 5, 3, padding=1), [0])
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = plant(nn.Conv1d(5, 7, 3, padding=1), [2, 3, 6])
        self.act3 = nn.ReLU()
        self.head = nn.Linear(7, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool1(self.act1(self.bn1(self.conv1(x))))  # (N, 6, 4, 4)
        h = F.relu(self.pool2(self.conv2(h)))  # (N, 5, 2, 2)
        h = self.act3(self.conv3(h.flatten(2)))  # (N, 7, 4)
        return self.head(h.mean(dim=2))


class SqueezeExciteNet(nn.Module):
    """A conv block with a squeeze-and-excitation side branch (Linear layers that run
    between the conv and its ReLU). The ReLU's units are still the conv's 4 channels."""

    IN = (3, 5, 6)  # W = 6 != C = 4, so a wrong unit dim shows in ``units``
    CHANNELS = 4
    DEAD: ClassVar = [0, 2]

    def __init__(self) -> None:
        super().__init__()
        _seeded()
        self.conv = plant(nn.Conv2d(3, self.CHANNELS, 3, padding=1), self.DEAD)
        self.se = nn.Linear(self.CHANNELS, self.CHANNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        gate = torch.sigmoid(self.se(h.mean(dim=(2, 3))))  # in (0, 1): signs unchanged
        return F.relu(h * gate[:, :, None, None])


# --- sequences --------------------------------------------------------------------------


class SeqMLP(nn.Module):
    """Transformer-style MLP on (N, T, F): units are the last dim (8 then 6), never T=5."""

    T, F_IN = 5, 6
    EXPECTED: ClassVar = {"mlp.act": (8, [2, 5]), "mlp:relu#1": (6, [0])}

    def __init__(self) -> None:
        super().__init__()
        _seeded()
        self.mlp = _Mlp(self.F_IN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


class _Mlp(nn.Module):
    def __init__(self, f: int) -> None:
        super().__init__()
        self.fc1 = plant(nn.Linear(f, 8), [2, 5])
        self.act = nn.ReLU()
        self.fc2 = plant(nn.Linear(8, f), [0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc2(self.act(self.fc1(x))))


class PositionDead(nn.Module):
    """(N, T, F): position t=0 is always negative, every feature fires elsewhere. With the
    default unit dim (features) nothing is dead; with unit_dim=1 (positions) one unit is."""

    T, F_IN, F_OUT = 5, 3, 4

    def __init__(self) -> None:
        super().__init__()
        _seeded()
        self.fc = plant(nn.Linear(self.F_IN, self.F_OUT), [])
        pos = torch.zeros(self.T, 1)
        pos[0] = DEAD_BIAS
        self.register_buffer("pos", pos)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(x) + self.pos)


# --- module + functional, naming, inputs ------------------------------------------------


class MixedReLU(nn.Module):
    """An nn.ReLU (whose forward calls F.relu internally) and a root-level F.relu."""

    IN = 4
    EXPECTED: ClassVar = {"act": (6, [1, 5]), "relu#1": (3, [0])}

    def __init__(self) -> None:
        super().__init__()
        _seeded()
        self.fc1 = plant(nn.Linear(self.IN, 6), [1, 5])
        self.act = nn.ReLU()
        self.fc2 = plant(nn.Linear(6, 3), [0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc2(self.act(self.fc1(x))))


class _Block1(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fa = plant(nn.Linear(4, 4), [])
        self.fb = plant(nn.Linear(4, 4), [])
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fa(x))
        h = self.act(h)
        return F.relu(self.fb(h))


class NamingNet(nn.Module):
    """``late`` and ``never`` are declared before ``block1`` but ``late`` runs last and
    ``never`` never runs."""

    IN = 4
    ORDER: ClassVar = ["block1:relu#1", "block1.act", "block1:relu#2", "relu#1", "late"]

    def __init__(self) -> None:
        super().__init__()
        _seeded()
        self.late = nn.ReLU()
        self.never = nn.ReLU()
        self.block1 = _Block1()
        self.fc = plant(nn.Linear(4, 3), [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.block1(x))
        return self.late(self.fc(h))


class TwoInputs(nn.Module):
    """forward(x, mask): unit 1 of the sum is dead (-1e4 from fa, 0 from fb)."""

    DEAD: ClassVar = [1]

    def __init__(self) -> None:
        super().__init__()
        _seeded()
        self.fa = plant(nn.Linear(3, 4), self.DEAD)
        self.fb = plant(nn.Linear(2, 4), self.DEAD, margin=0.0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fa(x) + self.fb(mask))


class XYInputs(nn.Module):
    """forward(x, y): a two-input model whose second argument happens to be called y."""

    def __init__(self) -> None:
        super().__init__()
        _seeded()
        self.fa = plant(nn.Linear(3, 4), [1])
        self.fb = plant(nn.Linear(2, 4), [1], margin=0.0)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fa(x) + self.fb(y))


class ScalarHead(nn.Module):
    """A regression head whose ReLU output is (N,): one unit, here dead."""

    IN = 3

    def __init__(self) -> None:
        super().__init__()
        _seeded()
        self.fc = plant(nn.Linear(self.IN, 1), [0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(x).squeeze(-1))


class TokenFlatten(nn.Module):
    """Flattens (N, T, F) to (N*T, F) before its MLP, as much older transformer code does."""

    T, F_IN, DEAD = 5, 3, [1]

    def __init__(self) -> None:
        super().__init__()
        _seeded()
        self.fc = plant(nn.Linear(self.F_IN, 4), self.DEAD)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, f = x.shape
        return self.act(self.fc(x.reshape(n * t, f))).reshape(n, t, -1)


class NoReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc2(self.act(self.fc1(x))))


class SpareActivation(nn.Module):
    """``spare`` (an nn.ReLU) is never called; F.relu is."""

    def __init__(self) -> None:
        super().__init__()
        _seeded()
        self.fc = plant(nn.Linear(4, 3), [2])
        self.spare = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(x))


# --- gradients --------------------------------------------------------------------------


class GradNet(nn.Module):
    """Random (not planted) weights, one dead unit: fc1 -> act (nn.ReLU) -> fc2 -> F.relu
    -> fc3. The site inputs are the outputs of fc1 and fc2."""

    IN, OUT = 5, 3

    def __init__(self) -> None:
        super().__init__()
        _seeded(1)
        self.fc1 = nn.Linear(self.IN, 8)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(8, 6)
        self.fc3 = nn.Linear(6, self.OUT)
        with torch.no_grad():
            self.fc1.bias[3] = DEAD_BIAS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(self.act(self.fc1(x)))))


def reference_grad_norms(
    model: GradNet,
    batches: list[tuple[torch.Tensor, torch.Tensor | None]],
) -> tuple[dict[str, float], dict[str, float]]:
    """Plain-torch reference: per batch, the L2 norm of d loss / d (site input) and of
    d loss / d parameter, averaged over batches. Loss: cross-entropy for integer targets,
    MSE for float targets, else the surrogate 0.5 * mean over the batch of sum(output**2)."""
    site_sums = {"act": 0.0, "relu#1": 0.0}
    names = [n for n, _ in model.named_parameters()]
    param_sums = dict.fromkeys(names, 0.0)
    for x, y in batches:
        x = x.detach().requires_grad_(True)  # lets a frozen model still build a graph
        pre1 = model.fc1(x)
        pre2 = model.fc2(torch.relu(pre1))
        out = model.fc3(torch.relu(pre2))
        if y is None:
            loss = 0.5 * out.pow(2).sum(dim=1).mean()
        elif y.is_floating_point():
            loss = F.mse_loss(out, y)
        else:
            loss = F.cross_entropy(out, y)
        params = [p for _, p in model.named_parameters()]
        wrt = [pre1, pre2] + [p for p in params if p.requires_grad]
        grads = torch.autograd.grad(loss, wrt)
        site_sums["act"] += float(grads[0].norm())
        site_sums["relu#1"] += float(grads[1].norm())
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        for n, g in zip(trainable, grads[2:], strict=True):
            param_sums[n] += float(g.norm())
    k = len(batches)
    return (
        {s: v / k for s, v in site_sums.items()},
        {n: v / k for n, v in param_sums.items()},
    )


# --- "scan leaves the model alone" ------------------------------------------------------


class Explode(RuntimeError):
    pass


class StatefulNet(nn.Module):
    """BatchNorm (running stats), Dropout (RNG), an in-place ReLU and a functional one.
    With ``explode_on_call = k`` the k-th forward raises *after* the BatchNorm has run."""

    IN = (2, 6, 6)

    def __init__(self) -> None:
        super().__init__()
        _seeded(2)
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(0.5)
        self.fc1 = nn.Linear(4 * 6 * 6, 8)
        self.fc2 = nn.Linear(8, 3)
        self.explode_on_call: int | None = None
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = self.act(self.bn(self.conv(x)))
        if self.explode_on_call is not None and self.calls >= self.explode_on_call:
            raise Explode("boom in the middle of the forward")
        h = self.drop(h.flatten(1))
        return self.fc2(F.relu(self.fc1(h)))
