#!/usr/bin/env python3
"""Refresh the "insight of the day" in README.md from the deployed text-generation API (issue #5).

    python scripts/update_readme_insight.py --api-url https://example.onrender.com [--readme README.md]
        [--prompt TEXT] [--api-key KEY] [--wake-timeout 180] [--max-new-tokens 80] [--seed N] [--greedy]

Steps: wake the API (GET /health with exponential backoff: a free Render instance needs 30-60 s to spin
up), read the model id from GET /info, POST the prompt to /generate, then rewrite only what lies between
``<!-- INSIGHT:START -->`` and ``<!-- INSIGHT:END -->``. The model's output is untrusted: it is reduced
to escaped plain text before it enters Markdown. On any failure the script exits non-zero with a message
on stderr and README.md is left byte-for-byte unchanged; when the new block equals the current one the
file is not rewritten at all ("unchanged").

Only the standard library and `requests`. The pure functions (`sanitize`, `render_insight`,
`replace_between_markers`) are importable and have no side effects.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import html
import os
import re
import stat
import sys
import tempfile
import time
import unicodedata
from typing import Optional, Sequence, Union

import requests

MARKER_START = "<!-- INSIGHT:START -->"
MARKER_END = "<!-- INSIGHT:END -->"
DEFAULT_PROMPT = "Qual é uma reflexão interessante sobre a intersecção entre tecnologia e finanças?"
UNKNOWN_MODEL = "unknown model"
ANSWER_MAX_CHARS = 600
PROMPT_MAX_CHARS = 300
MODEL_ID_MAX_CHARS = 100
WAKE_FIRST_DELAY = 1.0  # seconds between /health attempts: 1, 2, 4, 8, 15, 15, ...
WAKE_MAX_DELAY = 15.0
WAKE_REQUEST_TIMEOUT = 30.0  # Render holds the first request while the instance spins up
INFO_TIMEOUT = 30.0
GENERATE_TIMEOUT = 120.0
PROG = "update_readme_insight"


class InsightError(Exception):
    """Any failure that must stop the update and leave README.md untouched."""


class MarkerError(InsightError, ValueError):
    """The README's markers are missing, duplicated or out of order (or the new block contains one)."""


class ApiError(InsightError):
    """The API could not be reached, answered with an error, or answered something unusable."""


# ---------------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------------

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)  # an unterminated comment runs to the end
_SCRIPT_STYLE = re.compile(r"<(script|style)\b[^>]*>.*?(?:</\1\s*>|\Z)", re.DOTALL | re.IGNORECASE)
_TAG = re.compile(r"</?[A-Za-z][^<>]*>|<[!?][^<>]*>")  # elements, autolinks, <!DOCTYPE>, <?pi?>
_DESTINATION = r"(?:\((?:[^()]|\([^()]*\))*\)|\[[^\[\]]*\])"  # (url), (url(with)parens) or [ref]
_IMAGE = re.compile(r"!\[[^\[\]]*\]\s*" + _DESTINATION)
_LINK = re.compile(r"\[([^\[\]]*)\]\s*" + _DESTINATION)
_LINK_DEFINITION = re.compile(r"^[ \t]{0,3}\[[^\[\]]+\]:[ \t]*\S+.*$", re.MULTILINE)
_BARE_URL = re.compile(r"(?:\b[A-Za-z][A-Za-z0-9+.-]*://|\bwww\.)\S*", re.IGNORECASE)
_HEADING = re.compile(r"^[ \t]*#{1,6}(?=[ \t]|$)", re.MULTILINE)
_SETEXT_OR_RULE = re.compile(r"^[ \t]*(?:[=\-*_][ \t]*){3,}$", re.MULTILINE)
_QUOTE = re.compile(r"^[ \t]*(?:>[ \t]?)+", re.MULTILINE)
_FENCE = re.compile(r"^[ \t]*(?:`{3,}|~{3,})[^\n]*$", re.MULTILINE)
_EMPHASIS = re.compile(r"\*{2,}|_{2,}|~{2,}|`+")
_MARKER_BITS = re.compile(r"<!--|-->|INSIGHT:START|INSIGHT:END", re.IGNORECASE)
# Characters with a meaning somewhere in GitHub Markdown (CommonMark + GFM + GitHub's `$` math),
# backslash-escaped wherever they appear. CommonMark allows a backslash before any ASCII punctuation.
_ALWAYS_ESCAPE = set("\\`*_[]<>#!|~&$")
# Block starts that only matter at the beginning of the line: "-", "+", "=" and "1." / "1)".
_LINE_START = re.compile(r"^(?:([-+=])|(\d{1,9})([.)]))")


def _strip_until_stable(pattern: re.Pattern, replacement: str, text: str) -> str:
    for _ in range(100):  # nested constructs ([a [b](u)](v), INSIGHT:STAINSIGHT:STARTRT) unwrap one level at a time
        new = pattern.sub(replacement, text)
        if new == text:
            return text
        text = new
    return text


def _plain_text(text: str) -> str:
    """Markup, links and control characters out; one line of ordinary text left."""
    # Entities first (&lt;b&gt; is a tag too), a few rounds for double encoding.
    for _ in range(3):
        decoded = html.unescape(text)
        if decoded == text:
            break
        text = decoded
    # Control and format characters (NUL, zero-width, bidi overrides) carry nothing a reader needs.
    text = "".join(
        ch if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Co", "Cs") else " " for ch in text
    )
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _COMMENT.sub(" ", text)
    text = _SCRIPT_STYLE.sub(" ", text)
    text = _strip_until_stable(_TAG, " ", text)
    text = _LINK_DEFINITION.sub(" ", text)
    text = _strip_until_stable(_IMAGE, " ", text)
    text = _strip_until_stable(_LINK, r"\1", text)
    text = _BARE_URL.sub(" ", text)
    text = _FENCE.sub(" ", text)
    text = _HEADING.sub(" ", text)
    text = _SETEXT_OR_RULE.sub(" ", text)
    text = _QUOTE.sub(" ", text)
    text = _EMPHASIS.sub("", text)
    text = _strip_until_stable(_MARKER_BITS, "", text)
    return " ".join(text.split())


def _truncate(text: str, limit: int) -> str:
    """At most `limit` characters, cut at a word boundary with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:  # a word boundary not too far back; otherwise cut inside the (huge) word
        cut = cut[:space]
    return cut.rstrip(" ,;:-") + "…"


def _escape_markdown(text: str) -> str:
    escaped = "".join("\\" + ch if ch in _ALWAYS_ESCAPE else ch for ch in text)
    match = _LINE_START.match(escaped)
    if match and match.group(1):
        escaped = "\\" + escaped
    elif match:
        escaped = match.group(2) + "\\" + escaped[len(match.group(2)) :]
    return escaped


def sanitize(text: object, limit: int = ANSWER_MAX_CHARS) -> str:
    """Untrusted model output -> one line of Markdown-escaped plain text, at most `limit` visible characters.

    Drops HTML tags and comments (with <script>/<style> contents), images, link URLs (keeping the link
    text), bare URLs, heading/quote/fence markers, emphasis runs, control characters and anything that
    looks like the README's markers; collapses whitespace; caps the length at a word boundary with "…";
    backslash-escapes every character Markdown could interpret. May return "" (nothing usable left).
    """
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    plain = _truncate(_plain_text(text), limit)
    escaped = _escape_markdown(plain)
    if _MARKER_BITS.search(escaped):  # cannot happen after the steps above; refuse rather than trust it
        raise InsightError("sanitised text still contains a marker")
    return escaped


def _format_date(date: Union[str, _dt.date]) -> str:
    if isinstance(date, _dt.datetime):
        date = date.astimezone(_dt.timezone.utc).date()
    if isinstance(date, _dt.date):
        return date.isoformat()
    if isinstance(date, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        _dt.date.fromisoformat(date)  # rejects 2024-13-45
        return date
    raise ValueError(f"date must be YYYY-MM-DD, got {date!r}")


def render_insight(prompt: str, answer: str, date: Union[str, _dt.date], model_id: str) -> str:
    """The Markdown that goes between the markers (without the markers themselves).

    Every argument is treated as untrusted and sanitised here (pass the raw API answer, not a sanitised
    one, or it gets escaped twice). Raises InsightError when the answer has nothing left after sanitising.
    """
    answer_md = sanitize(answer, ANSWER_MAX_CHARS)
    if not answer_md:
        raise InsightError("the generated text is empty after sanitising")
    prompt_md = sanitize(prompt, PROMPT_MAX_CHARS)
    if not prompt_md:
        raise InsightError("the prompt is empty after sanitising")
    model_md = sanitize(model_id, MODEL_ID_MAX_CHARS) or UNKNOWN_MODEL
    day = _format_date(date)
    return "\n".join(
        [
            "### Insight of the day / Insight do dia",
            "",
            f"**Prompt / Pergunta:** {prompt_md}",
            "",
            f"> {answer_md}",
            "",
            f"*Generated on {day} (UTC) by {model_md} · Gerado em {day} (UTC) pelo modelo {model_md}. "
            "Updated nightly by the update-insight workflow / Atualizado todas as noites pelo workflow "
            "update-insight.*",
        ]
    )


def replace_between_markers(readme: str, block: str) -> str:
    """`readme` with everything between the two markers replaced by `block` (taken literally).

    Raises MarkerError when either marker is missing or appears more than once, when END comes before
    START, or when the block itself contains a marker. Everything outside the markers is kept exactly;
    applying the same block twice gives the same text.
    """
    for marker in (MARKER_START, MARKER_END):
        count = readme.count(marker)
        if count == 0:
            raise MarkerError(f"marker {marker} not found in the README")
        if count > 1:
            raise MarkerError(f"marker {marker} appears {count} times in the README (expected once)")
    start = readme.index(MARKER_START)
    end = readme.index(MARKER_END)
    if end < start:
        raise MarkerError(f"{MARKER_END} comes before {MARKER_START} in the README")
    if MARKER_START in block or MARKER_END in block:
        raise MarkerError("the new block contains an INSIGHT marker")
    newline = "\r\n" if "\r\n" in readme else "\n"
    body = block.strip("\r\n").replace("\r\n", "\n").replace("\n", newline)
    inner = newline + body + newline if body else newline
    head = readme[: start + len(MARKER_START)]
    # Plain concatenation: nothing in `block` is interpreted (no re.sub templates, no format strings).
    return head + inner + readme[end:]


# ---------------------------------------------------------------------------------------------------
# Side effects: HTTP and the file
# ---------------------------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def wake(session: requests.Session, url: str, timeout: float) -> None:
    """GET /health until it answers 200, backing off 1 s, 2 s, 4 s ... 15 s; ApiError after `timeout` s."""
    deadline = time.monotonic() + timeout
    delay = WAKE_FIRST_DELAY
    attempt = 0
    last = "no attempt made"
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        try:
            response = session.get(url + "/health", timeout=max(1.0, min(WAKE_REQUEST_TIMEOUT, remaining)))
            if response.status_code == 200:
                if attempt > 1:
                    _log(f"API awake after {attempt} attempts")
                return
            last = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ApiError(f"API at {url} not healthy after {timeout:g} s ({attempt} attempts, last: {last})")
        pause = min(delay, remaining)
        _log(f"waiting for the API to wake up ({last}); retrying in {pause:.1f} s")
        time.sleep(pause)
        delay = min(delay * 2, WAKE_MAX_DELAY)


def fetch_model_id(session: requests.Session, url: str) -> str:
    """The model id from GET /info, or "unknown model" on any failure (the insight is still worth having)."""
    try:
        response = session.get(url + "/info", timeout=INFO_TIMEOUT)
        if response.status_code == 200:
            model_id = response.json().get("model_id")
            if isinstance(model_id, str) and model_id.strip():
                return model_id
        _log(f"/info answered HTTP {response.status_code}; using '{UNKNOWN_MODEL}'")
    except (requests.RequestException, ValueError, AttributeError) as exc:
        _log(f"/info failed ({type(exc).__name__}); using '{UNKNOWN_MODEL}'")
    return UNKNOWN_MODEL


def _error_detail(response: requests.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and "error" in body:
            return f"{body.get('error_type', 'error')}: {str(body['error'])[:300]}"
    except ValueError:
        pass
    return response.text[:300].strip() or "(empty body)"


def generate(
    session: requests.Session,
    url: str,
    prompt: str,
    max_new_tokens: int,
    seed: Optional[int] = None,
    greedy: bool = False,
    timeout: float = GENERATE_TIMEOUT,
) -> str:
    """POST the prompt to /generate; the raw generated text (ApiError on anything but a usable 200)."""
    parameters: dict = {"max_new_tokens": max_new_tokens}
    if greedy:
        parameters["do_sample"] = False
    if seed is not None:
        parameters["seed"] = seed
    try:
        response = session.post(
            url + "/generate", json={"inputs": prompt, "parameters": parameters}, timeout=timeout
        )
    except requests.RequestException as exc:
        raise ApiError(f"POST {url}/generate failed: {type(exc).__name__}: {exc}") from None
    if response.status_code != 200:
        raise ApiError(f"POST {url}/generate answered HTTP {response.status_code} ({_error_detail(response)})")
    try:
        body = response.json()
    except ValueError:
        raise ApiError(f"POST {url}/generate answered invalid JSON: {response.text[:200]!r}") from None
    if isinstance(body, list) and len(body) == 1:  # the Hugging Face Inference API's shape
        body = body[0]
    if not isinstance(body, dict) or not isinstance(body.get("generated_text"), str):
        raise ApiError(f"POST {url}/generate answered JSON without a 'generated_text' string: {str(body)[:200]}")
    return body["generated_text"]


def write_atomically(path: str, data: bytes) -> None:
    """Write through a temporary file in the same directory and os.replace(), keeping the file's mode."""
    target = os.path.realpath(path)
    directory = os.path.dirname(target) or "."
    mode = stat.S_IMODE(os.stat(target).st_mode)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _read_readme(path: str) -> tuple[bytes, str]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise InsightError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return raw, raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InsightError(f"{path} is not UTF-8: {exc}") from None


def _normalize_url(url: str) -> str:
    url = (url or "").strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url):
        raise InsightError(f"--api-url must be an http(s) URL, got {url!r}" if url else "no API URL given")
    return url


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Refresh the insight between the INSIGHT markers of README.md from the API."
    )
    parser.add_argument(
        "--api-url",
        default=os.environ.get("INSIGHT_API_URL"),
        help="base URL of the service (default: $INSIGHT_API_URL)",
    )
    parser.add_argument("--readme", default="README.md", help="README to update (default: README.md)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt sent to /generate")
    parser.add_argument(
        "--api-key",
        default=None,
        help="sent as 'Authorization: Bearer KEY' (default: $INSIGHT_API_KEY, if set)",
    )
    parser.add_argument(
        "--wake-timeout", type=float, default=180.0, help="seconds to wait for GET /health (default: 180)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=80, help="tokens to generate (default: 80)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (same seed, same answer)")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding (do_sample: false)")
    parser.add_argument(
        "--timeout", type=float, default=GENERATE_TIMEOUT, help="seconds for POST /generate (default: 120)"
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.max_new_tokens < 1:
            raise InsightError("--max-new-tokens must be >= 1")
        if args.wake_timeout < 0:
            raise InsightError("--wake-timeout must be >= 0")
        url = _normalize_url(args.api_url)
        if not sanitize(args.prompt, PROMPT_MAX_CHARS):
            raise InsightError("--prompt is empty (after sanitising)")
        api_key = args.api_key if args.api_key is not None else os.environ.get("INSIGHT_API_KEY", "")

        # Check the README first: a README without usable markers should not cost a cold start.
        original_bytes, original = _read_readme(args.readme)
        replace_between_markers(original, "")

        with requests.Session() as session:
            session.headers["User-Agent"] = f"{PROG}/1 (+README insight bot)"
            if api_key.strip():
                session.headers["Authorization"] = f"Bearer {api_key.strip()}"
            wake(session, url, args.wake_timeout)
            model_id = fetch_model_id(session, url)
            answer = generate(session, url, args.prompt, args.max_new_tokens, args.seed, args.greedy, args.timeout)

        date = _dt.datetime.now(_dt.timezone.utc).date()
        block = render_insight(args.prompt, answer, date, model_id)
        updated = replace_between_markers(original, block)

        # Re-read right before writing: if the file changed meanwhile, do not clobber it.
        current_bytes, _ = _read_readme(args.readme)
        if current_bytes != original_bytes:
            raise InsightError(f"{args.readme} changed while the API was answering; not overwriting it")
        if updated == original:
            print("unchanged")
            return 0
        try:
            write_atomically(args.readme, updated.encode("utf-8"))
        except OSError as exc:
            raise InsightError(f"cannot write {args.readme}: {exc}") from None
        print(f"updated {args.readme}")
        return 0
    except InsightError as exc:
        _log(f"error: {exc}")
        _log(f"{args.readme} left unchanged")
        return 1


if __name__ == "__main__":
    sys.exit(main())
