"""The shared pypiserver: one process per module, serving nothing at the start of each test."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.package_index import PypiServer, build_sdist, build_wheel

pytestmark = pytest.mark.integration


def test_emptying_removes_every_release_from_the_index(pypi_server: PypiServer, tmp_path: Path) -> None:
    pypi_server.upload(build_wheel(tmp_path, "demo-pkg", "1.0"), build_sdist(tmp_path, "demo-pkg", "1.0"))
    assert httpx.get(f"{pypi_server.index_url}/demo-pkg/", timeout=10).status_code == 200

    pypi_server.empty()

    assert "href=" not in httpx.get(f"{pypi_server.index_url}/", timeout=10).text
    # pypiserver sends a project it does not hold to its fallback index (303 See Other).
    assert httpx.get(f"{pypi_server.index_url}/demo-pkg/", timeout=10).status_code == 303


def test_a_stopped_server_is_replaced_for_the_next_test(pypi_server: PypiServer) -> None:
    pypi_server.stop()
    assert not pypi_server.running


def test_the_next_test_gets_a_running_empty_server(pypi_server: PypiServer) -> None:
    assert pypi_server.running
    assert httpx.get(f"{pypi_server.index_url}/", timeout=10).status_code == 200
