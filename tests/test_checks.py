"""odezoo.checks: the public argument checks (issue 13) give one error format and refuse bools as numbers."""

import math

import numpy as np
import pytest

from odezoo import checks


@pytest.mark.parametrize(
    "check, value, allowed",
    [
        (checks.positive_int, 0, "a positive int"),
        (checks.positive_int, True, "a positive int"),
        (checks.positive_int, 2.0, "a positive int"),
        (checks.non_negative_int, -1, "an int >= 0"),
        (checks.positive, 0.0, "a finite positive float"),
        (checks.positive, math.inf, "a finite positive float"),
        (checks.positive, math.nan, "a finite positive float"),
        (checks.positive, False, "a finite positive float"),
        (checks.positive, "1e-3", "a finite positive float"),
        (checks.finite, -math.inf, "a finite float"),
        (checks.non_negative, -0.5, "a finite float >= 0"),
        (checks.boolean, 1, "True or False"),
    ],
)
def test_a_bad_value_is_named_with_what_is_allowed(check, value, allowed):
    with pytest.raises(ValueError) as info:
        check("arg", value)
    assert str(info.value) == f"Invalid value for `arg`. Received: arg={value!r}. Allowed: {allowed}."


def test_good_values_come_back_normalised():
    assert checks.positive_int("n", np.int64(4)) == 4 and type(checks.positive_int("n", np.int64(4))) is int
    assert checks.positive("rtol", 1) == 1.0 and type(checks.positive("rtol", 1)) is float
    assert checks.positive("rtol", None, allow_none=True) is None
    assert checks.integer("k", 3, minimum=0, maximum=3) == 3
    assert checks.shape("input_shape", [8, 8, 1], rank=3) == (8, 8, 1)
    assert checks.choice("optimizer", "sgd", ("adam", "sgd")) == "sgd"


def test_bounds_choices_and_shapes_name_the_valid_range():
    with pytest.raises(ValueError, match=r"Received: k=4\. Allowed: an int in \[0, 3\]\."):
        checks.integer("k", 4, minimum=0, maximum=3)
    with pytest.raises(ValueError, match=r"Received: k=None\. Allowed: an int >= 2\."):
        checks.integer("k", None, minimum=2)
    with pytest.raises(ValueError, match=r"Allowed: None or a positive int\."):
        checks.positive_int("k", -1, allow_none=True)
    with pytest.raises(ValueError, match=r"Received: o='adamw'\. Allowed: one of 'adam', 'sgd'\."):
        checks.choice("o", "adamw", ("adam", "sgd"))
    with pytest.raises(ValueError, match=r"Received: b=True\. Allowed: one of 1, 2\."):  # a bool is not 1
        checks.choice("b", True, (1, 2))
    with pytest.raises(ValueError, match=r"Allowed: a tuple of 3 positive ints\."):
        checks.shape("input_shape", (8, 8), rank=3)
    with pytest.raises(ValueError, match=r"Received: arg=1\.5\. Allowed: a finite float > 0\.0 <= 1\.0\."):
        checks.real("arg", 1.5, exclusive_minimum=0.0, maximum=1.0)


def test_unknown_config_keys_name_a_close_match_and_the_valid_ones():
    with pytest.raises(
        TypeError,
        match=r"resnet got unexpected config key\(s\) 'dpeth' \(did you mean 'depth'\?\)\. "
        r"Valid keys: depth, width\.",
    ):
        checks.check_keys("resnet", ["dpeth"], ["width", "depth"])
    checks.check_keys("resnet", ["depth"], ["width", "depth"])  # no error for known keys
