"""``tdabench --list``: the registered methods and tasks, one line each.

A method's line gives its name, the first line of its class docstring and what it needs from a
task (and the pip extra it needs, if any); a task's line gives its name and the first line of
its class docstring. Entry-point plugins are listed like built-ins.
"""

from __future__ import annotations

import inspect

from harness.registry import METHODS, TASKS


def _summary(cls) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.strip().splitlines()[0].rstrip(".") if doc.strip() else ""


def method_lines() -> list[str]:
    lines = []
    width = max(map(len, METHODS.names()), default=0)
    for name in METHODS.names():
        cls = METHODS.get(name)
        needs = sorted(getattr(cls, "requires", ()) or ())
        extra = getattr(cls, "extra", None)
        notes = ", ".join([*(f"needs {n}" for n in needs), *([f"extra {extra}"] if extra else [])])
        lines.append(f"  {name:<{width}}  {_summary(cls)}" + (f" ({notes})" if notes else ""))
    return lines


def task_lines() -> list[str]:
    width = max(map(len, TASKS.names()), default=0)
    return [f"  {name:<{width}}  {_summary(TASKS.get(name))}" for name in TASKS.names()]


def print_listing() -> None:
    print(f"methods ({len(METHODS.names())}; choose with method=NAME):")
    print("\n".join(method_lines()))
    print(f"tasks ({len(TASKS.names())}; choose with task=NAME):")
    print("\n".join(task_lines()))
