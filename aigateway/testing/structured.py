"""Structured output for the fake Ollama: what a model asked for JSON of a given schema (or
to call a given function) answers on /v1/chat/completions, filled in by the schema alone.

Enough for clients that check the answer against the schema they sent (the Vercel AI
SDK's generateObject, instructor): every property filled, strings with "Hello!", numbers
with 2, the first of an enum or of an anyOf, references into $defs followed.
"""

from __future__ import annotations

from typing import Any

import orjson

SAMPLE_TEXT = "Hello!"
SAMPLE_NUMBER = 2


def sample(schema: object, root: object = None, depth: int = 0) -> object:
    """A value that `schema` (JSON Schema, as pydantic and zod write it) accepts."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 20:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return sample(_resolve(ref, root), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for several in ("anyOf", "oneOf", "allOf"):
        options = schema.get(several)
        if isinstance(options, list) and options:
            return sample(options[0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]: the first that is not null
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        return {name: sample(sub, root, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        return [sample(schema.get("items"), root, depth + 1)]
    return {
        "string": SAMPLE_TEXT,
        "integer": SAMPLE_NUMBER,
        "number": SAMPLE_NUMBER,
        "boolean": True,
    }.get(str(kind))


def _resolve(ref: str, root: object) -> object:
    """A local reference ("#/$defs/Name"); anything else resolves to nothing."""
    if not ref.startswith("#/"):
        return None
    node = root
    for part in ref[2:].split("/"):
        if not isinstance(node, dict):
            return None
        node = node.get(part.replace("~1", "/").replace("~0", "~"))
    return node


def structured_answer(body: bytes) -> dict[str, Any] | None:
    """The assistant message for an OpenAI chat request that asks for JSON of a schema
    (response_format json_schema), for any JSON (json_object), or for one named
    function's call (tool_choice naming it); None for any other request (the fixture's
    plain text answers it)."""
    if b"response_format" not in body and b"tool_choice" not in body:
        return None  # most requests: not parsed twice (the benchmark's fake answers them)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    response_format = doc.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        wanted = response_format.get("json_schema")
        schema = wanted.get("schema") if isinstance(wanted, dict) else None
        content = orjson.dumps(sample(schema)).decode()
        return {"role": "assistant", "content": content}
    if isinstance(response_format, dict) and response_format.get("type") == "json_object":
        # JSON mode names no schema: valid JSON, which fits none the model was not shown.
        return {"role": "assistant", "content": "{}"}
    tool = _chosen_tool(doc)
    if tool is not None:
        name, parameters = tool
        call = {
            "id": "call_fake0001",
            "index": 0,
            "type": "function",
            "function": {"name": name, "arguments": orjson.dumps(sample(parameters)).decode()},
        }
        return {"role": "assistant", "content": "", "tool_calls": [call]}
    return None


def _chosen_tool(doc: dict[str, Any]) -> tuple[str, object] | None:
    """The function a request's tool_choice names, and its parameters' schema."""
    choice = doc.get("tool_choice")
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    tools = doc.get("tools")
    if not isinstance(name, str) or not isinstance(tools, list):
        return None
    for tool in tools:
        declared = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(declared, dict) and declared.get("name") == name:
            return name, declared.get("parameters")
    return None
