"""Text from untrusted files: a value shown in an error is cut to a line, and a class index is read only from
ASCII digits (str.isdigit() also accepts '²', which int() refuses)."""

from __future__ import annotations

import pytest

from vggfeat.utils.text import decimal_int, shorten


@pytest.mark.parametrize(
    "text, value",
    [("0", 0), ("17", 17), ("007", 7), ("²", None), ("٣", None), ("-1", None), ("1.0", None), ("", None), (" 1", None)],
)
def test_decimal_int_reads_ascii_digits_only(text, value):
    assert decimal_int(text) == value


def test_decimal_int_refuses_numbers_longer_than_any_index():
    assert decimal_int("9" * 100) is None and decimal_int("9" * 100_000) is None  # int() would raise on these
    assert decimal_int("1" + "0" * 17) == 10**17


def test_shorten_bounds_every_value_to_a_line():
    assert shorten("abc") == "'abc'" and shorten([1, 2]) == "[1, 2]" and shorten(None) == "None"
    nested = [[["y" * 1000] * 1000] * 1000] * 1000  # a thousand of everything, four levels deep
    for value in ("x" * 10**6, ["x"] * 10**6, {str(i): i for i in range(10**5)}, 7**100_000, nested):
        text = shorten(value)
        assert len(text) <= 100 and "\n" not in text, text
    assert shorten("a\nb") == "'a\\nb'"
