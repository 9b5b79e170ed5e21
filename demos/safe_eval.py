"""A safe arithmetic evaluator for the eval server: numbers and + - * / // % ** only.

Packet's demo ran ``eval`` on whatever a client sent (remote code execution).
This one parses the line with :mod:`ast` in ``'eval'`` mode and walks the tree
itself, accepting only:

* numeric literals (``int`` and ``float``; not bool, complex, strings...),
* binary ``+ - * / // % **``, unary ``+ -``, and parentheses.

Everything else (names, calls, attributes, subscripts, lambdas,
comprehensions, ``__import__('os')``...) raises :class:`EvalError` naming what
was refused.  Work is bounded before it is done, so no input can make the
evaluator slow or hungry: input length and node count are capped (nesting is
limited only by Python's parser, which refuses more than 200 levels of
parentheses; the walk here is iterative), an exponent is at most
``MAX_EXPONENT`` in magnitude, and an integer result (intermediate ones too) is at most ``MAX_INT_BITS`` bits (about
``MAX_INT_DIGITS`` decimal digits): a product or power that would exceed it is
refused *before* it is computed.  Floats must stay finite.

    >>> safe_eval("2 * (3 + 4) ** 2")
    98
    >>> try:
    ...     safe_eval("__import__('os')")
    ... except EvalError as exc:
    ...     print(exc)
    function calls are not allowed (only numbers, + - * / // % ** and parentheses)
"""
from __future__ import annotations

import ast
import math
import operator
from typing import Callable, Dict, List, Tuple, Type, Union

__all__ = ["EvalError", "safe_eval", "format_number", "MAX_INPUT_LENGTH", "MAX_NODES",
           "MAX_EXPONENT", "MAX_INT_DIGITS", "MAX_INT_BITS"]

Number = Union[int, float]

#: Longest accepted input, in characters.  A line of arithmetic a person types
#: is far shorter; the cap bounds parse time and tree size.
MAX_INPUT_LENGTH = 1000
#: Most AST nodes accepted.  Input can reach about one node per character
#: ("1+1+1..." or "-1*-1..."), so this is the binding cap on tree size.
MAX_NODES = 500
#: Largest exponent magnitude for ``**``.
MAX_EXPONENT = 1000
#: Largest integer result, in decimal digits (and in bits: 1000 * log2(10)).
#: Multiplying two such numbers takes microseconds, so no chain of operations
#: on bounded operands can take long (measured in tests/test_safe_eval.py).
MAX_INT_DIGITS = 1000
MAX_INT_BITS = math.ceil(MAX_INT_DIGITS * math.log2(10))  # 3322


class EvalError(ValueError):
    """The expression was refused or could not be evaluated; the message says why."""


def _div(a: Number, b: Number) -> Number:
    return a / b


_BINOPS: Dict[Type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: _div,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARYOPS: Dict[Type[ast.unaryop], Callable[[Number], Number]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}

# What a refused node is called in the error message.
_REFUSED = {
    ast.Name: "names are", ast.Call: "function calls are", ast.Attribute: "attribute access is",
    ast.Subscript: "subscripts are", ast.Lambda: "lambdas are", ast.ListComp: "comprehensions are",
    ast.SetComp: "comprehensions are", ast.DictComp: "comprehensions are",
    ast.GeneratorExp: "comprehensions are", ast.Compare: "comparisons are",
    ast.BoolOp: "boolean operators are", ast.IfExp: "conditional expressions are",
    ast.List: "lists are", ast.Tuple: "tuples are", ast.Dict: "dicts are", ast.Set: "sets are",
    ast.JoinedStr: "strings are", ast.NamedExpr: "assignments are",
    ast.Starred: "starred expressions are", ast.Await: "await is", ast.Yield: "yield is",
    ast.YieldFrom: "yield is", ast.Slice: "slices are",
}


def safe_eval(text: Union[str, bytes]) -> Number:
    """Evaluate an arithmetic expression; return an int or a float, or raise EvalError."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise EvalError("input is not valid UTF-8") from None
    if not isinstance(text, str):
        raise EvalError(f"expected a string, got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise EvalError("empty expression")
    if len(text) > MAX_INPUT_LENGTH:
        raise EvalError(f"expression too long: {len(text)} characters (limit {MAX_INPUT_LENGTH})")
    tree = _parse(text)
    _check_size(tree)
    return _finite(_eval(tree.body))


def format_number(value: Number) -> str:
    """How the eval server writes a result: ints in full, floats with repr."""
    return str(value) if isinstance(value, int) else repr(value)


def _parse(text: str) -> ast.Expression:
    if "\x00" in text:
        raise EvalError("syntax error: NUL character in input")
    try:
        return ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise EvalError(f"syntax error: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError) as exc:
        # The parser gives up on very deep nesting ("too many nested parentheses"
        # is a SyntaxError, other cases raise these).
        raise EvalError(f"expression cannot be parsed: {type(exc).__name__}") from None


def _check_size(tree: ast.Expression) -> None:
    # Operator nodes (ast.Add...) are not counted: one node per operand or operation.
    expressions = (node for node in ast.walk(tree.body) if isinstance(node, ast.expr))
    for count, _node in enumerate(expressions, 1):
        if count > MAX_NODES:
            raise EvalError(f"expression too complex: more than {MAX_NODES} syntax nodes")


def _eval(root: ast.AST) -> Number:
    """Post-order walk with an explicit stack: "1+1+...+1" is a tree as deep as it
    is long, so recursion would tie the nesting allowed to Python's stack."""
    values: List[Number] = []
    stack: List[Tuple[ast.AST, bool]] = [(root, False)]
    while stack:
        node, operands_done = stack.pop()
        if isinstance(node, ast.Constant):
            values.append(_constant(node.value))
        elif isinstance(node, ast.BinOp):
            if operands_done:
                right = values.pop()
                values.append(_binop(type(node.op), _BINOPS[type(node.op)], values.pop(), right))
            elif type(node.op) not in _BINOPS:
                raise EvalError(f"operator {type(node.op).__name__} is not allowed "
                                f"(only + - * / // % **)")
            else:
                stack += [(node, True), (node.right, False), (node.left, False)]
        elif isinstance(node, ast.UnaryOp):
            if operands_done:
                values.append(_UNARYOPS[type(node.op)](values.pop()))
            elif type(node.op) not in _UNARYOPS:
                raise EvalError(f"unary operator {type(node.op).__name__} is not allowed (only + -)")
            else:
                stack += [(node, True), (node.operand, False)]
        else:
            what = _REFUSED.get(type(node), f"{type(node).__name__} nodes are")
            raise EvalError(f"{what} not allowed (only numbers, + - * / // % ** and parentheses)")
    return values.pop()


def _constant(value: object) -> Number:
    if type(value) is int:
        if value.bit_length() > MAX_INT_BITS:
            raise EvalError(f"number too large (limit about {MAX_INT_DIGITS} digits)")
        return value
    if type(value) is float:
        if not math.isfinite(value):
            raise EvalError("number too large for a float")
        return value
    what = {str: "strings are", bytes: "bytes are", bool: "booleans are",
            complex: "complex numbers are", type(None): "None is",
            type(Ellipsis): "Ellipsis is"}.get(type(value), f"{type(value).__name__} values are")
    raise EvalError(f"{what} not allowed, only numbers")


def _binop(kind: type, op: Callable[[Number, Number], Number], a: Number, b: Number) -> Number:
    if kind is ast.Pow:
        _check_power(a, b)
    elif kind is ast.Mult and type(a) is int and type(b) is int:
        if a.bit_length() + b.bit_length() > MAX_INT_BITS + 1:
            raise _too_large()
    try:
        result = op(a, b)
    except ZeroDivisionError:
        raise EvalError("division by zero") from None
    except OverflowError:
        raise EvalError("result too large for a float") from None
    return _finite(result)


def _check_power(base: Number, exponent: Number) -> None:
    if abs(exponent) > MAX_EXPONENT:
        raise EvalError(f"exponent too large: |{format_number(exponent)}| > {MAX_EXPONENT}")
    if type(base) is int and type(exponent) is int and exponent > 0 and abs(base) > 1:
        # The result has between (bits-1)*e+1 and bits*e bits: refuse before computing.
        if (base.bit_length() - 1) * exponent + 1 > MAX_INT_BITS:
            raise _too_large()
    if base < 0 and type(exponent) is float and not exponent.is_integer():
        raise EvalError("a negative number to a fractional power is not a real number")


def _finite(value: object) -> Number:
    if type(value) is int:
        if value.bit_length() > MAX_INT_BITS:
            raise _too_large()
        return value
    if type(value) is float:
        if not math.isfinite(value):
            raise EvalError("result too large for a float")
        return value
    raise EvalError(f"result is not a real number ({type(value).__name__})")


def _too_large() -> EvalError:
    return EvalError(f"result too large (limit about {MAX_INT_DIGITS} digits)")


def main(argv: Union[List[str], None] = None) -> int:
    """``python -m demos.safe_eval EXPR...``: print each result (or the error), like the server."""
    import argparse
    import sys
    p = argparse.ArgumentParser(prog="python -m demos.safe_eval",
                                description="Evaluate arithmetic safely (numbers and "
                                            "+ - * / // % ** and parentheses only), as the eval "
                                            "server does.")
    p.add_argument("expressions", nargs="+", metavar="EXPR", help='e.g. "1+2*3"')
    args = p.parse_args(argv)
    status = 0
    for text in args.expressions:
        try:
            print(f"= {format_number(safe_eval(text))}")
        except EvalError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
