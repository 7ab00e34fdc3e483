"""Shared fixtures: anyio on asyncio, short plugin directories for Unix sockets."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def plugin_dir() -> Iterator[Path]:
    """A fresh plugin directory with a short path (Unix socket paths hold 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="spk-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
