"""scripts/update_readme_insight.py (issue #5): the pure functions, then the script against real servers."""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import stat
import string
import subprocess
import sys
import threading
import time
import unicodedata
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from scripts import update_readme_insight as insight
from scripts.update_readme_insight import (
    MARKER_END,
    MARKER_START,
    InsightError,
    main,
    render_insight,
    replace_between_markers,
    sanitize,
)
from devtools.servers import ROOT, free_port, gunicorn_server, retire

SCRIPT = os.path.join(ROOT, "scripts", "update_readme_insight.py")

HEAD = "# Project\n\nIntro with $1, \\1 and \\g<0> outside the markers. Ünïcödé ✓\n\n"
OLD_INNER = "\n### Insight of the day / Insight do dia\n\n> placeholder\n"
TAIL = "\n\n## Later section\n\nBackslash \\ and dollar $ stay as they are.\n"
SEED_README = HEAD + MARKER_START + OLD_INNER + MARKER_END + TAIL
DAY = dt.date(2025, 1, 31)


def utc_today() -> str:
    return dt.datetime.now(dt.timezone.utc).date().isoformat()


def split_readme(text: str):
    head, rest = text.split(MARKER_START)
    inner, tail = rest.split(MARKER_END)
    return head, inner, tail


def unescape(text: str) -> str:
    """What a reader sees once the backslash escapes are applied (and the check that they are all there):
    AssertionError on any ASCII punctuation character not preceded by an escaping backslash."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\":
            assert i + 1 < len(text) and text[i + 1] in string.punctuation, f"dangling backslash in {text!r}"
            out.append(text[i + 1])
            i += 2
            continue
        assert text[i] not in string.punctuation, f"unescaped {text[i]!r} in {text!r}"
        out.append(text[i])
        i += 1
    return "".join(out)


def assert_inert(out: str) -> None:
    """`out` is one line of text that Markdown shows literally: every ASCII punctuation escaped (so no tag,
    comment, entity, link, image, emphasis, table, heading or list can start), no control/format character,
    no marker, no leading or doubled whitespace."""
    unescape(out)
    assert out == " ".join(out.split())
    assert not any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co") for ch in out)
    for bit in ("<!--", "-->", "insight:start", "insight:end"):
        assert bit not in out.lower()


# ---------------------------------------------------------------------------------------------------
# replace_between_markers
# ---------------------------------------------------------------------------------------------------


def test_replace_changes_only_what_lies_between_the_markers():
    result = replace_between_markers(SEED_README, "new block")
    assert result == HEAD + MARKER_START + "\nnew block\n" + MARKER_END + TAIL


def test_replace_is_idempotent():
    once = replace_between_markers(SEED_README, "line 1\n\nline 2")
    assert replace_between_markers(once, "line 1\n\nline 2") == once != SEED_README


@pytest.mark.parametrize(
    "readme, message",
    [
        ("no markers at all\n", "appears 0 times"),
        (f"a\n{MARKER_START}\nb\n", "INSIGHT:END --> appears 0 times"),
        (f"a\n{MARKER_END}\nb\n", "INSIGHT:START --> appears 0 times"),
        (f"{MARKER_START}\n{MARKER_END}\n{MARKER_START}\n", "appears 2 times"),
        (f"{MARKER_START}\n{MARKER_END}\n{MARKER_END}\n", "appears 2 times"),
        (f"a\n{MARKER_END}\nx\n{MARKER_START}\nb\n", "before"),
    ],
    ids=["none", "no-end", "no-start", "dup-start", "dup-end", "end-before-start"],
)
def test_replace_rejects_bad_markers(readme, message):
    with pytest.raises(InsightError, match=message):
        replace_between_markers(readme, "block")


def test_replace_refuses_a_block_that_contains_a_marker():
    with pytest.raises(InsightError, match="contains an INSIGHT marker"):
        replace_between_markers(SEED_README, f"evil {MARKER_END} tail")


@pytest.mark.parametrize("block", ["\\1 and \\g<0> and $1", "C:\\new\\table \\\\ end", "$& $' $` ${1} \\n \\t"])
def test_replace_treats_the_block_literally(block):
    _, inner, _ = split_readme(replace_between_markers(SEED_README, block))
    assert inner == "\n" + block + "\n"  # not one backslash or dollar interpreted


def test_replace_keeps_crlf_line_endings():
    readme = SEED_README.replace("\n", "\r\n")
    result = replace_between_markers(readme, "a\nb")
    assert "\r\na\r\nb\r\n" in result
    assert "\n" not in result.replace("\r\n", "")
    assert result.endswith(MARKER_END + TAIL.replace("\n", "\r\n"))


# ---------------------------------------------------------------------------------------------------
# sanitize and render_insight
# ---------------------------------------------------------------------------------------------------

HOSTILE = [
    "<b>Bold</b> <!-- hidden comment --> <script>alert(1)</script><div class='x'>text</div>",
    "ok &lt;img src=x onerror=alert(1)&gt; &amp; &#60;b&#62; fine",
    "visible <!-- swallow the rest",
    "See [the docs](https://evil.example/x) and [ref][1] or <https://auto.example> or www.bare.example",
    "[outer [inner](https://a.example) text](https://b.example)",
    "before ![tracking pixel](https://evil.example/p.png) after",
    "[1]: https://evil.example/def \"title\"",
    "# Title\n## Sub title\n> quoted\n```python\ncode\n```\nSetext\n====\n---\n    indented code",
    "- item\n+ item\n* item\n1. first\n2) second\n| a | b |\n|---|---|",
    r"*a* _b_ **c** __d__ ~~e~~ `f` $x$ $$y$$ back\slash trailing\\",
    f"a {MARKER_START} b {MARKER_END} c --> d <!-- e INSIGHT:STAINSIGHT:STARTRT insight:end",
    "<!--" + MARKER_START + "INSIGHT:START --> joined",
    "left\u202eright\x00end\u200b\x85c1\u2066iso\u2069\r\nnext\x1b[31mred",
    ":smile: @someone #123 user@example.com javascript:alert(1)",
]


@pytest.mark.parametrize("raw", HOSTILE)
def test_hostile_text_comes_out_inert(raw):
    out = sanitize(raw)
    assert_inert(out)
    assert out  # reduced to text, not to nothing


@pytest.mark.parametrize("raw", HOSTILE)
def test_a_commonmark_renderer_shows_it_literally(raw):
    """The proof that matters: rendered, the answer is one paragraph of plain text, nothing else."""
    import markdown_it  # requirements-dev.txt: CommonMark, as GitHub renders the README
    out = sanitize(raw)
    rendered = markdown_it.MarkdownIt("commonmark").render(out)
    assert rendered.startswith("<p>") and rendered.endswith("</p>\n")
    body = rendered[len("<p>") : -len("</p>\n")]
    assert "<" not in body  # no tag, link, image, heading or list was produced
    assert html.unescape(body) == unescape(out)  # every character shows as itself


def test_link_and_image_syntax_is_escaped_not_followed():
    assert sanitize("[docs](https://x.example)") == r"\[docs\]\(https\:\/\/x\.example\)"
    assert sanitize("![p](i.png)") == r"\!\[p\]\(i\.png\)"


def test_html_is_escaped_as_text():
    assert sanitize("<b>hi</b> &amp;") == r"\<b\>hi\<\/b\> \&amp\;"


def test_block_markers_are_escaped_and_on_one_line():
    assert sanitize("# Title\n- item\n1. first") == r"\# Title \- item 1\. first"


def test_marker_strings_are_removed():
    assert sanitize(f"a {MARKER_START} b {MARKER_END} c") == "a b c"
    # Removing the inner marker joins its neighbours into another one, which goes too.
    assert sanitize("x <!--" + MARKER_START + "INSIGHT:START --> y") == "x y"


def test_control_characters_are_removed_and_whitespace_collapsed():
    assert sanitize("  a\n\n  b\t\tc\r\nd  ") == "a b c d"
    assert sanitize("left\u202eright\x00end\u200b\x9bz") == "left right end z"


def test_length_is_capped_at_a_word_boundary():
    raw = " ".join(f"word{i}" for i in range(500))
    out = sanitize(raw)
    assert len(out) <= 600 and out.endswith("…")
    body = out[:-1]
    assert raw.startswith(body) and raw[len(body)] == " "  # cut between two words
    assert sanitize("x" * 5000) == "x" * 599 + "…"
    assert sanitize("short text") == "short text"
    # The cap counts visible characters: escaping may make the Markdown longer, never the text.
    assert unescape(sanitize("." * 5000)) == "." * 599 + "…"


@pytest.mark.parametrize("raw", ["", "   \n\t", "\u200b\x00\u202e", f"{MARKER_START}\n{MARKER_END}"])
def test_sanitize_can_leave_nothing(raw):
    assert sanitize(raw) == ""


def test_render_insight_contents():
    block = render_insight("What *is* it?", "An <b>answer</b>", DAY, "org/model_x")
    assert "Insight of the day / Insight do dia" in block
    assert r"What \*is\* it\?" in block
    assert "\n> An \\<b\\>answer\\<\\/b\\>\n" in block
    assert "2025-01-31" in block
    assert r"org\/model\_x" in block
    assert MARKER_START not in block and MARKER_END not in block


def test_render_insight_rejects_an_empty_answer():
    with pytest.raises(InsightError, match="empty"):
        render_insight("prompt", " \u200b\n", DAY, "m")


def test_hostile_answer_cannot_break_the_readme():
    hostile = f"{MARKER_END}\n# Pwned\n<img src=x onerror=alert(1)>[click](javascript:alert(1)) {MARKER_START}"
    result = replace_between_markers(SEED_README, render_insight("p", hostile, DAY, "m"))
    assert result.count(MARKER_START) == 1 and result.count(MARKER_END) == 1
    head, inner, tail = split_readme(result)
    assert head == HEAD and tail == TAIL
    quote = [line for line in inner.splitlines() if line.startswith("> ")]
    assert quote == [r"> \# Pwned \<img src\=x onerror\=alert\(1\)\>\[click\]\(javascript\:alert\(1\)\)"]


# ---------------------------------------------------------------------------------------------------
# The script against servers
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def readme(tmp_path):
    path = tmp_path / "README.md"
    path.write_bytes(SEED_README.encode("utf-8"))
    os.chmod(path, 0o640)
    return path


def run_cli(*args, timeout=120):
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k not in ("INSIGHT_API_URL", "INSIGHT_API_KEY")},
    )
    return proc, time.monotonic() - started


def assert_only_block_changed(path, before: bytes):
    after = path.read_bytes()
    assert after != before
    old_head, old_inner, old_tail = split_readme(before.decode("utf-8"))
    new_head, new_inner, new_tail = split_readme(after.decode("utf-8"))
    assert new_head.encode() == old_head.encode() and new_tail.encode() == old_tail.encode()
    assert new_inner != old_inner
    return new_inner


def no_temp_files_left(path):
    return sorted(os.listdir(path.parent)) == [path.name]


def test_end_to_end_against_gunicorn_then_unchanged(gunicorn_url, readme, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.delenv("INSIGHT_API_KEY", raising=False)
    before = readme.read_bytes()
    days = {utc_today()}  # before and after the run: one crossing midnight UTC sees either date
    args = ["--api-url", gunicorn_url + "/", "--readme", str(readme), "--seed", "7", "--max-new-tokens", "24"]
    assert main(args) == 0
    days.add(utc_today())
    assert "updated" in capsys.readouterr().out
    inner = assert_only_block_changed(readme, before)

    expected = requests.post(
        gunicorn_url + "/generate",
        json={"inputs": insight.DEFAULT_PROMPT, "parameters": {"max_new_tokens": 24, "seed": 7}},
        timeout=60,
    ).json()["generated_text"]
    assert sanitize(expected)  # the tiny model's answer survives sanitising
    assert f"\n> {sanitize(expected)}\n" in inner
    assert sanitize(insight.DEFAULT_PROMPT, insight.PROMPT_MAX_CHARS) in inner
    assert any(day in inner for day in days)
    assert sanitize(tiny_model_dir, insight.MODEL_ID_MAX_CHARS) in inner  # /info's model_id
    assert stat.S_IMODE(os.stat(readme).st_mode) == 0o640
    assert no_temp_files_left(readme)

    first = readme.read_bytes()
    st = os.stat(readme)
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == "unchanged"
    assert readme.read_bytes() == first
    st2 = os.stat(readme)
    assert (st2.st_ino, st2.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)  # not even rewritten


def test_greedy_request_is_deterministic(gunicorn_url, readme):
    args = ["--api-url", gunicorn_url, "--readme", str(readme), "--greedy", "--max-new-tokens", "16"]
    assert main(args) == 0
    first = readme.read_bytes()
    assert first != SEED_README.encode()
    assert main(args) == 0
    assert readme.read_bytes() == first


def test_api_down_fails_after_the_wake_timeout(readme):
    before = readme.read_bytes()
    port = free_port()  # nothing listens there
    proc, elapsed = run_cli("--api-url", f"http://127.0.0.1:{port}", "--readme", str(readme), "--wake-timeout", "2")
    assert proc.returncode != 0
    assert "not healthy after 2 s" in proc.stderr and "left unchanged" in proc.stderr
    assert 2 <= elapsed < 30
    assert readme.read_bytes() == before
    assert no_temp_files_left(readme)


def test_waits_for_a_server_that_comes_up_late(tiny_model_dir, readme, capsys):
    port = free_port()
    delay = 3.0
    procs = []

    def start():
        env = {**os.environ, "MODEL_ID": tiny_model_dir, "PORT": str(port), "THREADS": "2"}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "app:app"], cwd=ROOT, env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )

    timer = threading.Timer(delay, start)
    before = readme.read_bytes()
    started = time.monotonic()
    timer.start()
    try:
        rc = main(["--api-url", f"http://127.0.0.1:{port}", "--readme", str(readme), "--wake-timeout", "120",
                   "--seed", "3", "--max-new-tokens", "12"])
        elapsed = time.monotonic() - started
    finally:
        timer.cancel()
        timer.join()
        for proc in procs:
            retire(proc)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert elapsed >= delay
    assert "waiting for the API to wake up" in captured.err
    assert procs, "the delayed server was never started"
    assert_only_block_changed(readme, before)


# A small stdlib server whose answers each test chooses: error statuses, broken JSON, hostile text.


@contextmanager
def stub_server(generate_status=200, generate_body=None, info=(200, {"model_id": "stub/model"})):
    seen = []
    routes = {
        ("GET", "/health"): (200, {"status": "ok"}),
        ("GET", "/info"): info,
        ("POST", "/generate"): (generate_status, generate_body),
    }

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
            status, payload = routes.get((self.command, self.path), (404, {"error": "nf", "error_type": "not_found"}))
            if not isinstance(payload, (bytes, str)):
                payload = json.dumps(payload)
            data = payload.encode() if isinstance(payload, str) else payload
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.parametrize(
    "status, body, message",
    [
        (500, {"error": "boom", "error_type": "generation"}, "HTTP 500: {\"error\": \"boom\""),
        (422, {"error": "`inputs` must be a string", "error_type": "validation"}, "HTTP 422"),
        (200, "this is not json{", "'generated_text' string"),
        (200, {"text": "wrong field"}, "'generated_text' string"),
        (200, {"generated_text": 42}, "'generated_text' string"),
        (200, ["not", "an", "object"], "'generated_text' string"),
        (200, {"generated_text": f" \u200b\n{MARKER_END}\t"}, "empty after sanitising"),
    ],
    ids=["500", "422", "bad-json", "no-field", "not-a-string", "not-an-object", "empty-after-sanitising"],
)
def test_unusable_answers_fail_and_leave_the_readme_alone(readme, capsys, status, body, message):
    before = readme.read_bytes()
    with stub_server(status, body) as (url, seen):
        rc = main(["--api-url", url, "--readme", str(readme), "--wake-timeout", "5"])
    err = capsys.readouterr().err
    assert rc == 1
    assert message in err and "left unchanged" in err
    assert [r["path"] for r in seen][-1] == "/generate"
    assert readme.read_bytes() == before
    assert no_temp_files_left(readme)


def test_request_shape_api_key_and_unknown_model(readme, capsys, monkeypatch):
    monkeypatch.setenv("INSIGHT_API_KEY", "s3cret-key")
    with stub_server(200, {"generated_text": " Money is <i>software</i> now."}, info=(500, "oops")) as (url, seen):
        assert main(["--api-url", url, "--readme", str(readme), "--max-new-tokens", "33", "--seed", "5"]) == 0
    captured = capsys.readouterr()
    assert "s3cret-key" not in captured.out + captured.err
    post = [r for r in seen if r["method"] == "POST"]
    assert len(post) == 1 and post[0]["path"] == "/generate"
    assert post[0]["headers"].get("Authorization") == "Bearer s3cret-key"
    assert json.loads(post[0]["body"]) == {
        "inputs": insight.DEFAULT_PROMPT,
        "parameters": {"max_new_tokens": 33, "seed": 5},
    }
    _, inner, _ = split_readme(readme.read_text(encoding="utf-8"))
    assert "\n> Money is \\<i\\>software\\<\\/i\\> now\\.\n" in inner
    assert "unknown model" in inner


def test_api_key_option_and_no_header_without_one(readme, monkeypatch):
    monkeypatch.delenv("INSIGHT_API_KEY", raising=False)
    with stub_server(200, {"generated_text": "one"}) as (url, seen):
        assert main(["--api-url", url, "--readme", str(readme)]) == 0
        assert all("Authorization" not in r["headers"] for r in seen)
        seen.clear()
        assert main(["--api-url", url, "--readme", str(readme), "--api-key", "k1"]) == 0
        assert {r["headers"].get("Authorization") for r in seen} == {"Bearer k1"}
    _, inner, _ = split_readme(readme.read_text(encoding="utf-8"))
    assert r"stub\/model" in inner  # /info's model_id, escaped like any API text


def test_hostile_answer_end_to_end(readme):
    hostile = f"Nice {MARKER_END} ![p](https://evil.example/p.png) [x](https://evil.example) <script>x</script>\n# H"
    before = readme.read_bytes()
    with stub_server(200, {"generated_text": hostile}) as (url, _):
        assert main(["--api-url", url, "--readme", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text.count(MARKER_START) == 1 and text.count(MARKER_END) == 1
    inner = assert_only_block_changed(readme, before)
    quote = [line[2:] for line in inner.splitlines() if line.startswith("> ")]
    assert len(quote) == 1 and quote[0].startswith("Nice ")
    assert_inert(quote[0])
    assert r"\<script\>" in quote[0] and r"\]\(" in quote[0]  # shown as text, not run or followed


@pytest.mark.parametrize(
    "content, message",
    [
        ("# No markers here\n", "appears 0 times"),
        (f"{MARKER_START}\n{MARKER_END}\n{MARKER_END}\n", "appears 2 times"),
        (f"{MARKER_END}\n{MARKER_START}\n", "before"),
    ],
    ids=["missing", "duplicated", "wrong-order"],
)
def test_bad_markers_fail_before_calling_the_api(tmp_path, capsys, content, message):
    path = tmp_path / "README.md"
    path.write_bytes(content.encode())
    with stub_server(200, {"generated_text": "text"}) as (url, seen):
        rc = main(["--api-url", url, "--readme", str(path)])
    assert rc == 1
    assert message in capsys.readouterr().err
    assert seen == []  # no cold start spent on a README that cannot be updated
    assert path.read_bytes() == content.encode()


def test_bad_markers_through_the_real_server(gunicorn_url, tmp_path):
    path = tmp_path / "README.md"
    path.write_bytes(b"# Nothing to replace\n")
    proc, _ = run_cli("--api-url", gunicorn_url, "--readme", str(path), "--wake-timeout", "5")
    assert proc.returncode == 1
    assert "INSIGHT:START --> appears 0 times" in proc.stderr
    assert path.read_bytes() == b"# Nothing to replace\n"


def test_missing_api_url_is_a_clear_error(readme):
    before = readme.read_bytes()
    proc, _ = run_cli("--readme", str(readme))
    assert proc.returncode == 1
    assert "no API URL given" in proc.stderr
    assert readme.read_bytes() == before


def test_against_a_keyed_server(tiny_model_dir, readme, capsys, monkeypatch):
    """The service with API_KEY set: the script's Bearer key gets through; without it, a 401 leaves
    the README byte-identical."""
    monkeypatch.delenv("INSIGHT_API_KEY", raising=False)
    before = readme.read_bytes()
    with gunicorn_server(tiny_model_dir, wait_for_exit=False, API_KEY="old-key,insight-key") as (url, _):
        args = ["--api-url", url, "--readme", str(readme), "--greedy", "--max-new-tokens", "8", "--wake-timeout", "5"]
        assert main([*args, "--api-key", "wrong-key"]) == 1
        assert "401" in capsys.readouterr().err
        assert readme.read_bytes() == before
        monkeypatch.setenv("INSIGHT_API_KEY", "insight-key")
        assert main(args) == 0
    assert "updated" in capsys.readouterr().out
    assert_only_block_changed(readme, before)
