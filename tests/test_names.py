"""One canonical model identity, as Ollama resolves a name; a form field, as Go reads it.

The tables of ollama/ollama fb30760 (types/model/name_test.go,
internal/modelref/modelref_test.go) are ported below. The expected values of GO_CHECKED
were produced by Ollama's own name.go and modelref.go (copied out of fb30760, built with
Go, and run on these inputs), not by the module under test; so were the form cases, by Go's
net/http."""

from __future__ import annotations

import pytest

from aigateway.protocol import names
from aigateway.protocol.form import (
    MAX_HEADERS,
    MAX_PARTS,
    MAX_PREAMBLE_LINES,
    UndecidableForm,
    form_value,
)
from aigateway.protocol.names import (
    GO_SPACE,
    InvalidModelName,
    ModelRef,
    canonical,
    resolve,
    resolve_literal,
)

PART80 = "8" * 80
PART350 = "3" * 350


# ---- name_test.go ----------------------------------------------------------------------

# TestParseNameParts: ParseNameBare's parts, and ParseName's file path (host, namespace,
# model, tag with the defaults filled in).
NAME_PARTS = [
    (
        "registry.ollama.ai/library/dolphin-mistral:7b-v2.6-dpo-laser-q6_K",
        ("registry.ollama.ai", "library", "dolphin-mistral", "7b-v2.6-dpo-laser-q6_K"),
        ("registry.ollama.ai", "library", "dolphin-mistral", "7b-v2.6-dpo-laser-q6_K"),
    ),
    (
        "scheme://host:port/namespace/model:tag",
        ("host:port", "namespace", "model", "tag"),
        ("host:port", "namespace", "model", "tag"),
    ),
    (
        "host/namespace/model:tag",
        ("host", "namespace", "model", "tag"),
        ("host", "namespace", "model", "tag"),
    ),
    (
        "host:port/namespace/model:tag",
        ("host:port", "namespace", "model", "tag"),
        ("host:port", "namespace", "model", "tag"),
    ),
    (
        "host/namespace/model",
        ("host", "namespace", "model", ""),
        ("host", "namespace", "model", "latest"),
    ),
    (
        "host:port/namespace/model",
        ("host:port", "namespace", "model", ""),
        ("host:port", "namespace", "model", "latest"),
    ),
    (
        "namespace/model",
        ("", "namespace", "model", ""),
        ("registry.ollama.ai", "namespace", "model", "latest"),
    ),
    ("model", ("", "", "model", ""), ("registry.ollama.ai", "library", "model", "latest")),
    ("h/nn/mm:t", ("h", "nn", "mm", "t"), ("h", "nn", "mm", "t")),
    (
        f"{PART80}/{PART80}/{PART80}:{PART80}",
        (PART80, PART80, PART80, PART80),
        (PART80, PART80, PART80, PART80),
    ),
    (
        f"{PART350}/{PART80}/{PART80}:{PART80}",
        (PART350, PART80, PART80, PART80),
        (PART350, PART80, PART80, PART80),
    ),
]


@pytest.mark.parametrize(("name", "bare", "filepath"), NAME_PARTS)
def test_parse_name_parts(
    name: str, bare: tuple[str, str, str, str], filepath: tuple[str, str, str, str]
) -> None:
    assert names._bare(name) == bare
    # Lower-cased: the identity compares parts as Go's EqualFold does.
    assert names._parse_name(name) == tuple(part.lower() for part in filepath)


# testCases: ParseNameBare(s).IsValid(), and String() giving s back when valid.
NAME_VALID = {
    "": False,
    "_why/_the/_lucky:_stiff": True,
    "h/n/m:t": True,
    "host/namespace/model:tag": True,
    "host/namespace/model": False,
    "namespace/model": False,
    "model": False,
    f"{PART80}/{PART80}/{PART80}:{PART80}": True,
    f"{PART350}/{PART80}/{PART80}:{PART80}": True,
    "h/nn/mm:t": True,
    "m": False,
    "n/m:": False,
    "h/n/m": False,
    "@t": False,
    "m@d": False,
    "^": False,
    "mm:": False,
    "/nn/mm": False,
    "//": False,
    "//mm": False,
    "hh//": False,
    "//mm:@": False,
    "00@": False,
    "@": False,
    "-hh/nn/mm:tt": False,
    "hh/-nn/mm:tt": False,
    "hh/nn/-mm:tt": False,
    "hh/nn/mm:-tt": False,
    "host:https/namespace/model:tag": True,
    "host/name:space/model:tag": False,
}


@pytest.mark.parametrize(("name", "valid"), NAME_VALID.items())
def test_name_is_valid(name: str, valid: bool) -> None:
    parts = names._bare(name)
    assert names._valid(parts) is valid
    if valid:
        host, namespace, model, tag = parts
        assert f"{host}/{namespace}/{model}:{tag}" == name


def test_name_default() -> None:
    assert names._parse_name("xx") == ("registry.ollama.ai", "library", "xx", "latest")
    assert canonical("xx") == "xx:latest"


# TestNameIsValidPart (kindDigest left out: names have no digest part any more).
HOST, NAMESPACE, MODEL = 0, 1, 2
VALID_PARTS = [
    (HOST, "", False),
    (HOST, "a", True),
    (HOST, "a.", True),
    (HOST, "a.b", True),
    (HOST, "a:123", True),
    (HOST, "a:123/aa/bb", False),
    (NAMESPACE, "bb", True),
    (NAMESPACE, "a.", False),
    (MODEL, "-h", False),
]


@pytest.mark.parametrize(("kind", "part", "valid"), VALID_PARTS)
def test_name_is_valid_part(kind: int, part: str, valid: bool) -> None:
    assert (names._PART[kind].fullmatch(part) is not None) is valid


@pytest.mark.parametrize(
    ("name", "shortest"),
    [
        ("registry.ollama.ai/library/model:latest", "model:latest"),
        ("registry.ollama.ai/library/model:tag", "model:tag"),
        ("registry.ollama.ai/namespace/model:tag", "namespace/model:tag"),
        ("host/namespace/model:tag", "host/namespace/model:tag"),
        ("host/library/model:tag", "host/library/model:tag"),
    ],
)
def test_display_shortest(name: str, shortest: str) -> None:
    assert names._display(names._parse_name(name), cloud=False) == shortest
    assert canonical(name) == shortest


@pytest.mark.parametrize(
    ("namespace", "valid"),
    [
        ("", False),
        ("a", True),
        ("a:b", False),
        ("a/b", False),
        ("a:b/c", False),
        ("a/b:c", False),
        ("a/b:c/d", False),
        ("a/b:c/d@e", False),
        ("a/b:c/d@sha256-100", False),
        ("himynameisjoe", True),
        ("himynameisreallyreallyreallyreallylongbutitshouldstillbevalid", True),
    ],
)
def test_is_valid_namespace(namespace: str, valid: bool) -> None:
    assert (names._PART[NAMESPACE].fullmatch(namespace) is not None) is valid


# ---- modelref_test.go ------------------------------------------------------------------

# TestParseRef: (input, base, source) or the refusal.
PARSE_REF = [
    ("gpt-oss:20b:cloud", "gpt-oss:20b", "cloud"),
    ("gpt-oss:20b-cloud", "gpt-oss:20b", "cloud"),
    ("qwen3:8b:local", "qwen3:8b", "local"),
    ("llama3.2", "llama3.2", ""),
    ("my-cloud-model", "my-cloud-model", ""),
    ("foo:bar-cloud/baz", "foo:bar-cloud/baz", ""),
]


@pytest.mark.parametrize(("name", "base", "source"), PARSE_REF)
def test_parse_ref(name: str, base: str, source: str) -> None:
    assert names._parse_ref(name) == (base, source)


@pytest.mark.parametrize(("name", "reason"), [("foo:cloud:local", "conflict"), ("   ", "required")])
def test_parse_ref_refusals(name: str, reason: str) -> None:
    with pytest.raises(InvalidModelName) as caught:
        names._parse_ref(name)
    assert caught.value.reason == reason


# TestParseSourceSuffix
@pytest.mark.parametrize(
    ("name", "base", "source"),
    [
        ("gpt-oss:20b:cloud", "gpt-oss:20b", "cloud"),
        ("qwen3:8b:local", "qwen3:8b", "local"),
        ("gpt-oss:20b-cloud", "gpt-oss:20b", "cloud"),
        ("my-cloud-model", "my-cloud-model", ""),
        ("foo:bar-cloud/baz", "foo:bar-cloud/baz", ""),
        ("gpt-oss:clod", "gpt-oss:clod", ""),
        ("gpt-oss:20b:CLOUD", "gpt-oss:20b", "cloud"),
        ("llama3.2", "llama3.2", ""),
    ],
)
def test_parse_source_suffix(name: str, base: str, source: str) -> None:
    assert names._source_suffix(name) == (base, source)


# TestNormalizePullName: the canonical name of a cloud model is the name Ollama pulls.
@pytest.mark.parametrize(
    ("name", "pulled", "cloud"),
    [
        ("gpt-oss:20b:local", "gpt-oss:20b", False),
        ("gpt-oss:20b:cloud", "gpt-oss:20b-cloud", True),
        ("gpt-oss:20b-cloud", "gpt-oss:20b-cloud", True),
        ("qwen3:cloud", "qwen3:cloud", True),
        ("localhost:11434/library/foo:cloud", "localhost:11434/library/foo:cloud", True),
    ],
)
def test_normalize_pull_name(name: str, pulled: str, cloud: bool) -> None:
    assert resolve(name) == ModelRef(name, pulled, cloud)


# ---- resolve(), checked against Ollama's Go code ---------------------------------------

# (sent, canonical, cloud) where Ollama runs a model.
GO_CHECKED = [
    ("llama3.2", "llama3.2:latest", False),
    ("LLAMA3.2", "llama3.2:latest", False),
    ("Llama3.2:Latest", "llama3.2:latest", False),
    ("\t llama3.2 \r\n", "llama3.2:latest", False),
    ("\u00a0llama3.2\u3000", "llama3.2:latest", False),
    ("\u2028llama3.2\u2029", "llama3.2:latest", False),
    ("\x85llama3.2\u205f", "llama3.2:latest", False),
    ("\u1680llama3.2\u202f", "llama3.2:latest", False),
    ("\u2000llama3.2\u200a", "llama3.2:latest", False),
    ("registry.ollama.ai/library/llama3.2", "llama3.2:latest", False),
    ("REGISTRY.OLLAMA.AI/LIBRARY/LLAMA3.2:LATEST", "llama3.2:latest", False),
    ("library/llama3.2", "llama3.2:latest", False),
    ("https://registry.ollama.ai/library/llama3.2", "llama3.2:latest", False),
    ("HTTPS://Registry.Ollama.AI/Library/Llama3.2", "llama3.2:latest", False),
    ("ftp://registry.ollama.ai/library/llama3.2", "llama3.2:latest", False),
    ("x y://registry.ollama.ai/library/llama3.2", "llama3.2:latest", False),
    ("https:///library/llama3.2", "llama3.2:latest", False),
    ("llama3.2:local", "llama3.2:latest", False),
    ("llama3.2:LOCAL", "llama3.2:latest", False),
    ("llama3.2: local", "llama3.2:latest", False),
    ("llama3.2:latest:local", "llama3.2:latest", False),
    ("myns/foo:7b", "myns/foo:7b", False),
    ("MyNS/Foo:7B", "myns/foo:7b", False),
    ("registry.ollama.ai/myns/foo:7b", "myns/foo:7b", False),
    ("example.com/ns/m:tag", "example.com/ns/m:tag", False),
    ("Example.COM/NS/M:TAG", "example.com/ns/m:tag", False),
    ("example.com/library/m", "example.com/library/m:latest", False),
    ("example.com:5000/ns/m", "example.com:5000/ns/m:latest", False),
    (
        "registry.ollama.ai:443/library/llama3.2",
        "registry.ollama.ai:443/library/llama3.2:latest",
        False,
    ),
    ("gpt-oss:120b-cloud", "gpt-oss:120b-cloud", True),
    ("gpt-oss:120b:cloud", "gpt-oss:120b-cloud", True),
    ("GPT-OSS:120B-CLOUD", "gpt-oss:120b-cloud", True),
    (" gpt-oss:120b:CLOUD ", "gpt-oss:120b-cloud", True),
    ("registry.ollama.ai/library/gpt-oss:120b-cloud", "gpt-oss:120b-cloud", True),
    ("gpt-oss:120b", "gpt-oss:120b", False),
    ("glm-4.6:cloud", "glm-4.6:cloud", True),
    ("glm-4.6:latest:cloud", "glm-4.6:cloud", True),
    ("glm-4.6:latest-cloud", "glm-4.6:cloud", True),
    ("glm-4.6:Cloud", "glm-4.6:cloud", True),
    ("glm-4.6: cloud", "glm-4.6:cloud", True),
    ("glm-4.6", "glm-4.6:latest", False),
    ("example.com/ns/m:cloud", "example.com/ns/m:cloud", True),
    ("my-cloud-model", "my-cloud-model:latest", False),
    ("cloud", "cloud:latest", False),
    ("_x/_y:_z", "_x/_y:_z", False),
    ("ns/m.x:t.y", "ns/m.x:t.y", False),
    ("host:https/namespace/model:tag", "host:https/namespace/model:tag", False),
    ("m" * 80, "m" * 80 + ":latest", False),
    ("m:" + "t" * 80, "m:" + "t" * 80, False),
    ("n" * 80 + "/m", "n" * 80 + "/m:latest", False),
    ("h" * 350 + "/n/m", "h" * 350 + "/n/m:latest", False),
]

CONFLICT = "use either :local or :cloud, not both: "
# (sent, reason, message) where Ollama answers with an error.
GO_REFUSED = [
    ("", "required", "model is required"),
    (" ", "required", "model is required"),
    ("\t\n", "required", "model is required"),
    ("\u3000", "required", "model is required"),
    ("llama3.2:local:local", "conflict", CONFLICT + '"llama3.2:local:local"'),
    ("gpt-oss:20b-cloud:local", "conflict", CONFLICT + '"gpt-oss:20b-cloud:local"'),
    ("foo:local:cloud", "conflict", CONFLICT + '"foo:local:cloud"'),
    ("foo:cloud:cloud", "conflict", CONFLICT + '"foo:cloud:cloud"'),
    ("foo:CLOUD:Local", "conflict", CONFLICT + '"foo:CLOUD:Local"'),
    ("a\tb:cloud:local", "conflict", CONFLICT + '"a\\tb:cloud:local"'),
    ("\u00e9:cloud:local", "conflict", CONFLICT + '"\u00e9:cloud:local"'),
    ("x\x7f:local:cloud", "conflict", CONFLICT + '"x\\x7f:local:cloud"'),
    (" x\u00a0:cloud:local ", "conflict", CONFLICT + '"x\\u00a0:cloud:local"'),
]
GO_INVALID = [
    "\x1cllama3.2",  # U+001C-U+001F: Python's str.strip() takes them, Go's TrimSpace does not
    "llama3.2\x1f",
    "\u200bllama3.2",
    "llama3.2\ufeff",
    "\u180ellama3.2",
    "https://llama3.2",
    "https://registry.ollama.ai/llama3.2",
    "llama3.2 :local",
    "foo:bar-cloud/baz",
    "x:-cloud",
    ":cloud",
    "llama3.2@sha256:" + "a" * 64,  # no digest any more: @ is invalid in every part
    "@sha256:abc",
    "llama3.2:latest@sha256:abc",
    "m@d",
    "-llama",
    "llama:-tag",
    "a.b/m",
    "n/m:",
    "/nn/mm",
    "//",
    "hh//",
    "mm:",
    "host/name:space/model:tag",
    "m" * 81,
    "m:" + "t" * 81,
    "n" * 81 + "/m",
    "h" * 351 + "/n/m",
    "llama\u212a",  # the Kelvin sign: no non-ASCII case folding, every such rune is invalid
    "LLAMA\u0130",
    "llam\u00e4",
    "llama 3",
    "llama3.2\x00",
]


@pytest.mark.parametrize(("sent", "expected", "cloud"), GO_CHECKED)
def test_resolves_as_ollama(sent: str, expected: str, cloud: bool) -> None:
    assert resolve(sent) == ModelRef(sent, expected, cloud)
    assert canonical(sent) == expected


@pytest.mark.parametrize(("sent", "reason", "message"), GO_REFUSED)
def test_refused_as_ollama(sent: str, reason: str, message: str) -> None:
    with pytest.raises(InvalidModelName) as caught:
        resolve(sent)
    assert (caught.value.reason, caught.value.message, str(caught.value)) == (
        reason,
        message,
        message,
    )
    assert caught.value.status == 400


@pytest.mark.parametrize("sent", GO_INVALID)
def test_invalid_as_ollama(sent: str) -> None:
    with pytest.raises(InvalidModelName, match=r"^invalid model name$") as caught:
        resolve(sent)
    assert caught.value.reason == "invalid"
    with pytest.raises(InvalidModelName):
        canonical(sent)


# Every way to name one model that Ollama runs as that model.
SPELLINGS = {
    "llama3.2:latest": [
        "llama3.2",
        "LLAMA3.2",
        "Llama3.2:LATEST",
        " llama3.2\n",
        "\u00a0llama3.2\u2003",
        "llama3.2:local",
        "llama3.2:latest:LOCAL",
        "registry.ollama.ai/library/llama3.2",
        "Registry.Ollama.AI/Library/llama3.2:latest",
        "https://registry.ollama.ai/library/llama3.2",
        "http://REGISTRY.ollama.ai/library/llama3.2:latest:local",
        "library/llama3.2:latest",
    ],
    "myns/foo:7b": ["myns/foo:7b", "MYNS/FOO:7B", "registry.ollama.ai/myns/foo:7b:local"],
    "gpt-oss:120b-cloud": [
        "gpt-oss:120b-cloud",
        "gpt-oss:120b:cloud",
        "GPT-OSS:120B-Cloud",
        " gpt-oss:120b:CLOUD\t",
        "registry.ollama.ai/library/gpt-oss:120b-cloud",
        "https://registry.ollama.ai/library/gpt-oss:120b:cloud",
    ],
    "glm-4.6:cloud": [
        "glm-4.6:cloud",
        "GLM-4.6:Cloud",
        "glm-4.6:latest:cloud",
        "library/glm-4.6:cloud",
    ],
}


@pytest.mark.parametrize(("expected", "spellings"), SPELLINGS.items())
def test_every_spelling_is_one_model(expected: str, spellings: list[str]) -> None:
    assert {canonical(spelling) for spelling in spellings} == {expected}


@pytest.mark.parametrize(
    ("cloud", "local"),
    [
        ("gpt-oss:120b-cloud", "gpt-oss:120b"),
        ("gpt-oss:120b:cloud", "gpt-oss:120b"),
        ("gpt-oss:120b:cloud", "gpt-oss:120b:local"),
        ("glm-4.6:cloud", "glm-4.6"),
        ("glm-4.6:cloud", "glm-4.6:latest"),
        ("example.com/ns/m:cloud", "example.com/ns/m"),
    ],
)
def test_a_cloud_model_is_never_the_local_one(cloud: str, local: str) -> None:
    assert resolve(cloud).cloud and not resolve(local).cloud
    assert canonical(cloud) != canonical(local)
    # Nor does any local name spell a cloud model's canonical name.
    assert resolve(canonical(cloud)).cloud
    assert not resolve(canonical(local)).cloud


@pytest.mark.parametrize("space", GO_SPACE)
def test_every_go_space_is_trimmed(space: str) -> None:
    assert canonical(f"{space}llama3.2{space}") == "llama3.2:latest"
    # The source suffix is trimmed too; the name before it is not ("m :cloud" is invalid).
    assert canonical(f"{space * 3}gpt-oss:120b:{space}cloud{space}") == "gpt-oss:120b-cloud"
    with pytest.raises(InvalidModelName):
        resolve(f"gpt-oss:120b{space}:cloud")


@pytest.mark.parametrize("rune", ["\x1c", "\x1d", "\x1e", "\x1f", "\u180e", "\u200b", "\ufeff"])
def test_no_other_space_is_trimmed(rune: str) -> None:
    with pytest.raises(InvalidModelName):
        resolve(f"{rune}llama3.2")


@pytest.mark.parametrize(("sent", "expected", "cloud"), GO_CHECKED)
def test_a_canonical_name_resolves_to_itself(sent: str, expected: str, cloud: bool) -> None:
    assert resolve(expected) == ModelRef(expected, expected, cloud)


def test_canonical_agrees_with_resolve_on_upstream_lists() -> None:
    # Names as an Ollama's /api/tags and /api/ps list them.
    listed = [
        "llama3.2:latest",
        "qwen2.5:0.5b",
        "nomic-embed-text:latest",
        "gpt-oss:120b-cloud",
        "glm-4.6:cloud",
        "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
        "myns/foo:7b",
        "mistral:7b-instruct-v0.3-q4_K_M",
    ]
    for name in listed:
        assert canonical(name) == resolve(name).canonical
    assert canonical("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M") == (
        "hf.co/bartowski/llama-3.2-1b-instruct-gguf:q4_k_m"
    )


def test_the_cache_is_bounded_and_keyed_by_the_sent_name() -> None:
    names._cache.clear()
    first = resolve("Llama3.2")
    assert resolve("Llama3.2") is first  # a hit costs a dict look-up
    assert resolve("llama3.2") is not first and resolve("llama3.2").sent == "llama3.2"
    for n in range(names.CACHE_SIZE + 10):
        resolve(f"model{n}")
        assert len(names._cache) <= names.CACHE_SIZE
    with pytest.raises(InvalidModelName):
        resolve("bad name")
    assert "bad name" not in names._cache  # refusals are not kept
    assert resolve("model3") == ModelRef("model3", "model3:latest", False)


# create's model, copy and push: model.ParseName alone (literal values from Go's ParseName).
@pytest.mark.parametrize(
    ("sent", "expected", "cloud"),
    [
        ("llama3.2", "llama3.2:latest", False),
        ("LLAMA3.2", "llama3.2:latest", False),
        ("llama3.2:local", "llama3.2:local", False),
        ("llama3.2:LOCAL", "llama3.2:local", False),
        ("gpt-oss:120b-cloud", "gpt-oss:120b-cloud", True),
        ("GPT-OSS:120B-CLOUD", "gpt-oss:120b-cloud", True),
        ("glm-4.6:cloud", "glm-4.6:cloud", True),
        ("glm-4.6:latest-cloud", "glm-4.6:latest-cloud", True),
        ("https://registry.ollama.ai/library/llama3.2", "llama3.2:latest", False),
    ],
)
def test_resolve_literal(sent: str, expected: str, cloud: bool) -> None:
    assert resolve_literal(sent) == ModelRef(sent, expected, cloud)


@pytest.mark.parametrize(
    "sent", [" llama3.2", "llama3.2\n", "gpt-oss:120b:cloud", "llama3.2:latest:local", ""]
)
def test_resolve_literal_refuses_what_parse_name_refuses(sent: str) -> None:
    with pytest.raises(InvalidModelName, match=r"^invalid model name$"):
        resolve_literal(sent)


# ---- form_value: as Go's net/http reads a form ----------------------------------------

MULTIPART = "multipart/form-data; boundary=B"


def part(name: str, value: bytes, nl: bytes = b"\r\n", extra: str = "") -> bytes:
    disposition = f'Content-Disposition: form-data; name="{name}"{extra}'.encode()
    return b"--B" + nl + disposition + nl + nl + value + nl


def multipart(*parts: bytes, nl: bytes = b"\r\n") -> bytes:
    return b"".join(parts) + b"--B--" + nl


AUDIO = part("file", b"RIFF\x00\x01--B-not-a-boundary\r\n", extra='; filename="a.wav"')


@pytest.mark.parametrize(
    ("body", "content_type", "query", "expected"),
    [
        (multipart(part("model", b"llama3.2"), AUDIO), MULTIPART, "", "llama3.2"),
        (
            multipart(AUDIO, part("model", b"whisper")),
            'multipart/form-data; boundary="B"',
            "",
            "whisper",
        ),
        (multipart(part("model", b"a"), part("model", b"b")), MULTIPART, "", "a"),
        (multipart(part("model", b"")), MULTIPART, "model=q", "q"),
        # multipart: the query's values come first (ParseForm, then the parts appended)
        (multipart(part("model", b"body")), MULTIPART, "model=query", "query"),
        (multipart(part("model", b"body")), MULTIPART, "x=1&model=%71+%2B", "q +"),
        (multipart(part("language", b"en"), AUDIO), MULTIPART, "", None),
        (multipart(part("model", b"")), MULTIPART, "", ""),
        (multipart(part("Model", b"x")), MULTIPART, "", None),
        # a file is not a value
        (multipart(part("model", b"f", extra='; filename="m.txt"')), MULTIPART, "", None),
        (multipart(part("model", b"f", extra='; filename=""')), MULTIPART, "", "f"),
        # bytes that are not UTF-8: each one U+FFFD, as Go's JSON encoder writes them
        (multipart(part("model", b"x\xff\xe2\x82y")), MULTIPART, "", "x\ufffd\ufffd\ufffdy"),
        (multipart(part("model", b"caf\xc3\xa9")), MULTIPART, "", "caf\u00e9"),
        # LF-only bodies, a preamble and an epilogue
        (multipart(part("model", b"lf", nl=b"\n"), nl=b"\n"), MULTIPART, "", "lf"),
        (b"preamble\r\n" + multipart(part("model", b"p")) + b"epilogue", MULTIPART, "", "p"),
        # "--B" followed by anything but space, tab, CR, LF or "--" is data
        (multipart(part("model", b"a\r\n--Bx\r\nb")), MULTIPART, "", "a\r\n--Bx\r\nb"),
        # an empty part written without the newline before the boundary
        (b'--B\r\nContent-Disposition: form-data; name="model"\r\n\r\n--B--', MULTIPART, "", ""),
        # the media type and parameter names in any case; Go lowers U+0130 to i
        (multipart(part("model", b"m")), "Multipart/Form-Data; BOUNDARY=B", "", "m"),
        (multipart(part("model", b"m")), "mult\u0130part/form-data; boundary=B", "", "m"),
        # a header key with a space before its colon is not Content-Disposition to Go
        (
            b'--B\r\nContent-Disposition : form-data; name="model"\r\n\r\nm\r\n--B--',
            MULTIPART,
            "",
            None,
        ),
        (multipart(part('mo\\"del', b"q")), MULTIPART, "", None),
        # a body that ends inside a part's headers ends the form (Go's io.EOF there)
        (
            part("model", b"first") + b'--B\r\nContent-Disposition: form-data; name="x"',
            MULTIPART,
            "",
            "first",
        ),
        # "--B " ends the part (a space follows), then is a delimiter line; the body ends
        # in the next part's headers
        (part("model", b"m") + b"\r\n--B \r\n", MULTIPART, "", "m\r\n"),
        # urlencoded: the body's values first, then the query's
        (b"model=body&model=2", "application/x-www-form-urlencoded", "model=query", "body"),
        (b"x=1", "application/x-www-form-urlencoded; charset=utf-8", "model=query", "query"),
        (b"model=%zz&model=a;b&model=ok", "application/x-www-form-urlencoded", "", "ok"),
        (b"model=x%FFy", "application/x-www-form-urlencoded", "", "x\ufffdy"),
        # any other type: the query alone (Go reads no body)
        (b"model=body", "text/plain", "model=query", "query"),
        (b"model=body", "", "", None),
        (b"{}", "application/json", "model=%zz&model=ok", "ok"),
    ],
)
def test_form_value_as_go(body: bytes, content_type: str, query: str, expected: str | None) -> None:
    assert form_value(body, content_type, query, "model") == expected


@pytest.mark.parametrize(
    ("body", "content_type", "query"),
    [
        (multipart(part("model", b"m"))[:-9], MULTIPART, ""),  # cut short
        (part("model", b"m"), MULTIPART, ""),  # no closing boundary
        (b"", MULTIPART, ""),
        (multipart(part("model", b"m")), "multipart/form-data", ""),  # no boundary
        (multipart(part("model", b"m")), "multipart/form-data; boundary=", ""),
        (multipart(part("model", b"m")), "multipart/form-data; boundary=B; boundary=B", ""),
        (multipart(part("model", b"m")), "multipart/form-data; boundary=B; ;", ""),
        (b"model=a", "application/x-www-form-urlencoded; a=1; a=2", ""),
        (multipart(part("model", b"m")), MULTIPART, "model=%zz"),  # ParseForm's error
        (multipart(part("model", b"m")), MULTIPART, "a;b"),
        (part("model", b"m") + b"--B--x\r\n", MULTIPART, ""),  # an unexpected line
        (part("model", b"m") + b"--B x\r\n--B--", MULTIPART, ""),
        (b"--B\r\n Content-Disposition: form-data\r\n\r\nm\r\n--B--", MULTIPART, ""),
        (b"--B\r\nno colon\r\n\r\nm\r\n--B--", MULTIPART, ""),
        # Go 1.26's textproto refuses these two (older Go skipped an empty key, kept controls)
        (b"--B\r\n: empty key\r\n\r\nm\r\n--B--", MULTIPART, ""),
        (b"--B\r\nX: a\x01b\r\n\r\nm\r\n--B--", MULTIPART, ""),
        (b"x" * 5000 + b"\r\n" + multipart(part("model", b"m")), MULTIPART, ""),  # bufio: full
        (multipart(*[part("p", b"")] * (MAX_PARTS + 1)), MULTIPART, ""),
        # what is not decided here, on purpose (Go: "m=", and a file)
        (
            b"--B\r\nContent-Disposition: form-data; name=model\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\nm=3D\r\n--B--",
            MULTIPART,
            "",
        ),
        (multipart(part("model", b"m", extra="; filename*=UTF-8''a.wav")), MULTIPART, ""),
    ],
)
def test_form_value_refuses_what_go_refuses(body: bytes, content_type: str, query: str) -> None:
    with pytest.raises(UndecidableForm):
        form_value(body, content_type, query, "model")


def test_form_value_reads_a_thousand_parts() -> None:
    body = multipart(*[part("p", b"")] * (MAX_PARTS - 1), part("model", b"last"))
    assert form_value(body, MULTIPART, "", "model") == "last"


def test_form_value_bounds_its_work() -> None:
    body = multipart(part("model", b"m"))
    lines = b"preamble\r\n" * MAX_PREAMBLE_LINES
    assert form_value(lines + body, MULTIPART, "", "model") == "m"
    with pytest.raises(UndecidableForm, match="preamble"):
        form_value(b"x\r\n" + lines + body, MULTIPART, "", "model")
    many = b"--B\r\n" + b"X: y\r\n" * MAX_HEADERS + b"\r\nm\r\n--B--"
    with pytest.raises(UndecidableForm, match="header lines"):
        form_value(many, MULTIPART, "", "model")
    with pytest.raises(UndecidableForm, match="query parameters"):
        form_value(body, MULTIPART, "a=1&" * 1000, "model")
