"""Tiny models and file builders shared by test_loading.py and test_hostile.py."""

from __future__ import annotations

import io
import zipfile
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

ARCH_SOURCE = """
import torch.nn as nn


def build():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def wide():
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = build()

    def forward(self, x):
        return self.model(x)


def not_a_module():
    return [1, 2, 3]
"""


def tiny() -> nn.Sequential:
    """The model `build()` in ARCH_SOURCE makes (same state-dict keys and shapes)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def write_arch(folder: Path, name: str = "archdef.py") -> Path:
    """Write ARCH_SOURCE to folder/name and return its path."""
    path = folder / name
    path.write_text(ARCH_SOURCE)
    return path


class Exportable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))


@lru_cache(maxsize=1)
def pt2_bytes() -> bytes:
    """A torch.export.save archive of Exportable (built once per session: export is slow)."""
    ep = torch.export.export(Exportable(), (torch.randn(4, 3),))
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return buf.getvalue()


def replace_in_zip(src: bytes, dest: Path, suffix: str, data: bytes) -> None:
    """Copy zip `src` to `dest`, replacing the entry whose name ends with `suffix`."""
    with zipfile.ZipFile(io.BytesIO(src)) as zin, zipfile.ZipFile(dest, "w") as zout:
        hits = [n for n in zin.namelist() if n.endswith(suffix)]
        assert hits, f"no {suffix} in archive"
        for name in zin.namelist():
            zout.writestr(name, data if name in hits else zin.read(name))
