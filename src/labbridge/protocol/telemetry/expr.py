"""Safe evaluation of dashboard conditional tests (spec pychron.md §14.2, ADR 0034).

Pychron writes a conditional as a Python expression over ``x`` (the sampled value), such as
``x>10`` or ``x<1e-8 or x>5e-6``, and evaluates it with ``eval``. A configuration file must
not be able to run code, so labbridge parses the expression once with :mod:`ast` and accepts
only: numbers, ``x``, ``True``/``False``, comparisons (chained too), ``and``/``or``/``not``,
``+ - * / // % **``, unary ``-``/``+``, and the functions ``abs``, ``min``, ``max``, ``round``.
Everything else is refused when the file is read, with the offending part named.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import Any, Final

from labbridge.protocol.base import ProtocolError, Side


def _safe_pow(a: Any, b: Any) -> Any:
    # ``9**9**9`` would keep the CPU busy for minutes: exponents are bounded, results float.
    if abs(b) > 1000:
        raise ValueError("exponent too large")
    return float(a) ** b


_BIN: Final[dict[type[ast.operator], Callable[[Any, Any], Any]]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: _safe_pow,
}
_CMP: Final[dict[type[ast.cmpop], Callable[[Any, Any], Any]]] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}
_FUNCS: Final[dict[str, Callable[..., Any]]] = {"abs": abs, "min": min, "max": max,
                                                "round": round}
#: Longest accepted test string; a conditional is a short formula.
MAX_TEST: Final = 500
VARIABLE: Final = "x"


class ExpressionError(ProtocolError):
    """A conditional test uses something the safe evaluator does not allow."""

    kind = "bad_expression"

    def __init__(self, message: str) -> None:
        super().__init__(message, side=Side.OURS)


def _check(node: ast.AST, text: str) -> None:
    def bad(what: str) -> ExpressionError:
        return ExpressionError(f"{what} is not allowed in a conditional test: {text!r}")

    if isinstance(node, ast.Expression):
        _check(node.body, text)
    elif isinstance(node, ast.Constant):
        if not isinstance(node.value, bool | int | float):
            raise bad(f"the constant {node.value!r}")
    elif isinstance(node, ast.Name):
        if node.id not in (VARIABLE, "True", "False"):
            raise bad(f"the name {node.id!r} (use {VARIABLE!r} for the value)")
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BIN:
            raise bad(f"the operator {type(node.op).__name__}")
        _check(node.left, text)
        _check(node.right, text)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, ast.USub | ast.UAdd | ast.Not):
            raise bad(f"the operator {type(node.op).__name__}")
        _check(node.operand, text)
    elif isinstance(node, ast.BoolOp):
        for v in node.values:
            _check(v, text)
    elif isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in _CMP:
                raise bad(f"the comparison {type(op).__name__}")
        _check(node.left, text)
        for c in node.comparators:
            _check(c, text)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS or node.keywords:
            raise bad("this function call")
        for a in node.args:
            _check(a, text)
    else:
        raise bad(type(node).__name__)


def _eval(node: ast.AST, x: float) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return x if node.id == VARIABLE else node.id == "True"
    if isinstance(node, ast.BinOp):
        return _BIN[type(node.op)](_eval(node.left, x), _eval(node.right, x))
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, x)
        if isinstance(node.op, ast.Not):
            return not v
        return -v if isinstance(node.op, ast.USub) else +v
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            result: Any = True
            for v_node in node.values:
                result = _eval(v_node, x)
                if not result:
                    return result
            return result
        result = False
        for v_node in node.values:
            result = _eval(v_node, x)
            if result:
                return result
        return result
    if isinstance(node, ast.Compare):
        left = _eval(node.left, x)
        for op, comp in zip(node.ops, node.comparators, strict=True):
            right = _eval(comp, x)
            if not _CMP[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name)
        return _FUNCS[node.func.id](*(_eval(a, x) for a in node.args))
    raise ExpressionError(f"cannot evaluate {type(node).__name__}")  # pragma: no cover


def compile_test(text: str) -> Callable[[float], bool]:
    """Compile a conditional test into a function of the value; raise on anything unsafe."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("a conditional test must be a non-empty expression")
    if len(text) > MAX_TEST:
        raise ExpressionError(f"a conditional test is at most {MAX_TEST} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"syntax error in conditional test {text!r}: {exc.msg}") from None
    _check(tree, text)
    body = tree.body

    def test(x: float) -> bool:
        try:
            return bool(_eval(body, x))
        except (ArithmeticError, TypeError, ValueError):
            return False

    return test
