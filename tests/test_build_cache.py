"""CACHE_DIR keeps one build per model: a build replaces the stale ones (same source, old key), those
whose source is gone, and the half-written directories of builders that died (textgen/model/build_cache.py)."""

import json
import os
import shutil
import subprocess
import sys

from textgen.model.build_cache import SOURCE_FILE, cached_build
from textgen.model.loader import file_fingerprint
from textgen.model.onnx_backend.graph_files import graph_path


def writer(calls, text="built"):
    def build(directory):
        calls.append(directory)
        os.makedirs(directory)
        with open(os.path.join(directory, "done"), "w") as f:
            f.write(text)

    return build


def test_a_build_is_made_once_and_names_its_source(tmp_path):
    cache, calls = str(tmp_path / "cache"), []
    source = {"path": str(tmp_path), "quantize": "none"}
    first = cached_build(cache, "kind", "k1", source, writer(calls), "done")
    assert cached_build(cache, "kind", "k1", source, writer(calls), "done") == first
    assert len(calls) == 1 and os.listdir(cache) == ["kind-k1"]
    with open(os.path.join(first, SOURCE_FILE)) as f:
        assert json.load(f) == source


def test_a_new_key_for_the_same_source_replaces_the_old_build(tmp_path):
    cache, calls = str(tmp_path / "cache"), []
    model = {"path": str(tmp_path), "quantize": "none"}
    other_quantization = {"path": str(tmp_path), "quantize": "int8"}
    cached_build(cache, "kind", "old", model, writer(calls), "done")
    cached_build(cache, "kind", "q8", other_quantization, writer(calls), "done")
    cached_build(cache, "other", "old", model, writer(calls), "done")  # another kind: not a replacement
    cached_build(cache, "kind", "new", model, writer(calls), "done")
    assert sorted(os.listdir(cache)) == ["kind-new", "kind-q8", "other-old"]


def test_builds_whose_source_is_gone_are_removed(tmp_path):
    cache, calls = str(tmp_path / "cache"), []
    gone, kept = tmp_path / "gone", tmp_path / "kept"
    gone.mkdir()
    kept.mkdir()
    cached_build(cache, "kind", "a", {"path": str(gone)}, writer(calls), "done")
    cached_build(cache, "kind", "b", {"path": str(kept)}, writer(calls), "done")
    os.makedirs(os.path.join(cache, "kind-unrecorded"))  # made before sources were recorded: unknown
    shutil.rmtree(gone)
    cached_build(cache, "kind", "c", {"path": str(tmp_path)}, writer(calls), "done")
    assert sorted(os.listdir(cache)) == ["kind-b", "kind-c", "kind-unrecorded"]


def test_a_dead_builders_directory_is_removed_a_live_ones_kept(tmp_path):
    cache, calls = str(tmp_path / "cache"), []
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    os.makedirs(os.path.join(cache, f"kind-x.tmp{dead.stdout.strip()}"))  # e.g. a build the disk ran out under
    os.makedirs(os.path.join(cache, f"kind-y.tmp{os.getpid()}"))  # building right now
    cached_build(cache, "kind", "z", {"path": str(tmp_path)}, writer(calls), "done")
    assert sorted(os.listdir(cache)) == [f"kind-y.tmp{os.getpid()}", "kind-z"]


def test_a_build_found_from_a_new_path_follows_it(tmp_path):
    """The same file installed at a new path (a fresh virtualenv) hits the entry, which then names the new
    path, so deleting the old one does not make it look orphaned."""
    cache, calls = str(tmp_path / "cache"), []
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    entry = cached_build(cache, "kind", "same", {"path": str(old)}, writer(calls), "done")
    cached_build(cache, "kind", "same", {"path": str(new)}, writer(calls), "done")
    shutil.rmtree(old)
    cached_build(cache, "kind", "another", {"path": str(tmp_path)}, writer(calls), "done")
    assert len(calls) == 2 and os.path.isdir(entry)


def test_a_file_is_fingerprinted_by_content_not_path_or_time(tmp_path):
    data = bytearray(os.urandom(3 << 20))
    first, second = tmp_path / "a.gguf", tmp_path / "b.gguf"
    first.write_bytes(data)
    second.write_bytes(data)
    os.utime(second, ns=(1, 1))
    assert file_fingerprint(str(first)) == file_fingerprint(str(second))
    data[len(data) // 2] ^= 1  # inside the middle sample
    second.write_bytes(data)
    assert file_fingerprint(str(first)) != file_fingerprint(str(second))
    second.write_bytes(data[:-1])  # another size
    assert file_fingerprint(str(first)) != file_fingerprint(str(second))


def test_changed_weights_rebuild_the_graph_and_drop_the_old_one(tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    cache = str(tmp_path / "cache")
    before = graph_path(str(model), cache, "none")
    int8 = graph_path(str(model), cache, "int8")
    weights = [name for name in os.listdir(model) if name.endswith(".safetensors")]
    os.utime(model / weights[0], ns=(1, 1))  # a new checkpoint as far as the key can tell
    after = graph_path(str(model), cache, "none")
    assert after != before and os.path.exists(after) and os.path.exists(int8)
    assert not os.path.exists(os.path.dirname(before))
