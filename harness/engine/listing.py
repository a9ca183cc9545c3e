"""``tdabench --list``: the registered methods, tasks and metrics, one line each.

A method's line gives its name, the first sentence of its class docstring (else its module's),
what it needs from a task beyond a trained checkpoint, and the pip extra it needs, if any; a
task's or a metric's line gives its name and the first sentence of its class docstring (else its
module's). Below a method with a search space (``Method.search_space``), a second line gives what
``tune.trials`` searches: each parameter with its range and scale. Entry-point plugins are listed
like built-ins.
"""

from __future__ import annotations

import inspect
import re

from tdabench.harness.core.registry import METHODS, METRICS, TASKS
from tdabench.harness.plugin.space import describe, space_for

WIDTH = 100  # longest description shown


def _summary(cls, width: int | None = WIDTH) -> str:
    """First sentence of the class's own docstring, else of its module's (never a base class's),
    cut at ``width`` characters (None: whole)."""
    doc = cls.__dict__.get("__doc__") or getattr(inspect.getmodule(cls), "__doc__", None) or ""
    paragraph = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())
    sentence = re.sub(r"^``[\w-]+``: ", "", re.split(r"(?<=\S)\. (?=[A-Z])", paragraph)[0].rstrip("."))
    return sentence if width is None or len(sentence) <= width else sentence[:width - 3].rsplit(" ", 1)[0] + " ..."


def method_lines() -> list[str]:
    lines = []
    width = max(map(len, METHODS.names()), default=0)
    for name in METHODS.names():
        cls = METHODS.get(name)
        needs = sorted(set(getattr(cls, "requires", ()) or ()) - {"checkpoint"})  # every task has one
        extra = getattr(cls, "extra", None)
        notes = ", ".join([*(f"needs {n}" for n in needs), *([f"extra {extra}"] if extra else [])])
        lines.append(f"  {name:<{width}}  {_summary(cls)}" + (f" ({notes})" if notes else ""))
        space = space_for(cls)
        if space:
            lines.append(f"  {'':<{width}}    search space: "
                         + ", ".join(f"{k} {v}" for k, v in describe(space).items()))
    return lines


def name_lines(registry) -> list[str]:
    """One line per registered name of ``registry``: the name and its class's summary; below a task
    that redeclares a method's search space, a line per method with the dimensions it redeclares."""
    width = max(map(len, registry.names()), default=0)
    lines = []
    for name in registry.names():
        cls = registry.get(name)
        lines.append(f"  {name:<{width}}  {_summary(cls)}")
        for method, dims in (getattr(cls, "search_spaces", None) or {}).items():
            lines.append(f"  {'':<{width}}    {method}'s search space here: "
                         + ", ".join(f"{k} {v}" for k, v in describe(dims).items()))
    return lines


def print_listing() -> None:
    print(f"methods ({len(METHODS.names())}; choose with method=NAME):")
    print("\n".join(method_lines()))
    print(f"tasks ({len(TASKS.names())}; choose with task=NAME):")
    print("\n".join(name_lines(TASKS)))
    print(f"metrics ({len(METRICS.names())}; choose with metric=NAME or metric=NAME,NAME,...):")
    print("\n".join(name_lines(METRICS)))
