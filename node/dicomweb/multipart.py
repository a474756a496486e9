"""multipart/related codec for DICOMweb (PS3.18 8.6.1.2, RFC 2387 / RFC 2046).

Parsing is hand-written (a few dozen lines over bytes): the stdlib ``email`` parser works on
lines and text and copies binary parts several times, and ``requests-toolbelt`` is not a
dependency. Header *parameters* (boundary, type, transfer-syntax) are parsed with the stdlib
``email.message.Message`` so that quoting follows RFC 2045.
"""

from __future__ import annotations

import email.message
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field


class MultipartError(ValueError):
    """The body is not a well-formed multipart message."""


@dataclass
class Part:
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes | memoryview = b""

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "text/plain")


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """``'multipart/related; type="application/dicom"; boundary=x'`` -> (media type, params)."""
    msg = email.message.Message()
    msg["content-type"] = value or ""
    params = {k.lower(): str(v) for k, v in (msg.get_params() or [])[1:]}
    return msg.get_content_type().lower(), params


def parse_multipart(body: bytes, boundary: str) -> list[Part]:
    """Split a multipart body into parts. Raises MultipartError when it is malformed."""
    # RFC 2046 boundaries are 7-bit; an RFC 2231-encoded parameter can smuggle in anything else.
    if not boundary or len(boundary) > 200 or not boundary.isascii():
        raise MultipartError("missing or invalid boundary")
    data = memoryview(body)
    raw = bytes(body) if not isinstance(body, bytes) else body
    dash = b"--" + boundary.encode("latin-1")
    # The first delimiter may start the body (no preamble) or follow a CRLF.
    if raw.startswith(dash):
        pos = 0
    else:
        pos = raw.find(b"\r\n" + dash)
        if pos < 0:
            raise MultipartError("no boundary delimiter found in the body")
        pos += 2
    delimiter = b"\r\n" + dash
    parts: list[Part] = []
    while True:
        pos += len(dash)
        if raw[pos : pos + 2] == b"--":  # close delimiter
            return parts
        eol = raw.find(b"\r\n", pos)
        if eol < 0 or raw[pos:eol].strip(b" \t"):
            raise MultipartError("malformed boundary line")
        head_end = raw.find(b"\r\n\r\n", eol)
        if head_end == eol:  # no headers at all
            headers_blob = b""
            start = eol + 4
        elif head_end < 0:
            raise MultipartError("part headers are not terminated")
        else:
            headers_blob = raw[eol + 2 : head_end]
            start = head_end + 4
        end = raw.find(delimiter, start)
        if end < 0:
            raise MultipartError("part is not terminated by a boundary (truncated body?)")
        parts.append(Part(_parse_headers(headers_blob), data[start:end]))
        pos = end + 2


def _parse_headers(blob: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in blob.split(b"\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            raise MultipartError("malformed part header")
        headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return headers


def new_boundary() -> str:
    return f"triage-node-{uuid.uuid4().hex}"


def build_multipart(parts: Iterable[tuple[dict[str, str], bytes]], boundary: str) -> Iterable[bytes]:
    """Yield the encoded message chunk by chunk (for a streaming response)."""
    dash = b"--" + boundary.encode("latin-1")
    for headers, body in parts:
        head = b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items())
        yield dash + b"\r\n" + head + b"\r\n"
        yield body
        yield b"\r\n"
    yield dash + b"--\r\n"


def related_content_type(root_type: str, boundary: str) -> str:
    return f'multipart/related; type="{root_type}"; boundary={boundary}'
