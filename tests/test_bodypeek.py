"""Reading a body as Ollama's Go decoder will: against the fake's own Go decoder
(aigateway/testing/go_json.py, written apart) and against Go's documented rules."""

from __future__ import annotations

import sys

import orjson
import pytest

from aigateway.protocol.body import UNDECIDED_CAP, UndecidableBody, go_fold, read_body
from aigateway.testing import go_json

FIELDS = ("model", "name")

# (body, the model Go decodes), each a way to say one thing and mean another.
SPELLINGS = [
    (b'{"model":"llama3.2","messages":[]}', "llama3.2"),
    (b'{"model":"llama3.2","Model":"qwen3"}', "qwen3"),
    (b'{"Model":"qwen3","model":"llama3.2"}', "llama3.2"),
    (b'{"model":"a","MODEL":"b","model":"llama3.2"}', "llama3.2"),
    (b'{"model":"llama3.2","MODEL":"b","model":"c","mOdEl":"qwen3"}', "qwen3"),
    (b'{"model":"llama3.2","mo\\u0064el":"qwen3"}', "qwen3"),
    (b'{"model":"llama3.2","MO\\u0044EL":"qwen3"}', "qwen3"),
    ('{"model":"llama3.2","\u017fource":"x","model":"qwen3"}'.encode(), "qwen3"),
    (b'{"model":"qwen3","model":null}', "qwen3"),
    (b'{"model":"qwen3","Model":null}', "qwen3"),
    (b'{"name":"qwen3"}', "qwen3"),
    (b'{"model":"","name":"qwen3"}', "qwen3"),
    (b'{"model":"llama3.2","NAME":"qwen3"}', "llama3.2"),
    (b'{"prompt":"say \\"model\\": \\"qwen3\\"","model":"llama3.2"}', "llama3.2"),
    (b'{"options":{"model":"qwen3"},"model":"llama3.2"}', "llama3.2"),
]


@pytest.mark.parametrize(("body", "model"), SPELLINGS)
def test_the_model_is_the_one_go_decodes(body: bytes, model: str) -> None:
    fields = read_body(body, FIELDS)
    decoded = go_json.decode(body)
    assert (decoded.get("model") or decoded.get("name")) == model
    assert fields.model == model
    assert model in fields.models


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":5}',
        b'{"model":"a","Model":{"x":1}}',
        b'{"model":["qwen3"]}',
        b'{"NAME":true}',
    ],
)
def test_a_wrong_type_fails_as_in_go(body: bytes) -> None:
    with pytest.raises(go_json.GoDecodeError):
        go_json.decode(body)
    with pytest.raises(UndecidableBody):
        read_body(body, FIELDS)


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[1]", b'"model"', b'{"model":"a"} {"model":"qwen3"}', b'{"model":NaN}'],
)
def test_what_cannot_be_decided_is_said_so(body: bytes) -> None:
    with pytest.raises(UndecidableBody):
        read_body(body, FIELDS)


def test_non_ascii_runes_fold_as_in_go() -> None:
    """Every rune whose Go fold is an ASCII letter (the Kelvin sign, the long s, both
    Turkish I's) folds the same in the gateway and in the fake's decoder, derived there
    from Python's Unicode tables; no other non-ASCII rune folds to ASCII."""
    to_ascii = {}
    for code in range(0x80, sys.maxunicode + 1):
        if 0xD800 <= code <= 0xDFFF:
            continue
        c = chr(code)
        if go_json.fold(c).isascii():
            to_ascii[c] = go_json.fold(c)
        assert go_fold(c) == go_json.fold(c) or not go_json.fold(c).isascii(), hex(code)
    assert to_ascii == {"\u0130": "I", "\u0131": "I", "\u017f": "S", "\u212a": "K"}
    assert go_fold("\u017ftream_option\u017f") == "STREAM_OPTIONS"
    assert go_fold("max_to\u212aens") == "MAX_TOKENS"
    assert go_fold("dest\u0131nat\u0130on") == "DESTINATION"


@pytest.mark.parametrize(
    ("body", "stream", "include_usage"),
    [
        (b'{"stream":true}', True, None),
        (b'{"stream":true,"STREAM":false}', False, None),
        (b'{"stream":true,"stream":null}', True, None),
        (b'{"stream_options":{"include_usage":true}}', None, True),
        (
            b'{"stream_options":{"include_usage":true},"Stream_Options":{"INCLUDE_USAGE":false}}',
            None,
            False,
        ),
        (b'{"stream_options":{"include_usage":true},"stream_options":null}', None, None),
        (b'{"stream_options":{"Include_Usage":true}}', None, True),
    ],
)
def test_stream_and_include_usage_as_go_reads_them(
    body: bytes, stream: bool | None, include_usage: bool | None
) -> None:
    fields = read_body(body, ("model",))
    decoded = go_json.decode(body)
    assert fields.stream == decoded.get("stream") == stream
    options = decoded.get("stream_options")
    assert fields.include_usage == (options or {}).get("include_usage") == include_usage


@pytest.mark.parametrize(
    ("body", "cap_field", "cap"),
    [
        (b'{"options":{"num_predict":7}}', "num_predict", 7),
        (b'{"options":{"num_predict":7},"OPTIONS":{"temperature":1}}', "num_predict", 7),
        (b'{"options":{"NUM_PREDICT":7}}', "num_predict", None),  # map keys are exact
        (b'{"options":{"num_predict":-1}}', "num_predict", -1),
        # FromMap takes any JSON number for an int option, truncated
        (b'{"options":{"num_predict":100000.9}}', "num_predict", 100000),
        (b'{"options":{"num_predict":1e30}}', "num_predict", UNDECIDED_CAP),
        (b'{"options":{"num_predict":"5"}}', "num_predict", None),
        # only the route's own field: Ollama reads no other (issue 24's attack run)
        (b'{"max_tokens":1}', "num_predict", None),
        (b'{"max_tokens":1,"options":{"num_predict":100000.0}}', "num_predict", 100000),
        (b'{"max_tokens":9}', "max_tokens", 9),
        (b'{"MAX_TOKENS":9}', "max_tokens", 9),  # a struct field: folded
        (b'{"max_tokens":100000,"options":{"num_predict":1}}', "max_tokens", 100000),
        (b'{"max_tokens":5.0}', "max_tokens", None),  # Go refuses a float for an int
        (b'{"max_output_tokens":11}', "max_output_tokens", 11),
        (b'{"max_output_tokens":100000,"max_tokens":1}', "max_output_tokens", 100000),
    ],
)
def test_output_caps(body: bytes, cap_field: str, cap: int | None) -> None:
    assert read_body(body, ("model",), cap_field).max_output == cap


def test_a_plain_body_takes_the_fast_path_and_agrees() -> None:
    body = orjson.dumps({"model": "llama3.2", "messages": [], "stream": False, "options": {}})
    assert read_body(body, FIELDS).model == "llama3.2"
