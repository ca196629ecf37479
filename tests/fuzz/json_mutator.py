"""A structure-aware libFuzzer mutator for JSON messages (atheris `custom_mutator`).

Byte-level mutations rarely turn `"tracks": ["inbound"]` into `"tracks": 5`: the JSON decoder is C code that gives the
fuzzer no coverage to climb. Half the time this mutator decodes the input, changes one node (a value of another type,
an edge-case number, a deep nesting, a key dropped or added, a string from the message's own vocabulary) and encodes
it again; otherwise, or when the input is not JSON, it leaves the mutation to libFuzzer.
"""

from __future__ import annotations

import json
import random
from typing import Any

import atheris

EDGE_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 8000, 16000, 2**31, 2**64, -(2**63), 0.5, -0.0, 1e308, float("inf"), float("-inf"),
    float("nan"), "", " ", "0", "-1", "1e999", "5,10,5", "a,b,c", "\x00", "\ud800", "社保", "{", "{\"a\": 1}", "[]",
    [], {}, [None], [1, 2], [5, 10, 5], ["inbound", 1], {"": ""}, {"a": [1]},
)


def _nodes(value: Any, path: tuple = ()) -> list[tuple]:
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _nodes(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _nodes(item, (*path, index))
    return found


def _words(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [word for key, item in value.items() for word in (key, *_words(item))]
    if isinstance(value, list):
        return [word for item in value for word in _words(item)]
    return [value]


def _replacement(rng: random.Random, words: list[Any]) -> Any:
    choice = rng.random()
    if choice < 0.45:
        return rng.choice(EDGE_VALUES)
    if choice < 0.7:
        return rng.choice(words)
    if choice < 0.8:
        return rng.randint(-(10**rng.randint(1, 30)), 10**rng.randint(1, 30))
    if choice < 0.9:
        digits = rng.choice((4299, 4301, 5000))  # around CPython's int-from-string digit limit
        return int("9" * digits) if digits <= 4300 else _BigNumber("9" * digits)
    depth = rng.choice((10, 900, 1200, 5000))  # around the decoder's recursion limit
    return _Deep(depth)


class _BigNumber(str):
    """Encoded as a bare JSON number of any length (json.dumps cannot write an int past the digit limit)."""


class _Deep(int):
    """Encoded as `depth` nested arrays."""


def _encode(value: Any, ensure_ascii: bool) -> str:
    if isinstance(value, _BigNumber):
        return str.__str__(value)
    if isinstance(value, _Deep):
        return "[" * int(value) + "]" * int(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(key), ensure_ascii=ensure_ascii)}:{_encode(item, ensure_ascii)}"
                              for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_encode(item, ensure_ascii) for item in value) + "]"
    try:
        return json.dumps(value, ensure_ascii=ensure_ascii)
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True)


def _set(document: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return document


def mutate_json(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if rng.random() < 0.5:
        return atheris.Mutate(data, max_size)
    try:  # an exception escaping a custom mutator stalls libFuzzer instead of ending it
        return _mutate_document(json.loads(data), data, max_size, rng)
    except Exception:  # noqa: BLE001 - not JSON, nested past what these walks recurse through, or a bug here
        return atheris.Mutate(data, max_size)


def _mutate_document(document: Any, data: bytes, max_size: int, rng: random.Random) -> bytes:
    words = _words(document) or [""]
    path = rng.choice(_nodes(document))
    operation = rng.random()
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    if operation < 0.15 and path:  # drop a key or an element
        del parent[path[-1]]
    elif operation < 0.3 and isinstance(parent, dict):  # add a key from the message's own vocabulary
        parent[str(rng.choice(words))] = _replacement(rng, words)
    else:
        document = _set(document, path, _replacement(rng, words))
    encoded = _encode(document, ensure_ascii=rng.random() < 0.5).encode("utf-8", errors="surrogatepass")
    return encoded if len(encoded) <= max_size else atheris.Mutate(data, max_size)
