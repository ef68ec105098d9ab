"""Every test under tests/reliability is marked `reliability` (run by default; `-m "not reliability"`
leaves them out for a quick run)."""

import pathlib

import pytest

_HERE = pathlib.Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in pathlib.Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.reliability)
