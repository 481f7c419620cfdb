"""Session fixtures shared by the test modules (builders live in ``tests/fixtures``)."""

from __future__ import annotations

import pytest

from tests.fixtures.planted import PlantedModels, build


@pytest.fixture(scope="session")
def planted_models(tmp_path_factory: pytest.TempPathFactory) -> PlantedModels:
    """The planted models of ``tests/fixtures/planted.py``, saved once per session."""
    return build(tmp_path_factory.mktemp("planted_models"))
