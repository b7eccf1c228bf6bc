"""dcloop._checks: the shared checks and the one class-label parser."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcloop._checks import (
    MAX_SEED,
    check_batch,
    check_bool,
    check_callable,
    check_choice,
    check_float,
    check_int,
    check_run_config,
    is_int,
    parse_class_labels,
)
from dcloop.errors import UserInputError, user_error_message

# --------------------------------------------------------------------------- typed values


def test_is_int_accepts_python_and_numpy_ints_but_not_bools_or_floats():
    assert is_int(3) and is_int(np.int64(3)) and is_int(-1)
    assert not any(is_int(v) for v in (True, np.bool_(True), 3.0, "3", None))


def test_check_int_returns_a_python_int():
    out = check_int("k", np.int32(4), minimum=1)
    assert out == 4 and type(out) is int


@pytest.mark.parametrize(
    "value, bounds, match",
    [
        (0, {"minimum": 1}, r"k must be an integer >= 1; got k=0"),
        (True, {"minimum": 0}, r"k must be an integer >= 0; got k=True"),
        (2.0, {}, r"k must be an integer; got k=2.0"),
        ("3", {}, r"k must be an integer; got k='3'"),
        (6, {"minimum": 0, "maximum": 5}, r"k must be an integer in \[0, 5\]; got k=6"),
        (2, {"minimum": 0, "below": 2}, r"k must be an integer in \[0, 2\); got k=2"),
        (9, {"maximum": 5}, r"k must be an integer <= 5; got k=9"),
        (5, {"below": 5}, r"k must be an integer < 5; got k=5"),
    ],
)
def test_check_int_names_the_key_the_value_and_the_range(value, bounds, match):
    with pytest.raises(UserInputError, match=match):
        check_int("k", value, **bounds)


def test_check_int_adds_the_reason():
    with pytest.raises(UserInputError, match=r"folds must be an integer >= 2 \(K replicas\); got"):
        check_int("folds", 1, minimum=2, why="K replicas")


def test_check_float_bounds_open_and_closed():
    assert check_float("p", 1, low=0, high=1) == 1.0
    assert check_float("p", np.float32(0.5), low=0, high=1, low_open=True) == 0.5
    cases = [
        (0, {"low": 0, "high": 1, "low_open": True}, r"p must be a number in \(0, 1\]; got p=0"),
        (1.0, {"low": 0, "high": 1, "high_open": True}, r"in \[0, 1\); got p=1.0"),
        (-1, {"low": 0}, r"p must be a number >= 0; got p=-1"),
        (0, {"low": 0, "low_open": True}, r"p must be a number > 0; got p=0"),
        (2, {"high": 1}, r"p must be a number <= 1; got p=2"),
        (float("nan"), {"low": 0, "high": 1}, r"got p=nan"),
        (float("inf"), {}, r"p must be a number \(finite\); got p=inf"),
        (True, {}, r"got p=True"),
        ("0.5", {}, r"got p='0.5'"),
    ]
    for value, bounds, match in cases:
        with pytest.raises(UserInputError, match=match):
            check_float("p", value, **bounds)


def test_check_bool_and_check_callable():
    assert check_bool("guard", np.bool_(False)) is False
    with pytest.raises(UserInputError, match=r"guard must be true or false; got guard=1"):
        check_bool("guard", 1)
    assert check_callable("f", None) is None and check_callable("f", len) is len
    with pytest.raises(UserInputError, match=r"f must be a callable or None; got f='x'"):
        check_callable("f", "x")
    with pytest.raises(UserInputError, match=r"net must be a module factory; got net=None"):
        check_callable("net", None, allow_none=False, expected="a module factory")


def test_check_choice_names_the_allowed_values():
    check_choice("mode", "a", ("a", "b"))
    with pytest.raises(ValueError, match=r"mode must be one of \['a', 'b'\]; got 'c'"):
        check_choice("mode", "c", ("a", "b"))


def test_messages_are_one_line_for_the_command_line():
    with pytest.raises(UserInputError) as err:
        check_int("seed", -1, minimum=0, maximum=MAX_SEED)
    assert user_error_message(err.value) == (
        f"seed must be an integer in [0, {MAX_SEED}]; got seed=-1"
    )


def test_check_run_config_keys():
    check_run_config({"seed": 0, "folds": 2, "trainer": {"max_epochs": 1}})
    for cfg, match in [
        ({"seed": MAX_SEED + 1}, "seed must be an integer in"),
        ({"folds": 1}, r"folds must be an integer >= 2 .*; got folds=1"),
        ({"trainer": {"max_epochs": 0}}, r"trainer.max_epochs must be .*max_epochs=0"),
    ]:
        with pytest.raises(UserInputError, match=match):
            check_run_config(cfg)


def test_check_batch_needs_an_integer_index():
    check_batch((torch.zeros(2, 3), torch.zeros(2), torch.arange(2)))
    with pytest.raises(ValueError, match=r"\(x, y, index\); got a tuple of length 2"):
        check_batch((torch.zeros(2), torch.zeros(2)))
    with pytest.raises(ValueError, match="integer sample index"):
        check_batch((torch.zeros(2), torch.zeros(2), torch.zeros(2)))


# ----------------------------------------------------------------------- parse_class_labels


def parse(raw, names=None):
    ids, out_names = parse_class_labels(raw, names, where="f.csv")
    assert ids.dtype == np.int64 and ids.shape == (len(raw),)
    return ids.tolist(), out_names


def test_names_given_map_names_and_ids():
    assert parse([" dog", "cat ", "1", 0], ["cat", "dog"]) == ([1, 0, 1, 0], ["cat", "dog"])


def test_names_win_over_ids():
    # "1" is the name of class 0 here, not the id 1
    assert parse(["1", "0", "2"], ["1", "0", "x"]) == ([0, 1, 2], ["1", "0", "x"])
    # pandas' "3.0" is the class named "3"
    assert parse(["3.0"], ["a", "b", "c", "3"]) == ([3], ["a", "b", "c", "3"])
    assert parse(["1.0"], ["a", "1"]) == ([1], ["a", "1"])


def test_integral_floats_and_ints_are_ids():
    assert parse(["3.0", "1", 0, 2.0, np.int64(2)]) == ([3, 1, 0, 2, 2], ["0", "1", "2", "3"])
    assert parse(["1.0", "0"], ["a", "b"]) == ([1, 0], ["a", "b"])


def test_no_names_all_ids_give_names_up_to_the_largest():
    assert parse(["2", "0", "2"]) == ([2, 0, 2], ["0", "1", "2"])


def test_no_names_all_names_give_the_sorted_distinct_names():
    assert parse(["dog", "cat", "eel", "cat"]) == ([1, 0, 2, 0], ["cat", "dog", "eel"])
    assert parse(["1.5", "b"]) == ([0, 1], ["1.5", "b"])  # not an integral id: a name


def test_mixed_ids_and_names_is_an_error_naming_one_row_of_each():
    with pytest.raises(UserInputError) as err:
        parse(["cat", "0", "dog", "1", "cat"])
    msg = str(err.value)
    assert msg.startswith("f.csv: the label column mixes class ids ('0', '1')")
    assert "class names ('cat', 'dog')" in msg and "in 2 and 3 row(s)" in msg
    assert "row 1: '0' and row 0: 'cat'" in msg


def test_negative_ids_without_names():
    with pytest.raises(UserInputError, match=r"f.csv: row 1 has label '-1', a negative class id"):
        parse(["0", "-1", "2"])


def test_out_of_range_id_names_the_row_and_the_expected_ids():
    with pytest.raises(UserInputError) as err:
        parse(["a", "b", "2", "a"], ["a", "b"])
    msg = str(err.value)
    assert msg.startswith("f.csv: row 2 has label '2', which is not a known class")
    assert "expected a class name ('a', 'b') or a class id in [0, 2)" in msg


def test_unknown_names_list_up_to_five_with_a_count():
    raw = ["ok", "u1", "u2", "u3", "u1", "u4", "u5", "u6", "u7"]
    with pytest.raises(UserInputError) as err:
        parse(raw, ["ok"])
    msg = str(err.value)
    assert "row 1 has label 'u1'" in msg
    assert "unknown labels in 8 row(s), 7 distinct: 'u1', 'u2', 'u3', 'u4', 'u5', ...)" in msg
    assert "'u6'" not in msg
    assert user_error_message(err.value) == msg  # one line for the command line


def test_empty_values_are_errors():
    with pytest.raises(UserInputError, match=r"row 1 has an empty label \(2 such row\(s\)\)"):
        parse(["a", " ", None])
    with pytest.raises(UserInputError, match=r"row 0 has label '', which is not a known class"):
        parse([float("nan")], ["a"])


def test_duplicate_class_names_are_an_error():
    with pytest.raises(UserInputError, match="class names must be unique"):
        parse(["a"], ["a", "a"])


def test_no_values():
    assert parse([]) == ([], [])
    assert parse([], ["a", "b"]) == ([], ["a", "b"])
