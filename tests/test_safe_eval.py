"""demos.safe_eval: arithmetic only, bounded work, a clear error for everything else."""
import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from demos.safe_eval import (MAX_EXPONENT, MAX_INPUT_LENGTH, MAX_INT_DIGITS, MAX_NODES,
                             EvalError, format_number, safe_eval)

#: Time one evaluation may take, whatever the input.  The slowest inputs found
#: (chains of ~3300-bit multiplications, 1000-character inputs) take < 5 ms
#: here; 0.5 s leaves room for a loaded shared 2-core machine.
TIME_BOUND = 0.5


@pytest.mark.parametrize("text, expected", [
    ("1 + 2", 3),
    ("2 * (3 + 4) ** 2", 98),
    ("7 // 2", 3),
    ("-7 // 2", -4),
    ("7 % 3", 1),
    ("7.5 % 2", 1.5),
    ("1 / 4", 0.25),
    ("2 ** -2", 0.25),
    ("2 ** 0.5", math.sqrt(2)),
    ("(-2) ** 2.0", 4.0),
    ("+-+3", -3),
    ("((((1))))", 1),
    ("-" * 400 + "1", 1),
    ("+".join(["1"] * 250), 250),
    ("  10 - 4 - 3  ", 3),
    ("1e3 * 2", 2000.0),
    ("0x10 + 0b11 + 0o7", 26),
    ("1_000 * 3", 3000),
    (b"6 * 7", 42),
    ("2 ** 1000", 2 ** 1000),
    ("(-1) ** 1000", 1),
    ("0 ** 0", 1),
])
def test_evaluates_arithmetic(text, expected):
    result = safe_eval(text)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize("text, message", [
    ("__import__('os')", "function calls are not allowed"),
    ("__import__('os').system('true')", "not allowed"),
    ("open('/etc/passwd')", "function calls are not allowed"),
    ("x", "names are not allowed"),
    ("(1).real", "attribute access is not allowed"),
    ("().__class__.__bases__", "not allowed"),
    ("[1, 2][0]", "not allowed"),
    ("'a' * 3", "strings are not allowed"),
    ("b'a'", "bytes are not allowed"),
    ("f'{1}'", "strings are not allowed"),
    ("lambda: 1", "lambdas are not allowed"),
    ("[x for x in (1, 2)]", "comprehensions are not allowed"),
    ("(x for x in (1,))", "comprehensions are not allowed"),
    ("1 if 1 else 2", "conditional expressions are not allowed"),
    ("1 < 2", "comparisons are not allowed"),
    ("1 and 2", "boolean operators are not allowed"),
    ("True + 1", "booleans are not allowed"),
    ("None", "None is not allowed"),
    ("...", "Ellipsis is not allowed"),
    ("1j", "complex numbers are not allowed"),
    ("1, 2", "tuples are not allowed"),
    ("{1: 2}", "dicts are not allowed"),
    ("(y := 2)", "assignments are not allowed"),
    ("1 << 100", "operator LShift is not allowed"),
    ("6 & 3", "operator BitAnd is not allowed"),
    ("~1", "unary operator Invert is not allowed"),
    ("not 1", "unary operator Not is not allowed"),
    ("1 +", "syntax error"),
    ("import os", "syntax error"),
    ("x = 1", "syntax error"),
    ("1\x002", "syntax error"),
    ("", "empty expression"),
    ("   \n", "empty expression"),
    (b"\xff\xfe", "not valid UTF-8"),
])
def test_refuses_everything_else_with_a_clear_message(text, message):
    with pytest.raises(EvalError, match=message.replace("(", r"\(")):
        safe_eval(text)


def test_refuses_non_string_input():
    with pytest.raises(EvalError, match="expected a string, got int"):
        safe_eval(12)  # type: ignore[arg-type]


@pytest.mark.parametrize("text, message", [
    ("1/0", "division by zero"),
    ("1 // 0", "division by zero"),
    ("1 % 0", "division by zero"),
    ("1.5 / 0.0", "division by zero"),
    ("0 ** -1", "division by zero"),
])
def test_division_by_zero_is_an_error(text, message):
    with pytest.raises(EvalError, match=message):
        safe_eval(text)


@pytest.mark.parametrize("text, message", [
    ("1" * (MAX_INPUT_LENGTH + 1), "expression too long"),
    ("+".join(["1"] * 300), "too complex"),
    ("(" * 300 + "1" + ")" * 300, "syntax error"),
    (f"2 ** {MAX_EXPONENT + 1}", "exponent too large"),
    (f"2 ** -{MAX_EXPONENT + 1}", "exponent too large"),
    ("2.0 ** 1e6", "exponent too large"),
    ("9 ** 1000 * 9 ** 1000", "result too large"),
    ("(9 ** 1000) ** 2", "result too large"),
    ("(2 ** 1000) * (2 ** 1000) * (2 ** 1000) * (2 ** 1000)", "result too large"),
    ("10.0 ** 400", "too large for a float"),
    ("1e308 * 10", "too large for a float"),
    ("1e308 * 10 - 1e308 * 10", "too large for a float"),
    ("1e999", "too large for a float"),
    ("10 ** 400 / 3", "too large for a float"),
    ("(10 ** 400) * 1.5", "too large for a float"),
    ("0x" + "f" * 900, "number too large"),
    ("(-8) ** 0.5", "not a real number"),
])
def test_bounds(text, message):
    started = time.perf_counter()
    with pytest.raises(EvalError, match=message):
        safe_eval(text)
    assert time.perf_counter() - started < TIME_BOUND


def test_limits_are_consistent():
    assert MAX_NODES < MAX_INPUT_LENGTH  # the node cap binds before the length cap
    assert safe_eval("+".join(["1"] * ((MAX_NODES + 1) // 2))) == (MAX_NODES + 1) // 2
    assert safe_eval("9" * MAX_INT_DIGITS) == int("9" * MAX_INT_DIGITS)
    assert len(str(safe_eval("3 ** 1000 * 3 ** 1000"))) == 955
    with pytest.raises(EvalError, match="result too large"):
        safe_eval("3 ** 1000 * 3 ** 1000 * 3 ** 100")  # 1002 digits


def test_largest_results_stay_fast():
    # The most expensive accepted operations: near-limit multiplications and powers.
    text = " + ".join(["7 ** 1000 // 3 ** 700 * 11 ** 300 % 13 ** 800"] * 20)
    started = time.perf_counter()
    value = safe_eval(text)
    assert time.perf_counter() - started < TIME_BOUND
    assert value == eval(text)  # noqa: S307 - a literal arithmetic expression written above


def test_format_number():
    assert format_number(3) == "3"
    assert format_number(0.1) == "0.1"
    assert format_number(-2.5e-9) == "-2.5e-09"


def _check_outcome(text):
    started = time.perf_counter()
    try:
        value = safe_eval(text)
    except EvalError as exc:
        assert str(exc), "an EvalError must carry a message"
        value = None
    elapsed = time.perf_counter() - started
    assert elapsed < TIME_BOUND, f"{text!r} took {elapsed:.3f} s"
    if value is not None:
        assert type(value) in (int, float)
        assert type(value) is int or math.isfinite(value)
    return value


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from("0123456789.+-*/%()eE_jx ,'[]<>=!~&|^@:;\\\"\n\t") |
               st.characters(), max_size=200))
def test_fuzz_random_text_never_crashes(text):
    _check_outcome(text)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes_never_crash(data):
    _check_outcome(data)


_numbers = st.one_of(
    st.integers(min_value=-10 ** 30, max_value=10 ** 30).map(str),
    st.integers(min_value=0, max_value=3000).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=64).map(repr),
)


def _combine(children):
    binary = st.tuples(children, st.sampled_from(["+", "-", "*", "/", "//", "%", "**"]), children)
    return st.one_of(
        binary.map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        binary.map(lambda t: f"{t[0]}{t[1]}{t[2]}"),
        st.tuples(st.sampled_from(["-", "+"]), children).map(lambda t: f"{t[0]}({t[1]})"),
    )


_expressions = st.recursive(_numbers, _combine, max_leaves=40)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_expressions)
def test_fuzz_expression_trees_agree_with_python_or_refuse(text):
    value = _check_outcome(text)
    if value is not None:
        # The text is generated arithmetic only, and safe_eval accepted it, so it
        # is bounded: Python's own evaluation is safe here and must agree.
        expected = eval(text, {"__builtins__": {}})  # noqa: S307
        if isinstance(expected, float) or isinstance(value, float):
            assert value == expected or math.isclose(value, expected, rel_tol=1e-12)
        else:
            assert value == expected
