"""JSON we read: a key written twice in one object is refused, naming the key and both places (fileio.loads_json)."""

from __future__ import annotations

import json
import random
import re

import pytest

from megatron_zh.errors import ConfigError
from megatron_zh.fileio import DuplicateKeyError, loads_json, read_json_object

DS_CONFIG = """{
  "train_batch_size": 16,
  "gradient_accumulation_steps": 1,
  "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}},
  "train_batch_size": 1600
}
"""


def test_a_key_written_twice_names_the_key_and_both_lines():
    with pytest.raises(DuplicateKeyError) as caught:
        loads_json(DS_CONFIG)
    assert caught.value.msg == (
        'key "train_batch_size" is written twice (lines 2 and 5); JSON readers silently keep only the last: remove one'
    )
    assert (caught.value.lineno, caught.value.colno) == (5, 3)  # the second one
    assert isinstance(caught.value, json.JSONDecodeError)  # every reader's handling of bad JSON applies
    assert json.loads(DS_CONFIG)["train_batch_size"] == 1600  # what json alone would have done, silently


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"optimizer": {"params": {"lr": 1,\n  "lr": 2}}}',
            'key "optimizer.params.lr" is written twice (lines 1 and 2)',
        ),
        ('[{"a": 1}, {"b": 1, "b": 2}]', 'key "[1].b" is written twice (columns 13 and 21)'),
        ('{"data": [[], {"x": 0, "x": 1}]}', 'key "data[1].x" is written twice (columns 16 and 24)'),
        ('{\n"a": {"k": 1, "k": 2}}', 'key "a.k" is written twice (line 2, columns 7 and 15)'),
        ('{"text": "a", "t\\u0065xt": "b"}', 'key "text" is written twice (columns 2 and 15)'),  # spelled otherwise
    ],
)
def test_nested_keys_are_named_by_their_path(text, message):
    with pytest.raises(DuplicateKeyError, match="^" + re.escape(message)):
        loads_json(text)


def test_the_same_key_in_other_objects_or_inside_strings_is_fine():
    text = (
        '{"optimizer": {"type": "AdamW", "params": {"lr": 1}}, "scheduler": {"type": "WarmupLR", "params": {}},'
        ' "note": "{\\"type\\": 1, \\"type\\": 2}", "brackets": ["{", "}", "[", "]"], "type": "gpt2"}'
    )
    assert loads_json(text) == json.loads(text)


def test_random_documents_parse_as_json_does_and_a_planted_duplicate_is_found():
    rng = random.Random(0)

    def value(depth: int):
        kind = rng.choice(["object", "array", "scalar"] if depth < 4 else ["scalar"])
        if kind == "object":
            return {rng.choice(["a", "b", "c", "{", '"', "d e", "中"]) + str(i): value(depth + 1) for i in range(3)}
        if kind == "array":
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return rng.choice([1, 2.5, None, True, "x", "}{", '"a": 1'])

    for _ in range(200):
        document = {"root": value(0)}
        text = json.dumps(document, indent=rng.choice([None, 2]), ensure_ascii=rng.random() < 0.5)
        assert loads_json(text) == document
        # Plant a duplicate: the root's key again, at the end of the document.
        planted = text.rstrip()[:-1].rstrip() + ',\n"root": 0}'
        with pytest.raises(DuplicateKeyError, match='^key "root" is written twice') as caught:
            loads_json(planted)
        assert caught.value.lineno == planted.count("\n") + 1


def test_read_json_object_says_which_file_and_what_to_do(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{\n  "x": 1,\n  "x": 2\n}\n')
    with pytest.raises(ConfigError) as caught:
        read_json_object(path, ConfigError, what="the config ", fix="write it once")
    assert str(caught.value) == (
        f'the config {path}: key "x" is written twice (lines 2 and 3); JSON readers silently keep only the last: '
        "remove one; write it once"
    )
    path.write_text("{,}")
    with pytest.raises(ConfigError, match=rf"^{path}:1:2: not valid JSON: Expecting property name"):
        read_json_object(path, ConfigError)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=rf"^{path} holds a JSON array, not an object$"):
        read_json_object(path, ConfigError)
    path.write_bytes(b'{"x": "\xff"}')
    with pytest.raises(ConfigError, match=rf"^cannot read {path}: 'utf-8' codec can't decode byte 0xff"):
        read_json_object(path, ConfigError)
