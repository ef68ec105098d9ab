"""The packages each model backend runs on, and their installed versions (what /info reports)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ..model.loader import BACKEND_PACKAGES


def runtime_versions(backend: str) -> dict:
    """Versions of the packages the backend runs on (those absent are left out)."""
    found = {}
    for package in BACKEND_PACKAGES.get(backend, ()):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found
