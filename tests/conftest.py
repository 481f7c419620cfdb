"""Shared fixtures: small saved models with planted dead ReLU units.

``planted_models`` (session scope) saves a few tiny models under one temporary folder and
returns a ``PlantedModels`` mapping ``name -> PlantedModel``. A planted dead unit has a zero
weight row and bias -1e4, so its pre-activation is exactly -1e4 on every input: it never
fires. Every other unit has non-negative weights and bias 0.1: a first-layer unit fires on
about half of N(0, 1) samples (so on 32+ samples it fires at least once, for the fixed seeds
used here), and a deeper unit, fed ReLU outputs >= 0, fires on every sample. The expected
counts below follow from that planting, never from relu-doctor's output.

Models (the input is 20 features for all of them):

- ``mlp``      fc1(20->16) act1 fc2(16->4); dead act1 units 0, 3, 7.
- ``deep``     fc1(20->16) act1 fc2(16->8) act2 out(8->4); dead act1 {0,3,7}, act2 {1,5}.
- ``all_dead`` like ``mlp`` with every act1 unit dead.
- ``healthy``  like ``mlp`` with no dead unit.
- ``tanh``     fc1 -> Tanh -> fc2, no ReLU at all.
- ``state_dict`` the state dict of ``custom`` (needs ``--arch``).
- ``custom``   a pickle of the user class ``rd_planted_custom.Net`` (fc1 -> act -> fc2);
               needs ``--trust`` and ``arch_dir`` on ``sys.path``; dead act units 2, 9.

All but ``custom``/``state_dict`` are ``nn.Sequential`` of ``torch.nn`` parts (load safely).
"""

from __future__ import annotations

import importlib.util
import sys
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import models

DEAD_BIAS = -1e4
ALIVE_BIAS = 0.1
IN_FEATURES = 20

CUSTOM_MODULE = "rd_planted_custom"
CUSTOM_SOURCE = '''
import torch
from torch import nn


class Net(nn.Module):
    """fc1 (20->16) -> act (nn.ReLU) -> fc2 (16->4)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 16)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
'''


@dataclass(frozen=True)
class PlantedModel:
    """A saved model and, per ReLU site, (units, indices of the planted dead units)."""

    path: Path
    sites: dict[str, tuple[int, list[int]]] = field(default_factory=dict)

    @property
    def dead(self) -> int:
        return sum(len(d) for _, d in self.sites.values())

    @property
    def units(self) -> int:
        return sum(u for u, _ in self.sites.values())

    @property
    def dead_fraction(self) -> float:
        return self.dead / self.units if self.units else 0.0


class PlantedModels(dict[str, PlantedModel]):
    """``name -> PlantedModel``; ``arch_dir`` holds ``rd_planted_custom.py``."""

    arch_dir: Path

    @property
    def arch_file(self) -> Path:
        return self.arch_dir / f"{CUSTOM_MODULE}.py"


def plant(layer: Any, dead: Sequence[int]) -> Any:
    """Make ``dead`` units of a Linear layer never fire and every other unit fire."""
    return models.plant(layer, dead, margin=DEAD_BIAS, alive_bias=ALIVE_BIAS)


def _mlp(dead: Sequence[int]):  # type: ignore[no-untyped-def]
    from torch import nn

    return nn.Sequential(
        OrderedDict(
            fc1=plant(nn.Linear(IN_FEATURES, 16), dead), act1=nn.ReLU(), fc2=nn.Linear(16, 4)
        )
    )


@pytest.fixture(scope="session")
def planted_models(tmp_path_factory: pytest.TempPathFactory) -> PlantedModels:
    import torch
    from torch import nn

    folder = tmp_path_factory.mktemp("planted_models")
    models = PlantedModels()
    models.arch_dir = folder

    def save(name: str, obj: object, sites: dict[str, tuple[int, list[int]]]) -> None:
        path = folder / f"{name}.pt"
        torch.save(obj, path)
        models[name] = PlantedModel(path, sites)

    torch.manual_seed(0)
    save("mlp", _mlp([0, 3, 7]), {"act1": (16, [0, 3, 7])})
    save("all_dead", _mlp(list(range(16))), {"act1": (16, list(range(16)))})
    save("healthy", _mlp([]), {"act1": (16, [])})
    deep = nn.Sequential(
        OrderedDict(
            fc1=plant(nn.Linear(IN_FEATURES, 16), [0, 3, 7]),
            act1=nn.ReLU(),
            fc2=plant(nn.Linear(16, 8), [1, 5]),
            act2=nn.ReLU(),
            out=nn.Linear(8, 4),
        )
    )
    save("deep", deep, {"act1": (16, [0, 3, 7]), "act2": (8, [1, 5])})
    tanh = nn.Sequential(
        OrderedDict(fc1=nn.Linear(IN_FEATURES, 16), act=nn.Tanh(), fc2=nn.Linear(16, 4))
    )
    save("tanh", tanh, {})

    # A user-defined class: pickling it needs the global rd_planted_custom.Net.
    (folder / f"{CUSTOM_MODULE}.py").write_text(CUSTOM_SOURCE)
    spec = importlib.util.spec_from_file_location(CUSTOM_MODULE, folder / f"{CUSTOM_MODULE}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[CUSTOM_MODULE] = module
    try:
        spec.loader.exec_module(module)
        net = module.Net()
        plant(net.fc1, [2, 9])
        save("custom", net, {"act": (16, [2, 9])})
        save("state_dict", net.state_dict(), {"act": (16, [2, 9])})
    finally:
        del sys.modules[CUSTOM_MODULE]  # loading it again needs arch_dir on sys.path
    return models
