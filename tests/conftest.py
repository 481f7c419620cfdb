"""Session fixtures shared by the test modules (builders live in ``tests/fixtures``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.planted import PlantedModels, build

SAMPLES = Path(__file__).parents[1] / "sample_models" / "make_samples.py"


@pytest.fixture(scope="session")
def planted_models(tmp_path_factory: pytest.TempPathFactory) -> PlantedModels:
    """The planted models of ``tests/fixtures/planted.py``, saved once per session."""
    return build(tmp_path_factory.mktemp("planted_models"))


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample models, built by their seeded script in a folder of their own."""
    folder = tmp_path_factory.mktemp("samples")
    done = subprocess.run(
        [sys.executable, str(SAMPLES), str(folder)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in an empty folder (no pyproject.toml above it) with no trust from the env:
    command-line tests use it with ``pytestmark = pytest.mark.usefixtures("isolated")``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RELU_DOCTOR_TRUST", raising=False)
