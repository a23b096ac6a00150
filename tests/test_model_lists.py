"""Model lists cut down to what a key may use, in Ollama's own bytes (issue 25)."""

from __future__ import annotations

import json

import orjson
import pytest

from aigateway.access.allowlist import filter_model_list
from aigateway.testing.fake_ollama import fixture

# As Go's encoding/json writes them: `<` `>` `&` and U+2028 escaped, field order kept.
GO_TAGS = (
    b'{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest","size":2019393189,'
    b'"details":{"family":"llama","note":"\\u003cb\\u003e \\u0026 \\u2028"}},'
    b'{"name":"qwen3:8b","model":"qwen3:8b","size":5,"details":{"family":"qwen3"}},'
    b'{"name":"llama3:8b","model":"llama3:8b","size":7,"details":{"template":"[\\"]}{,"}}]}'
)
GO_TAGS_LLAMA = (
    b'{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest","size":2019393189,'
    b'"details":{"family":"llama","note":"\\u003cb\\u003e \\u0026 \\u2028"}},'
    b'{"name":"llama3:8b","model":"llama3:8b","size":7,"details":{"template":"[\\"]}{,"}}]}'
)
# As json.MarshalIndent writes them (Ollama's CLI and some proxies indent).
PRETTY_PS = b"""{
  "models": [
    {
      "name": "qwen3:8b",
      "model": "qwen3:8b",
      "details": {"families": ["qwen3"]}
    },
    {
      "name": "llama3.2:latest",
      "model": "llama3.2:latest",
      "details": {"families": ["llama"]}
    }
  ]
}
"""
PRETTY_PS_LLAMA = b"""{
  "models": [
    {
      "name": "llama3.2:latest",
      "model": "llama3.2:latest",
      "details": {"families": ["llama"]}
    }
  ]
}
"""
LLAMA = ("llama3*",)


@pytest.mark.parametrize(
    "body",
    [fixture("tags.json"), fixture("ps.json"), fixture("openai-models.json"), GO_TAGS, PRETTY_PS],
)
def test_nothing_hidden_is_the_same_bytes_object(body: bytes) -> None:
    assert filter_model_list(body, None, True) is body
    names = [
        entry.get("name") or entry.get("id")
        for field in ("models", "data")
        for entry in json.loads(body).get(field, [])
    ]
    assert filter_model_list(body, tuple(names), True) is body  # allows every one listed


def test_removed_entries_leave_ollamas_bytes() -> None:
    assert filter_model_list(GO_TAGS, LLAMA, True) == GO_TAGS_LLAMA
    assert filter_model_list(PRETTY_PS, LLAMA, True) == PRETTY_PS_LLAMA
    assert filter_model_list(PRETTY_PS, ("none",), True) == b'{\n  "models": []\n}\n'
    assert filter_model_list(GO_TAGS, ("qwen3*",), True) == (
        b'{"models":[{"name":"qwen3:8b","model":"qwen3:8b","size":5,"details":{"family":"qwen3"}}]}'
    )


def test_openai_models_data() -> None:
    body = fixture("openai-models.json")
    assert filter_model_list(body, LLAMA, True) == (
        b'{"object":"list","data":[{"id":"llama3.2:latest","object":"model",'
        b'"created":1746405464,"owned_by":"library"}]}'
    )
    assert filter_model_list(body, ("deepseek*",), True) == (
        b'{"object":"list","data":[{"id":"deepseek-r1:latest","object":"model",'
        b'"created":1746889608,"owned_by":"library"}]}'
    )


def test_cloud_models_go_without_the_setting() -> None:
    body = b'{"models":[{"name":"gpt-oss:120b-cloud"} , {"name":"llama3.2"}]}'
    assert filter_model_list(body, None, False) == b'{"models":[{"name":"llama3.2"}]}'
    assert filter_model_list(body, None, True) is body


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"404 page not found",
        b"[]",
        b'"models"',
        b'{"models":[{"name":"qwen3"}]} trailing',
        b'{"models":[{"name":"qwen3"},]}',
        b'{"models":[{"name":"qwen3"},NaN]}',
        b'{"models":[{"name":"qwen3"}',
        b'{"models":[{"name":"qwen3\xff"}]}',
        b'\xef\xbb\xbf{"models":[{"name":"qwen3"}]}',
        b'{"models":{"name":"qwen3"}}',
        b'{"other":[{"name":"qwen3"}]}',
        b'{"models":[' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
    ],
)
def test_what_is_not_a_model_list_passes_unchanged(body: bytes) -> None:
    assert filter_model_list(body, LLAMA, True) is body


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # A repeated name: hidden under either reading (first wins, last wins).
        (
            b'{"models":[{"name":"llama3","name":"qwen3"},{"name":"llama3"}]}',
            b'{"models":[{"name":"llama3"}]}',
        ),
        (
            b'{"models":[{"name":"qwen3","name":"llama3"},{"name":"llama3"}]}',
            b'{"models":[{"name":"llama3"}]}',
        ),
        # Go reads `NAME` as `name` (without case), and `\u006e` is `n`.
        (
            b'{"models":[{"name":"llama3","NAME":"qwen3"},{"n\\u0061me":"llama3"}]}',
            b'{"models":[{"n\\u0061me":"llama3"}]}',
        ),
        # The list's key repeated, or in another case: each copy is cut.
        (
            b'{"models":[{"name":"qwen3"}],"Models":[{"name":"llama3"},{"name":"qwen3"}],'
            b'"models":[{"name":"llama3"}]}',
            b'{"models":[],"Models":[{"name":"llama3"}],"models":[{"name":"llama3"}]}',
        ),
        # Entries that are not objects go; brackets, quotes and escapes in strings and
        # nested objects are only text.
        (
            b'{"models":[1,"]",{"name":"llama3","x":{"y":["]},{\\"name\\":\\"qwen3\\"}"]}},'
            b'null,{"name":"qwen3","model":"llama3"}],"tail":"}"}',
            b'{"models":[{"name":"llama3","x":{"y":["]},{\\"name\\":\\"qwen3\\"}"]}}],"tail":"}"}',
        ),
    ],
)
def test_hostile_lists(body: bytes, expected: bytes) -> None:
    got = filter_model_list(body, LLAMA, True)
    assert got == expected
    orjson.loads(got)  # still JSON


def test_the_answer_parses_to_the_filtered_document() -> None:
    doc = json.loads(GO_TAGS)
    doc["models"] = [m for m in doc["models"] if m["name"].startswith("llama3")]
    assert json.loads(filter_model_list(GO_TAGS, LLAMA, True)) == doc


def test_a_merged_list_is_escaped_as_go_escapes() -> None:
    from aigateway.upstreams.union import go_escaped

    merged = orjson.dumps({"models": [{"name": "a", "note": "<b> & \u2028\u2029 é"}]})
    assert go_escaped(merged) == (
        b'{"models":[{"name":"a","note":"\\u003cb\\u003e \\u0026 \\u2028\\u2029 \xc3\xa9"}]}'
    )
