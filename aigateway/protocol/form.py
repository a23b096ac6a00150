"""A form field read as Go's net/http reads it for Ollama: `r.FormValue(field)`.

Ollama reads a form on one route, /v1/audio/transcriptions (middleware/openai.go
`TranscriptionMiddleware`): `r.ParseMultipartForm(25 << 20)`, any error answered with
400 `failed to parse multipart form: ...`, then `r.FormValue("model")` (empty: 400
`model is required`).

The order of values is Go's (net/http request.go `ParseForm`, `ParseMultipartForm`; Go
issue 64575 corrected the FormValue documentation that said otherwise):

- application/x-www-form-urlencoded: the body's values, then the query's.
- multipart/form-data: the QUERY's values first, then the body's: ParseForm puts the query
  into r.Form and ParseMultipartForm appends the parts after it.
- any other type: the query's alone.

A multipart body is read as Go 1.26's mime/multipart reads it (the boundary found as
`Reader.nextPart` and `scanUntilBoundary` find it, headers as
textproto.ReadMIMEHeader reads them, names as mime.ParseMediaType parses
Content-Disposition, a part with a filename is a file and not a value, at most 1000
parts). What ParseMultipartForm refuses (a malformed body or query, a form type whose
parameters do not parse) raises UndecidableForm: Ollama refuses the request then
(FormValue alone would quietly fall back to the query). So does what this reader cannot
decide as Go would, on purpose and rarely: quoted-printable parts, RFC 2231
`name*`/`filename*` parameters, bodies over MAX_BODY, boundaries over 200 bytes, more
header lines or preamble lines than the bounds below (which keep the work linear).

Ollama refuses a urlencoded body (ErrNotMultipart), but FormValue reads it: such bodies are
read as FormValue does for a POST, pairs url.ParseQuery rejects left out as FormValue
leaves them. A body Go reads only partly (over 10 MB) raises.

Go keeps a value's bytes; Ollama sends the model on in JSON, which makes each byte that is
not UTF-8 a U+FFFD, as the value returned here does.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote_to_bytes

from .names import GO_SPACE

# Under this size Go's memory limits for ParseMultipartForm(25 << 20) (35 MB for values,
# headers and in-memory files, with the parts and header lines below) cannot be met.
MAX_BODY: Final = 30 << 20
MAX_PARTS: Final = 1000  # mime/multipart ReadForm (GODEBUG multipartmaxparts)
# Go allows 10000 header lines per part (GODEBUG multipartmaxheaders) and any preamble;
# this reader reads no more than these in all, so that no body keeps it looping long.
MAX_HEADERS: Final = 10000
MAX_PREAMBLE_LINES: Final = 1000
MAX_QUERY_PAIRS: Final = 1000  # Go refuses more than 10000 (urlmaxqueryparams); kept well under
MAX_URLENCODED: Final = 10 << 20  # net/http parsePostForm: "http: POST too large"
_MAX_BOUNDARY = 200
_LINE = 4096  # bufio's buffer in multipart.Reader: longer lines fail ReadSlice

_TSPECIALS = frozenset('()<>@,;:\\"/[]?=')
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# textproto validHeaderFieldByte: the token characters.
_FIELD_BYTES = frozenset(
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
# canonicalMIMEHeaderKey accepts a space too (before the colon), but then keeps the key
# as sent, so that Header.Get("Content-Disposition") does not find it.
_KEY_BYTES = _FIELD_BYTES | {0x20}
# textproto validHeaderValueByte: HTAB, SP, VCHAR and obs-text (no other control byte).
_BAD_VALUE_BYTE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


class UndecidableForm(ValueError):
    """A form Go's ParseMultipartForm refuses, or one this reader cannot decide as Go."""


def form_value(body: bytes, content_type: str, query: str, field: str) -> str | None:
    """The value `r.FormValue(field)` gives Ollama for a POST with this body,
    Content-Type and raw (still percent-encoded) query string; None when no value has
    that name (Go gives "" then, as it does for an empty value)."""
    media, params = _media_type(content_type)
    key = field.encode()
    form_types = ("multipart/form-data", "application/x-www-form-urlencoded")
    if media in form_types and params is None:
        # Go takes it for no form (multipart) or reads it depending on the error: undecided.
        raise UndecidableForm(f"the {media} Content-Type has malformed parameters")
    if media == "multipart/form-data" and params is not None:
        # ParseForm's query error comes back from ParseMultipartForm after the body.
        query_values, query_ok = _parse_query(_raw(query))
        body_values = _multipart_values(body, params.get("boundary"), key)
        if not query_ok:
            raise UndecidableForm("the query string is malformed (Go's url.ParseQuery)")
        values = [*query_values.get(key, ()), *body_values]
    elif media == "application/x-www-form-urlencoded":
        if len(body) > MAX_URLENCODED:
            raise UndecidableForm("http: POST too large")
        body_pairs, _ = _parse_query(body)
        values = [*body_pairs.get(key, ()), *_parse_query(_raw(query))[0].get(key, ())]
    else:
        values = list(_parse_query(_raw(query))[0].get(key, ()))
    return _text(values[0]) if values else None


def _raw(query: str) -> bytes:
    try:
        return query.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise UndecidableForm("the query string is not text") from None


def _text(value: bytes) -> str:
    """Bytes as Go's JSON encoder writes a string: each byte that is not UTF-8 one U+FFFD."""
    return _ESCAPED_BYTE.sub("\ufffd", value.decode("utf-8", "surrogateescape"))


def _parse_query(raw: bytes) -> tuple[dict[bytes, list[bytes]], bool]:
    """net/url parseQuery: the values by name, and whether Go reports no error. A pair Go
    rejects (a `;`, a bad %-escape) is left out and the rest still read, as Go does."""
    values: dict[bytes, list[bytes]] = {}
    if raw.count(b"&") + raw.count(b";") >= MAX_QUERY_PAIRS:
        raise UndecidableForm("too many query parameters to read as Go would")
    ok = True
    for pair in raw.split(b"&"):
        if b";" in pair or _BAD_ESCAPE.search(pair):
            ok = False
            continue
        if not pair:
            continue
        name, _, value = pair.partition(b"=")
        # QueryUnescape: '+' is a space, then %XX (so %2B stays a plus).
        name = unquote_to_bytes(name.replace(b"+", b" "))
        values.setdefault(name, []).append(unquote_to_bytes(value.replace(b"+", b" ")))
    return values, ok


def _consume_token(v: str) -> tuple[str, str]:
    """mime consumeToken: the leading run of token characters, and the rest."""
    for i, char in enumerate(v):
        if not (" " < char < "\x7f") or char in _TSPECIALS:
            return v[:i], v[i:]
    return v, ""


def _consume_value(v: str) -> tuple[str, str]:
    """mime consumeValue: a token or a quoted string (a backslash escapes only a
    tspecial, as Go keeps MSIE's unescaped paths); ("", v) when there is none."""
    if not v or v[0] != '"':
        return _consume_token(v)
    out: list[str] = []
    i = 1
    while i < len(v):
        char = v[i]
        if char == '"':
            return "".join(out), v[i + 1 :]
        if char == "\\" and i + 1 < len(v) and v[i + 1] in _TSPECIALS:
            out.append(v[i + 1])
            i += 2
            continue
        if char in "\r\n":
            return "", v
        out.append(char)
        i += 1
    return "", v  # no closing quote


def _media_type(v: str) -> tuple[str, dict[str, str] | None]:
    """mime.ParseMediaType: the lower-cased type ("" if malformed) and its parameters
    (None if malformed, a repeated name included: Go then returns an error)."""
    base = v.split(";", 1)[0]
    # strings.ToLower: of the non-ASCII runes only U+0130 and U+212A become ASCII (i, k);
    # any other stays non-ASCII and fails as a token below.
    mediatype = base.replace("\u0130", "i").replace("\u212a", "k").strip(GO_SPACE)
    if not mediatype.isascii():
        return "", None
    mediatype = mediatype.lower()
    kind, rest = _consume_token(mediatype)
    if not kind:
        return "", None
    if rest:
        subtype, rest = _consume_token(rest[1:]) if rest[0] == "/" else ("", rest)
        if not subtype or rest:
            return "", None
    params: dict[str, str] = {}
    v = v[len(base) :]
    while v:
        v = v.lstrip(GO_SPACE)
        if not v:
            break
        key, value, rest = _media_param(v)
        if not key:
            if rest.strip(GO_SPACE) == ";":  # trailing semicolons are no error
                break
            return mediatype, None
        if "*" in key:  # RFC 2231: not read here (rare in forms)
            raise UndecidableForm(f"the {key!r} parameter (RFC 2231) is not read as Go would")
        if key in params:  # "mime: duplicate parameter name"
            return mediatype, None
        params[key] = value
        v = rest
    return mediatype, params


def _media_param(v: str) -> tuple[str, str, str]:
    """mime consumeMediaParam: (key, value, rest), or ("", "", v) if none is there."""
    rest = v.lstrip(GO_SPACE)
    if not rest.startswith(";"):
        return "", "", v
    key, rest = _consume_token(rest[1:].lstrip(GO_SPACE))
    if not key:
        return "", "", v
    rest = rest.lstrip(GO_SPACE)
    if not rest.startswith("="):
        return "", "", v
    rest = rest[1:].lstrip(GO_SPACE)
    value, after = _consume_value(rest)
    if not value and after == rest:
        return "", "", v
    return key.lower(), value, after


class _Reader:
    """mime/multipart.Reader over a whole body: the same lines, boundaries and errors."""

    def __init__(self, body: bytes, boundary: bytes) -> None:
        self.body = body
        self.pos = 0
        self.parts_read = 0
        self.lines_left = MAX_HEADERS
        self.preamble_left = MAX_PREAMBLE_LINES
        self.nl = b"\r\n"
        self.boundary: re.Pattern[bytes] | None = None  # once the newline is known
        self.dash_boundary = b"--" + boundary
        self.dash_boundary_dash = self.dash_boundary + b"--"

    def _line(self) -> tuple[bytes, bool]:
        """bufio ReadSlice('\\n'): a line with its newline, or the rest and True at EOF."""
        end = self.body.find(b"\n", self.pos, self.pos + _LINE)
        if end < 0:
            if len(self.body) - self.pos >= _LINE:
                raise UndecidableForm("multipart: NextPart: bufio: buffer full")
            line, self.pos = self.body[self.pos :], len(self.body)
            return line, True
        line, self.pos = self.body[self.pos : end + 1], end + 1
        return line, False

    def next_part(self) -> bool:
        """Reader.nextPart: True at the headers of the next part, False after the last."""
        expect_new_part = False
        while True:
            line, eof = self._line()
            if eof and self._is_final(line):
                return False
            if eof:
                raise UndecidableForm("multipart: NextPart: EOF")
            if self._is_delimiter(line):
                self.parts_read += 1
                return True
            if self._is_final(line):
                return False
            if expect_new_part:
                raise UndecidableForm("multipart: expecting a new Part")
            if self.parts_read == 0:  # the preamble
                self.preamble_left -= 1
                if self.preamble_left < 0:
                    raise UndecidableForm("a longer preamble than this reader reads")
                continue
            if line == self.nl:
                expect_new_part = True
                continue
            raise UndecidableForm("multipart: unexpected line in Next()")

    def _is_final(self, line: bytes) -> bool:
        if not line.startswith(self.dash_boundary_dash):
            return False
        rest = line[len(self.dash_boundary_dash) :].lstrip(b" \t")
        return not rest or rest == self.nl

    def _is_delimiter(self, line: bytes) -> bool:
        if not line.startswith(self.dash_boundary):
            return False
        rest = line[len(self.dash_boundary) :].lstrip(b" \t")
        if self.parts_read == 0 and rest == b"\n":  # LF-only bodies, as Go allows
            self.nl = b"\n"
        return rest == self.nl

    def headers(self) -> list[tuple[bytes, bytes]] | None:
        """textproto.ReadMIMEHeader: (key as sent, value) pairs, continuation lines joined.
        None when the body ends before the blank line: Go's reader then returns io.EOF,
        which ReadForm takes for the end of the form, this part left out."""
        if self.body[self.pos : self.pos + 1] in (b" ", b"\t"):
            raise UndecidableForm("malformed MIME header initial line")
        found: list[tuple[bytes, bytes]] = []
        while True:
            line = self._header_line()
            if line is None:
                return None
            self.lines_left -= 1
            if self.lines_left < 0:
                raise UndecidableForm("more header lines than this reader reads")
            if not line:
                return found
            if b":" not in line:  # mustHaveFieldNameColon: on the first line
                raise UndecidableForm("malformed MIME header: missing colon")
            kv = line.strip(b" \t\r\n")
            while self.body[self.pos : self.pos + 1] in (b" ", b"\t"):  # continuation
                self.pos = len(self.body) - len(self.body[self.pos :].lstrip(b" \t"))
                kv += b" "
                self.lines_left -= 1
                more = self._header_line()
                if more is None:
                    break
                kv += more.strip(b" \t\r\n")
            key, _, value = kv.partition(b":")
            if not key or not set(key) <= _KEY_BYTES or _BAD_VALUE_BYTE.search(value):
                raise UndecidableForm("malformed MIME header line")
            found.append((key, value.lstrip(b" \t")))

    def _header_line(self) -> bytes | None:
        """bufio ReadLine: a line without its LF or CRLF (the last line may have neither);
        None at the end of the body."""
        if self.pos >= len(self.body):
            return None
        end = self.body.find(b"\n", self.pos)
        if end < 0:
            line, self.pos = self.body[self.pos :], len(self.body)
            return line
        line, self.pos = self.body[self.pos : end], end + 1
        return line[:-1] if line.endswith(b"\r") else line

    def data(self) -> bytes:
        """partReader (scanUntilBoundary): the part's bytes up to the next boundary, which
        is "--boundary" at once, or CRLF "--boundary" (LF alone in LF mode), followed by
        a space, tab, CR, LF, "--" or the end of the body."""
        body, start = self.body, self.pos
        at = start
        if body.startswith(self.dash_boundary, start):  # an empty part, written without nl
            after = body[start + len(self.dash_boundary) : start + len(self.dash_boundary) + 2]
            if not after or after[:1] in b" \t\r\n" or after == b"--":
                return b""
            at = start + len(self.dash_boundary)
        elif self.dash_boundary.startswith(body[start:]):
            raise UndecidableForm("multipart: unexpected EOF")
        if self.boundary is None:
            # Go skips a non-boundary whole; as a boundary holds no CR or LF, two cannot
            # overlap, and the first match is the one Go finds.
            nl_dash_boundary = re.escape(self.nl + self.dash_boundary)
            self.boundary = re.compile(nl_dash_boundary + rb"(?:[ \t\r\n]|--|\Z)")
        found = self.boundary.search(body, at)
        if found is None:
            raise UndecidableForm("multipart: unexpected EOF")
        self.pos = found.start()
        return body[start : self.pos]


def _multipart_values(body: bytes, boundary: str | None, key: bytes) -> list[bytes]:
    """The values (not files) named `key`, in order, reading the whole body as Go's
    ReadForm does so that every error it would return is raised."""
    if boundary is None:
        raise UndecidableForm("no multipart boundary parameter in Content-Type")
    if not boundary:
        raise UndecidableForm("multipart: boundary is empty")
    if len(boundary) > _MAX_BOUNDARY or not boundary.isascii():
        raise UndecidableForm("a multipart boundary this reader does not decide")
    if len(body) > MAX_BODY:
        raise UndecidableForm(f"a multipart body over {MAX_BODY} bytes")
    reader = _Reader(body, boundary.encode())
    values: list[bytes] = []
    while reader.next_part():
        headers = reader.headers()
        if headers is None:
            break
        if reader.parts_read > MAX_PARTS:
            raise UndecidableForm("multipart: message too large")
        name, is_file = _disposition(headers)
        data = reader.data()
        if name == key and not is_file:
            values.append(data)
    return values


def _disposition(headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, bool]:
    """Part.FormName and whether Part.FileName is set, from the first Content-Disposition.
    A key with a space before its colon is kept as sent by Go, so it is not this header."""
    disposition: bytes | None = None
    for key, value in headers:
        lowered = key.lower()
        if lowered == b"content-transfer-encoding" and value.lower() == b"quoted-printable":
            raise UndecidableForm("a quoted-printable part is not decoded here")
        if lowered == b"content-disposition" and disposition is None:
            disposition = value
    if disposition is None:
        return None, False
    kind, params = _media_type(disposition.decode("utf-8", "surrogateescape"))
    if kind != "form-data" or params is None:
        return None, False
    name = params.get("name")
    encoded = None if name is None else name.encode("utf-8", "surrogateescape")
    return encoded or None, bool(params.get("filename"))
