"""The Rust JSON encoder of payloads: every accepted type, numpy, NaN/inf, errors, limits."""

from __future__ import annotations

import collections
import enum
import json
import math

import numpy as np
import pytest

from gym_telemetry import encode_json


class Color(enum.IntEnum):
    RED = 3


class WithToList:
    def tolist(self):
        return [1, (2, 3)]


@pytest.mark.parametrize(
    "value",
    [
        None, True, False, 0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**100, -(2**100),
        0.5, -0.0, 1e300, 5e-324, "", "héllo \"q\" \\ \n\t\x00\x1b[31m", "🦀",
        [], (), {}, [1, [2, [3, {"k": [None]}]]], {"a": {"b": (1, 2.25, "x")}},
        collections.OrderedDict([("z", 1), ("a", 2)]),
    ],
)
def test_matches_json_semantics(value) -> None:
    assert json.loads(encode_json(value)) == json.loads(json.dumps(value))


def test_output_is_compact_and_keeps_key_order() -> None:
    assert encode_json({"b": [1, 2], "a": {"c": None}}) == '{"b":[1,2],"a":{"c":null}}'
    assert encode_json((1, "x")) == '[1,"x"]'


def test_non_string_keys_are_written_as_json_dumps_does() -> None:
    out = json.loads(encode_json({7: "a", True: "b", None: "c", 2.5: "d"}))
    assert out == {"7": "a", "true": "b", "null": "c", "2.5": "d"}


def test_nan_and_infinities_become_null() -> None:
    value = {"x": [math.nan, math.inf, -math.inf, 1.5], "y": np.float64("nan")}
    assert json.loads(encode_json(value)) == {"x": [None, None, None, 1.5], "y": None}
    arr = np.array([[np.nan, 1.0], [np.inf, -np.inf]], dtype=np.float32)
    assert encode_json(arr) == "[[null,1.0],[null,null]]"


def test_int_enum_and_str_subclasses() -> None:
    assert encode_json(Color.RED) == "3"
    assert encode_json(np.str_("abc")) == '"abc"'


@pytest.mark.parametrize(
    "dtype",
    [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
     np.float32, np.float64, np.float16],
)
def test_numpy_arrays_of_every_numeric_dtype(dtype) -> None:
    arr = (np.arange(24).reshape(2, 3, 4) % 5).astype(dtype)
    assert json.loads(encode_json(arr)) == arr.tolist()


def test_numpy_float32_is_written_at_float32_precision() -> None:
    assert encode_json(np.array([0.1, 2.5], dtype=np.float32)) == "[0.1,2.5]"
    assert encode_json(np.float32(0.1)) == "0.1"


def test_numpy_layouts_views_and_byte_order() -> None:
    base = np.arange(30, dtype=np.int64).reshape(5, 6)
    for arr in (base.T, base[::2, 1::3], base[:, ::-1], np.asfortranarray(base)):
        assert json.loads(encode_json(arr)) == arr.tolist()
    big_endian = np.arange(4, dtype=">i4")
    assert encode_json(big_endian) == "[0,1,2,3]"
    assert encode_json(np.zeros((0, 3))) == "[]"
    assert encode_json(np.array(7)) == "7"
    assert encode_json(np.array(2.5, dtype=np.float32)) == "2.5"


def test_numpy_scalars_and_object_arrays() -> None:
    value = [np.int64(-3), np.uint8(200), np.float16(0.5), np.bool_(False), np.bool_(True)]
    assert encode_json(value) == "[-3,200,0.5,false,true]"
    assert json.loads(encode_json(np.array(["a", "bc"]))) == ["a", "bc"]
    obj = np.array([{"k": 1}, [2]], dtype=object)
    assert json.loads(encode_json(obj)) == [{"k": 1}, [2]]


def test_gymnasium_style_observations() -> None:
    obs = {
        "image": np.zeros((2, 2, 3), dtype=np.uint8),
        "pos": np.array([0.25, -1.0], dtype=np.float32),
        "discrete": np.int64(3),
        "tuple": (np.int64(1), np.array([1, 0], dtype=np.int8)),
    }
    assert json.loads(encode_json(obs)) == {
        "image": [[[0, 0, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]]],
        "pos": [0.25, -1.0],
        "discrete": 3,
        "tuple": [1, [1, 0]],
    }


def test_objects_with_tolist() -> None:
    assert encode_json(WithToList()) == "[1,[2,3]]"


def test_unencodable_values_name_the_path() -> None:
    with pytest.raises(TypeError, match=r"value\[\"a\"\]\[1\]: cannot encode an object of type 'object'"):
        encode_json({"a": [1, object()]})
    with pytest.raises(TypeError, match="complex"):
        encode_json([1j])
    with pytest.raises(TypeError, match="bytes"):
        encode_json(b"raw")
    with pytest.raises(TypeError, match="dict keys must be"):
        encode_json({(1, 2): 3})
    with pytest.raises(TypeError, match="set"):
        encode_json({1, 2})


def test_cycles_and_deep_nesting_are_value_errors() -> None:
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError, match="nested deeper than 64"):
        encode_json(cyclic)
    deep: list = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(ValueError, match="nested deeper"):
        encode_json(deep)


def test_output_is_bounded() -> None:
    with pytest.raises(ValueError, match="more than 1000 bytes"):
        encode_json(["x" * 100] * 20, max_bytes=1000)
    with pytest.raises(ValueError, match="array of 10000 elements does not fit"):
        encode_json(np.zeros(10_000), max_bytes=1000)
    assert encode_json(np.zeros(10), max_bytes=1000).startswith("[0.0,")


def test_lone_surrogates_do_not_break_the_output() -> None:
    out = encode_json("a\udcffb")
    assert json.loads(out).startswith("a")


def test_json_is_encoded_once_and_reused() -> None:
    from gym_telemetry import Json

    j = Json({"ansi": "\x1b[41mS\x1b[0m", "rows": 1, "cols": 1, "v": np.float32(0.5)})
    assert str(j) == encode_json({"ansi": "\x1b[41mS\x1b[0m", "rows": 1, "cols": 1, "v": 0.5})
    assert repr(j).startswith("Json(")
    assert encode_json({"hint": j, "list": [j]}) == f'{{"hint":{j},"list":[{j}]}}'
    with pytest.raises(TypeError, match="cannot encode"):
        Json(object())
