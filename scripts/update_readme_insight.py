#!/usr/bin/env python3
"""Refresh the "insight of the day" in README.md from the deployed text-generation API (issue #5).

    python scripts/update_readme_insight.py --api-url URL [--readme README.md] [--prompt TEXT]
        [--api-key KEY] [--wake-timeout 180] [--max-new-tokens 80] [--seed N] [--greedy]

Wake the API (GET /health with backoff), read the model id (GET /info), POST the prompt to /generate,
then replace only what lies between the two INSIGHT markers. On any failure: exit 1, a message on stderr,
README.md byte-for-byte unchanged. When the new block equals the old one the file is not rewritten.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import stat
import string
import sys
import tempfile
import time
import unicodedata

import requests

MARKER_START = "<!-- INSIGHT:START -->"
MARKER_END = "<!-- INSIGHT:END -->"
DEFAULT_PROMPT = "Qual é uma reflexão interessante sobre a intersecção entre tecnologia e finanças?"
UNKNOWN_MODEL = "unknown model"
ANSWER_MAX_CHARS = 600
PROMPT_MAX_CHARS = 300
MODEL_ID_MAX_CHARS = 100
WAKE_MAX_DELAY = 15.0  # backoff between /health attempts: 1, 2, 4, 8, 15, 15 ... seconds
REQUEST_TIMEOUT = 30.0  # Render holds the first request while a free instance spins up (30-60 s)
GENERATE_TIMEOUT = 120.0
PROG = "update_readme_insight"


class InsightError(Exception):
    """Any failure that must stop the update and leave README.md untouched."""


def sanitize(text: str, limit: int = ANSWER_MAX_CHARS) -> str:
    """Untrusted text -> one line of plain text that Markdown shows literally (may be "").

    One rule instead of a list of patterns to strip: CommonMark lets a backslash escape *any* ASCII
    punctuation, and every piece of Markdown/HTML syntax (tags, comments, links, images, headings, lists,
    emphasis, tables, entities, autolinks) needs at least one of those characters, so escaping all of them
    leaves nothing the model writes able to become markup, whatever it tries.
    """
    # Control and format characters (newlines, NUL, C1, zero-width, bidi overrides) become spaces:
    # a single line cannot start a block, and nothing invisible reaches the reader.
    text = "".join(" " if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co") else ch for ch in text)
    # Removing one marker can join its neighbours into another ("<!--" + marker + "INSIGHT:END -->").
    while MARKER_START in text or MARKER_END in text:
        text = text.replace(MARKER_START, " ").replace(MARKER_END, " ")
    text = " ".join(text.split())
    if len(text) > limit:  # the cap counts what the reader sees, so it comes before the escaping
        cut = text[: limit - 1]
        space = cut.rfind(" ")
        text = (cut[:space] if space >= limit // 2 else cut) + "…"  # a word boundary unless one huge word
    return "".join("\\" + ch if ch in string.punctuation else ch for ch in text)


def render_insight(prompt: str, answer: str, day: dt.date, model_id: str) -> str:
    """The Markdown between the markers. Pass raw text: everything is sanitised here."""
    answer_md = sanitize(answer, ANSWER_MAX_CHARS)
    prompt_md = sanitize(prompt, PROMPT_MAX_CHARS)
    if not answer_md or not prompt_md:
        raise InsightError("the generated text or the prompt is empty after sanitising")
    model_md = sanitize(model_id, MODEL_ID_MAX_CHARS) or UNKNOWN_MODEL
    return (
        f"### Insight of the day / Insight do dia\n\n**Prompt / Pergunta:** {prompt_md}\n\n> {answer_md}\n\n"
        f"*Generated on {day.isoformat()} (UTC) by {model_md} · Gerado em {day.isoformat()} (UTC) pelo modelo "
        f"{model_md}. Updated nightly by the update-insight workflow / Atualizado todas as noites pelo workflow "
        "update-insight.*"
    )


def replace_between_markers(readme: str, block: str) -> str:
    """`readme` with the text between the markers replaced by `block`; everything else kept exactly."""
    for marker in (MARKER_START, MARKER_END):
        if readme.count(marker) != 1:
            raise InsightError(f"{marker} appears {readme.count(marker)} times in the README (expected once)")
        if marker in block:
            raise InsightError("the new block contains an INSIGHT marker")
    start, end = readme.index(MARKER_START) + len(MARKER_START), readme.index(MARKER_END)
    if end < start:
        raise InsightError(f"{MARKER_END} comes before {MARKER_START} in the README")
    newline = "\r\n" if "\r\n" in readme else "\n"
    # Slicing and concatenation: nothing in `block` is interpreted (no re.sub templates, no format()).
    return readme[:start] + newline + block.strip("\n").replace("\n", newline) + newline + readme[end:]


def _log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def wake(session: requests.Session, url: str, timeout: float) -> None:
    """GET /health until it answers 200, backing off 1 s, 2 s, 4 s ... 15 s; InsightError after `timeout` s."""
    deadline, delay, attempts = time.monotonic() + timeout, 1.0, 0
    while True:
        attempts += 1
        try:
            remaining = deadline - time.monotonic()
            response = session.get(url + "/health", timeout=max(1.0, min(REQUEST_TIMEOUT, remaining)))
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise InsightError(f"API at {url} not healthy after {timeout:g} s ({attempts} attempts, last: {last})")
        _log(f"waiting for the API to wake up ({last}); retrying in {min(delay, remaining):.1f} s")
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, WAKE_MAX_DELAY)


def fetch_model_id(session: requests.Session, url: str) -> str:
    """The model id from GET /info; "unknown model" on any failure (the insight is still worth having)."""
    try:
        response = session.get(url + "/info", timeout=REQUEST_TIMEOUT)
        model_id = response.json().get("model_id") if response.status_code == 200 else None
        if isinstance(model_id, str) and model_id.strip():
            return model_id
    except (requests.RequestException, ValueError, AttributeError):
        pass
    _log(f"no model id from /info; using '{UNKNOWN_MODEL}'")
    return UNKNOWN_MODEL


def generate(session: requests.Session, url: str, prompt: str, parameters: dict) -> str:
    """POST the prompt to /generate; the raw generated text, or InsightError."""
    try:
        response = session.post(
            url + "/generate", json={"inputs": prompt, "parameters": parameters}, timeout=GENERATE_TIMEOUT
        )
    except requests.RequestException as exc:
        raise InsightError(f"POST {url}/generate failed: {type(exc).__name__}: {exc}") from None
    if response.status_code != 200:
        raise InsightError(f"POST {url}/generate answered HTTP {response.status_code}: {response.text[:300]}")
    try:
        text = response.json()["generated_text"]
    except (ValueError, TypeError, KeyError):
        text = None
    if not isinstance(text, str):
        raise InsightError(f"POST {url}/generate did not answer JSON with a 'generated_text' string")
    return text


def write_atomically(path: str, data: bytes) -> None:
    """A temporary file in the same directory, then os.replace(): the README is never half-written."""
    fd, tmp = tempfile.mkstemp(prefix=".insight.", suffix=".tmp", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Refresh the insight between the INSIGHT markers.")
    parser.add_argument("--api-url", default=os.environ.get("INSIGHT_API_URL"), help="default: $INSIGHT_API_URL")
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--api-key", default=os.environ.get("INSIGHT_API_KEY"), help="default: $INSIGHT_API_KEY")
    parser.add_argument("--wake-timeout", type=float, default=180.0, help="seconds to wait for GET /health")
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (same seed, same answer)")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding (do_sample: false)")
    args = parser.parse_args(argv)
    try:
        url = (args.api_url or "").strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise InsightError(f"--api-url must be an http(s) URL, got {url!r}" if url else "no API URL given")
        try:
            with open(args.readme, "rb") as f:
                original = f.read().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InsightError(f"cannot read {args.readme} as UTF-8: {exc}") from None
        replace_between_markers(original, "")  # bad markers should not cost a cold start

        parameters: dict = {"max_new_tokens": args.max_new_tokens}
        if args.greedy:
            parameters["do_sample"] = False
        if args.seed is not None:
            parameters["seed"] = args.seed
        with requests.Session() as session:
            if (args.api_key or "").strip():
                session.headers["Authorization"] = f"Bearer {args.api_key.strip()}"
            wake(session, url, args.wake_timeout)
            model_id = fetch_model_id(session, url)
            answer = generate(session, url, args.prompt, parameters)

        today = dt.datetime.now(dt.timezone.utc).date()
        updated = replace_between_markers(original, render_insight(args.prompt, answer, today, model_id))
        if updated == original:
            print("unchanged")  # not even rewritten: no mtime change, nothing for git to see
            return 0
        try:
            write_atomically(args.readme, updated.encode("utf-8"))
        except OSError as exc:
            raise InsightError(f"cannot write {args.readme}: {exc}") from None
        print(f"updated {args.readme}")
        return 0
    except InsightError as exc:
        _log(f"error: {exc}; {args.readme} left unchanged")
        return 1


if __name__ == "__main__":
    sys.exit(main())
