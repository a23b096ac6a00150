"""Reading the model a body names, by search where the bytes allow it, else by parsing."""

from __future__ import annotations

import orjson
import pytest

from aigateway.bodypeek import peek_model

CASES = [
    ({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}, "llama3.2"),
    ({"messages": [{"role": "user", "content": "hi"}], "model": "qwen3"}, "qwen3"),  # openai
    ({"model": 'a"quoted\\name', "prompt": "x"}, 'a"quoted\\name'),
    ({"model": "ünïcode", "prompt": "x"}, "ünïcode"),
    ({"model": "", "prompt": "x"}, None),
    ({"model": 5, "prompt": "x"}, None),
    ({"prompt": 'say "model": "fake"', "model": "real"}, "real"),
    ({"options": {"model": "nested"}, "prompt": "x"}, None),
    ({"model": "outer", "tools": [{"model": "inner"}]}, "outer"),
    ({"tools": [{"model": "inner"}], "model": "outer"}, "outer"),
    ({"messages": [{"role": "model", "content": "x"}], "model": "gemma"}, "gemma"),
]


@pytest.mark.parametrize(("doc", "expected"), CASES)
def test_the_model_of_the_outer_object_or_none(doc: dict[str, object], expected: str) -> None:
    compact = orjson.dumps(doc)
    spaced = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
    assert peek_model(compact) == expected
    assert peek_model(spaced) == expected


def test_older_clients_name_the_model_in_name() -> None:
    assert peek_model(b'{"name":"llama3.2"}', ("model", "name")) == "llama3.2"
    assert peek_model(b'{"name":"a","model":"b"}', ("model", "name")) == "b"
    assert peek_model(b'{"model":"","name":"a"}', ("model", "name")) == "a"


def test_no_model_in_what_is_not_an_object() -> None:
    assert peek_model(b"") is None
    assert peek_model(b'["model"]') is None
    assert peek_model(b"not json") is None
