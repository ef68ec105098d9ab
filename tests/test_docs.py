"""README.md and docs/ hold together: every relative link and heading anchor resolves (as GitHub renders
them), README stays short and keeps the insight bot's markers, and docs/configuration.md is exactly what
devtools/config_doc.py writes from textgen/settings.py."""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import unicodedata
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt

from devtools import config_doc
from devtools.servers import ROOT
from textgen.settings import Settings

README = os.path.join(ROOT, "README.md")
README_MAX_LINES = 250
# scripts/update_readme_insight.py's markers (tests import scripts only to test them: tests/test_layout.py).
INSIGHT_MARKERS = ("<!-- INSIGHT:START -->", "<!-- INSIGHT:END -->")
# A code span naming a path under one of these is a claim that the path exists.
REPO_DIRS = ("textgen", "tests", "scripts", "bench", "devtools", "deploy", "docs", ".ci", ".github")


def documents() -> list:
    return [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))


def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark").enable("table")  # GitHub's tables hold links too


def github_slug(text: str) -> str:
    """The anchor GitHub gives a heading: lower case; letters, marks, numbers, `_`, `-` and spaces kept,
    everything else dropped; spaces become hyphens."""
    kept = "".join(
        c for c in text.lower() if c in " -" or unicodedata.category(c)[0] in "LMN" or unicodedata.category(c) == "Pc"
    )
    return kept.replace(" ", "-")


def _inline_text(token) -> str:
    return "".join(child.content for child in token.children or [] if child.type in ("text", "code_inline"))


def anchors(markdown: str) -> set:
    """Every heading's anchor in a document; a repeated heading gets -1, -2... as on GitHub."""
    tokens = _parser().parse(markdown)
    seen: dict = {}
    out = set()
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            slug = github_slug(_inline_text(tokens[i + 1]))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def targets(markdown: str) -> list:
    """Every link's and image's target, in order."""
    out = []
    for token in _parser().parse(markdown):
        for child in token.children or []:
            if child.type == "link_open":
                out.append(child.attrs["href"])
            elif child.type == "image":
                out.append(child.attrs["src"])
    return out


def code_paths(markdown: str) -> list:
    """Code spans that name a path of this repository (`textgen/engine/queue.py`, `deploy/kubernetes/`)."""
    spans = [c.content for t in _parser().parse(markdown) for c in t.children or [] if c.type == "code_inline"]
    return [s for s in spans if re.fullmatch(r"(?:%s)/[\w./-]*" % "|".join(map(re.escape, REPO_DIRS)), s)]


def broken_links(path: str, root: str = ROOT) -> list:
    """The relative links in the file at `path` whose file, or heading anchor, does not exist."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    broken = []
    for href in targets(text):
        parts = urlsplit(href)
        if parts.scheme or parts.netloc:
            continue  # the web: not checked offline
        target = os.path.normpath(os.path.join(os.path.dirname(path), unquote(parts.path))) if parts.path else path
        if os.path.relpath(target, root).startswith(".."):
            broken.append(f"{href}: outside the repository")
        elif not os.path.exists(target):
            broken.append(f"{href}: no such file")
        elif parts.fragment:
            if not target.endswith(".md"):
                broken.append(f"{href}: an anchor into a file that is not Markdown")
                continue
            with open(target, encoding="utf-8") as f:
                if unquote(parts.fragment) not in anchors(f.read()):
                    broken.append(f"{href}: no such heading in {os.path.relpath(target, root)}")
    return broken


@pytest.mark.parametrize("path", documents(), ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_and_anchor_resolves(path):
    assert broken_links(path) == []


@pytest.mark.parametrize("path", documents(), ids=lambda p: os.path.relpath(p, ROOT))
def test_every_path_named_in_code_exists(path):
    with open(path, encoding="utf-8") as f:
        missing = [p for p in code_paths(f.read()) if not os.path.exists(os.path.join(ROOT, p))]
    assert missing == []


def test_the_docs_are_all_reachable_from_readme():
    """One click from README's table to every document (its links, followed one level)."""
    with open(README, encoding="utf-8") as f:
        linked = {os.path.normpath(os.path.join(ROOT, urlsplit(h).path)) for h in targets(f.read()) if not urlsplit(h).scheme}
    assert set(documents()) - {README} <= linked


def test_readme_is_short():
    with open(README, encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move the reference into docs/"


def test_readme_holds_one_pair_of_insight_markers_in_order():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    start, end = INSIGHT_MARKERS
    assert text.count(start) == 1 and text.count(end) == 1
    assert text.index(start) < text.index(end)


def test_configuration_doc_is_what_the_generator_writes():
    with open(config_doc.OUTPUT, encoding="utf-8") as f:
        assert f.read() == config_doc.generate(), "docs/configuration.md is stale: run python -m devtools.config_doc"


def test_every_setting_and_gunicorn_variable_is_in_the_configuration_doc():
    with open(config_doc.OUTPUT, encoding="utf-8") as f:
        text = f.read()
    with open(os.path.join(ROOT, "gunicorn.conf.py"), encoding="utf-8") as f:
        gunicorn_names = re.findall(r"environ\.get\(\"([A-Z_]+)\"", f.read())
    names = [f.name.upper() for f in dataclasses.fields(Settings)] + gunicorn_names
    assert gunicorn_names and [n for n in names if f"| `{n}`" not in text and f", `{n}`" not in text] == []


# The checks above can fail: each helper, on a small repository of its own.


def test_github_slugs():
    assert github_slug("Log-probabilities (`details`, `top_n_tokens`)") == "log-probabilities-details-top_n_tokens"
    assert github_slug("Playground (GET /)") == "playground-get-"
    assert github_slug("The engine loop's own cost") == "the-engine-loops-own-cost"
    assert github_slug("Em português") == "em-português"
    assert anchors("# A\n## A\n### A.\n") == {"a", "a-1", "a-2"}


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "api.md").write_text("# API\n\n## Errors (`4xx`)\n", encoding="utf-8")
    (tmp_path / "logo.png").write_bytes(b"")
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Title\n\n| doc | topics |\n|---|---|\n| [API](docs/api.md) | [errors](docs/api.md#errors-4xx) |\n\n"
        "[gone](docs/gone.md) [wrong](docs/api.md#limits) [self](#title) [self, wrong](#nope) "
        "[web](https://example.org/x.md#y) ![logo](logo.png) [up](../elsewhere.md) [png](logo.png#x)\n",
        encoding="utf-8",
    )
    assert broken_links(str(readme), root=str(tmp_path)) == [
        "docs/gone.md: no such file",
        "docs/api.md#limits: no such heading in docs/api.md",
        "#nope: no such heading in README.md",
        "../elsewhere.md: outside the repository",
        "logo.png#x: an anchor into a file that is not Markdown",
    ]


def test_paths_in_code_spans_are_recognised():
    text = "`textgen/engine/queue.py`, `deploy/kubernetes/`, `MAX_BATCH_SIZE`, `python -m pytest`, `x/y.py`"
    assert code_paths(text) == ["textgen/engine/queue.py", "deploy/kubernetes/"]


SETTINGS_SOURCE = '''
@dataclass(frozen=True)
class Settings:
    # Where `model_id` is | read from.
    model_id: str = "m"
    # Sampling defaults,
    # on two lines.
    default_do_sample: bool = True
    default_top_k: int = 50

    port: int = 5000
'''


def test_the_generator_groups_rows_and_refuses_an_undocumented_field():
    rows = config_doc.rows(SETTINGS_SOURCE.replace("\n    port: int = 5000\n", "\n"))
    assert [(r.names, r.defaults) for r in rows] == [
        (["`MODEL_ID`"], ["`distilbert/distilgpt2`"]),  # defaults come from the real Settings
        (["`DEFAULT_DO_SAMPLE`", "`DEFAULT_TOP_K`"], ["`true`", "`50`"]),
    ]
    assert rows[1].comment == "Sampling defaults, on two lines."
    assert "| `MODEL_ID` | `distilbert/distilgpt2` | Where `MODEL_ID` is \\| read from. |" in config_doc.render(
        SETTINGS_SOURCE.replace("\n    port: int = 5000\n", "\n")
    )
    with pytest.raises(ValueError, match="Settings.port has no comment"):
        config_doc.rows(SETTINGS_SOURCE)


def test_a_changed_comment_makes_the_committed_doc_stale():
    with open(config_doc.SETTINGS_PY, encoding="utf-8") as f:
        source = f.read()
    changed = source.replace("# HTTP port", "# The HTTP port", 1)
    assert changed != source and config_doc.render(changed) != config_doc.generate()
