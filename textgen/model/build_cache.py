"""What is built once from a model and kept under CACHE_DIR: the ONNX graph of a checkpoint, the plain
checkpoint a GGUF file dequantises to.

An entry is `<kind>-<key>/`, its key changing whenever what would be built changes, and its
`source.json` names what it was built from. A build goes into a temporary directory renamed into
place, so a concurrent builder either wins or finds it done. After a build, the entries of the same
kind that it replaces are removed: those built from the same source (a stale key: the weights changed,
onnxruntime was upgraded), those whose source is gone (a model directory deleted since), and the
temporary directories of builders that died. Without that the directory only grows: by a graph per
upgrade, and by ~1.3 GB per fresh checkout of this project whose test suite ran.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Callable, Optional

log = logging.getLogger(__name__)

SOURCE_FILE = "source.json"


def cached_entry(cache_dir: str, kind: str, key: str, marker: str) -> Optional[str]:
    """The entry `cached_build` would return, if it is already built (None: it is not)."""
    target = os.path.join(cache_dir, f"{kind}-{key}")
    return target if os.path.exists(os.path.join(target, marker)) else None


def cached_build(cache_dir: str, kind: str, key: str, source: dict, build: Callable[[str], None], marker: str) -> str:
    """The entry `cache_dir/<kind>-<key>`, made by `build(directory)` unless it already holds `marker`.
    `source` identifies what it is built from: its "path" (a file or directory) and whatever else makes
    two builds of that path different things to keep (a quantization)."""
    target = os.path.join(cache_dir, f"{kind}-{key}")
    if os.path.exists(os.path.join(target, marker)):
        _record(target, source)  # the same model found at another path now: the entry follows it
        return target
    tmp = f"{target}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(cache_dir, exist_ok=True)
    build(tmp)
    _record(tmp, source)
    try:
        os.rename(tmp, target)
    except OSError:  # another process renamed its copy first
        shutil.rmtree(tmp, ignore_errors=True)
    prune(cache_dir, kind, keep=os.path.basename(target), source=source)
    return target


def prune(cache_dir: str, kind: str, keep: str, source: dict) -> list:
    """Remove the entries of `kind` that `keep` replaces; returns their names. Entries that name no
    source (made before sources were recorded) are left alone."""
    removed = []
    for name in sorted(os.listdir(cache_dir)):
        if not name.startswith(kind + "-") or name == keep:
            continue
        path = os.path.join(cache_dir, name)
        if ".tmp" in name:
            stale = not _alive(name.rsplit(".tmp", 1)[1])
        else:
            recorded = _read(path)
            stale = recorded is not None and (recorded == source or not os.path.exists(recorded.get("path", "")))
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
    if removed:
        log.info("removed %d stale %s build(s) from %s: %s", len(removed), kind, cache_dir, ", ".join(removed))
    return removed


def _record(directory: str, source: dict) -> None:
    if _read(directory) == source:
        return
    tmp = os.path.join(directory, f"{SOURCE_FILE}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(source, f)
        os.replace(tmp, os.path.join(directory, SOURCE_FILE))
    except OSError:  # a read-only cache still serves; it is only never pruned
        pass


def _read(directory: str):
    try:
        with open(os.path.join(directory, SOURCE_FILE), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _alive(pid: str) -> bool:
    if not pid.isdigit():
        return True  # not one of ours: leave it
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        pass
    return True
