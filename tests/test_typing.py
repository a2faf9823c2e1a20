"""The service's annotations are checked, not decoration: mypy --strict over service/ (pyproject.toml)."""

from __future__ import annotations

from mypy import api

from tests.support import ROOT


def test_service_passes_mypy_strict() -> None:
    stdout, stderr, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), str(ROOT / "service")])
    assert status == 0, stdout + stderr
