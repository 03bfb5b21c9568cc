"""The OpenAI Batch file format, as ``vllm run-batch`` also reads and writes it.

Input, one JSON object a line: ``{"custom_id", "method": "POST", "url", "body"}``.
Output, one a line, in completion order: ``{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error"}``. ``error`` is null on success; otherwise it repeats the error
body's fields (``code`` is the HTTP status, ``type``, ``message``, ``param``) plus ``line``, the
1-based input line, so a line without a usable ``custom_id`` can still be matched (its
``custom_id`` is then null).
Light imports only: no Ray here.
"""

import base64
import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_app.errors import error_body

URLS = ("/v1/completions", "/v1/chat/completions", "/v1/images/generations")
IMAGE_URL = "/v1/images/generations"


@dataclass(frozen=True)
class Request:
    """One well-formed input line."""

    line: int
    custom_id: str
    url: str
    body: dict[str, Any]


@dataclass(frozen=True)
class BadLine:
    """An input line refused before it reaches the app (400)."""

    line: int
    custom_id: str | None
    message: str
    param: str | None = None


def read_input(path: Path) -> list[Request | BadLine]:
    """Every non-blank line of ``path``, parsed. Duplicate ``custom_id``s after the first are
    bad lines without ``custom_id`` (a resume matches answers by ``custom_id``)."""
    out: list[Request | BadLine] = []
    seen: set[str] = set()
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            if raw.strip():
                item = parse_line(n, raw)
                cid = item.custom_id
                if cid is not None and cid in seen:
                    item = BadLine(n, None, f"duplicate custom_id {cid!r}", "custom_id")
                elif cid is not None:
                    seen.add(cid)
                out.append(item)
    return out


def parse_line(n: int, raw: bytes) -> Request | BadLine:
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return BadLine(n, None, f"line {n} is not valid JSON: {e}")
    if not isinstance(obj, dict):
        return BadLine(n, None, f"line {n} must be a JSON object")
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid:
        return BadLine(n, None, "'custom_id' must be a non-empty string", "custom_id")
    method = obj.get("method", "POST")
    if method != "POST":
        return BadLine(n, cid, f"'method' must be 'POST', not {method!r}", "method")
    if obj.get("url") not in URLS:
        return BadLine(n, cid, f"'url' must be one of {', '.join(URLS)}", "url")
    if not isinstance(obj.get("body"), dict):
        return BadLine(n, cid, "'body' must be a JSON object", "body")
    return Request(n, cid, obj["url"], obj["body"])


def result_line(line: int, custom_id: str | None, status: int, body: dict) -> dict[str, Any]:
    """The output line for one answered request (``body`` is the response or the error body)."""
    error = None
    if status != 200:
        error = {**body.get("error", {"message": str(body), "code": status}), "line": line}
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": uuid.uuid4().hex, "body": body},
        "error": error,
    }


def bad_line(bad: BadLine) -> dict[str, Any]:
    body = error_body(bad.message, "invalid_request_error", 400, bad.param)
    return result_line(bad.line, bad.custom_id, 400, body)


def answered(path: Path) -> tuple[set[str], set[int]]:
    """(custom_ids, line numbers of id-less error lines) already in an output file, for a
    resume. A partial last line (the job was killed mid-write) is cut off first."""
    if not path.exists():
        return set(), set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
        data = data[: data.rfind(b"\n") + 1]
    ids: set[str] = set()
    lines: set[int] = set()
    for raw in data.splitlines():
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if obj.get("custom_id") is not None:
            ids.add(obj["custom_id"])
        elif isinstance(obj.get("error"), dict) and isinstance(obj["error"].get("line"), int):
            lines.add(obj["error"]["line"])
    return ids, lines


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def save_images(body: dict[str, Any], custom_id: str, images_dir: Path) -> dict[str, Any]:
    """An images response with each ``b64_json`` written to ``images_dir`` as a PNG and
    replaced by ``path`` (absolute)."""
    data = []
    digest = hashlib.sha1(custom_id.encode()).hexdigest()[:8]  # "a/b" and "a_b" differ
    stem = f"{_UNSAFE.sub('_', custom_id)[:80]}-{digest}"
    for i, item in enumerate(body.get("data", [])):
        item = dict(item)
        b64 = item.pop("b64_json", None)
        if b64 is not None:
            path = (images_dir / f"{stem}-{i}.png").resolve()
            path.write_bytes(base64.b64decode(b64))
            item["path"] = str(path)
        data.append(item)
    return {**body, "data": data}
