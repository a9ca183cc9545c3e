"""One type check for config values, method parameters and record fields."""

from typing import Any, Literal

from tdabench.harness.core.typecheck import fits


def test_scalars_unions_and_literals():
    assert fits(3, int) and not fits(True, int) and not fits(3.0, int)
    assert fits(3, float) and fits(0.5, float) and not fits(float("nan"), float) and not fits(float("inf"), float)
    assert fits(True, bool) and not fits(1, bool)
    assert fits(None, int | None) and fits(2, int | None) and not fits("2", int | None)
    assert fits("auto", Literal["auto"] | bool) and fits(False, Literal["auto"] | bool)
    assert not fits("x", Literal["auto"])
    assert fits(object(), Any)


def test_containers_check_their_items():
    assert fits([1, 2], list[int]) and not fits([1, "2"], list[int]) and fits([], list[int])
    assert fits((1, 2), tuple[int, ...]) and fits([1, 2], tuple) and not fits("ab", list[str])
    assert fits({"a": 1.0}, dict[str, float]) and not fits({"a": "b"}, dict[str, float])


def test_a_type_a_config_cannot_express_answers_unknown():
    from pathlib import Path

    assert not fits("x", Path) and fits(Path("x"), Path)
    assert fits("x", "SomeForwardRef", unknown=True) and not fits("x", "SomeForwardRef")
