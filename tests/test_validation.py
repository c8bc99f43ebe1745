"""lrnn.validation: the one home of scalar argument checks."""

import math

import pytest

from lrnn.validation import check_flag, check_int, check_number, check_positive


def test_check_int_accepts_ints_in_range_and_returns_them():
    assert check_int("n", 3) == 3 and check_int("n", 0, 0) == 0 and check_int("n", 5, 1, 5) == 5


@pytest.mark.parametrize("value", [True, 2.0, "3", None])
def test_check_int_refuses_other_kinds_with_a_type_error(value):
    with pytest.raises(TypeError, match=rf"n must be an int >= 1, got {value!r}"):
        check_int("n", value, 1)


@pytest.mark.parametrize("value, minimum, maximum, message", [(0, 1, None, "n must be >= 1, got 0"),
                                                              (9, 1, 8, "n must be >= 1 and <= 8, got 9"),
                                                              (1, None, 0, "n must be <= 0, got 1")])
def test_check_int_names_the_range_it_missed(value, minimum, maximum, message):
    with pytest.raises(ValueError, match=message):
        check_int("n", value, minimum, maximum)


def test_check_positive_names_the_first_bad_size():
    check_positive(a=1, b=2)
    with pytest.raises(ValueError, match="b must be >= 1, got 0"):
        check_positive(a=1, b=0)


def test_check_flag_takes_bools_only():
    assert check_flag("f", False) is False
    for value in (0, 1, "true", None):
        with pytest.raises(TypeError, match="f must be a bool"):
            check_flag("f", value)


def test_check_number():
    assert check_number("x", 0) == 0 and check_number("x", 0.5, 0, strict=True) == 0.5
    with pytest.raises(TypeError, match="x must be a number"):
        check_number("x", True)
    with pytest.raises(TypeError, match="x must be a number"):
        check_number("x", "1")
    with pytest.raises(ValueError, match="x must be > 0, got 0"):
        check_number("x", 0, 0, strict=True)
    with pytest.raises(ValueError, match="x must be >= 0, got -1"):
        check_number("x", -1, 0)
    with pytest.raises(ValueError, match="got nan"):  # NaN: the right kind, out of every range
        check_number("x", math.nan, 0)
