"""Whether a value read from a config or a JSON record fits a type annotation: one check for the
method parameters, the run settings and the run record."""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal, Union


def fits(value, tp, *, unknown: bool = False) -> bool:
    """Whether ``value`` has the type ``tp``: unions, ``Literal``, None, bool, int, finite float
    (ints count), str, lists and tuples (a list value fits either), dicts, and any other class by
    ``isinstance``. ``unknown`` is the answer for an annotation that is not a class (a type a config
    cannot express)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(fits(value, a, unknown=unknown) for a in args)
    if origin is Literal:
        return value in args
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if origin in (list, tuple) or tp in (list, tuple):
        items = args[:1] if origin is list or (len(args) == 2 and args[1] is Ellipsis) else ()
        return isinstance(value, (list, tuple)) and all(fits(v, items[0], unknown=unknown) for v in value
                                                        if items)
    if origin is dict:
        return isinstance(value, dict) and all(fits(k, args[0], unknown=unknown) and fits(v, args[1], unknown=unknown)
                                               for k, v in value.items())
    return isinstance(value, tp) if isinstance(tp, type) else unknown
