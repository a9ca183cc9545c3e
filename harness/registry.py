"""Name -> class registries for methods and tasks.

Built-in methods and tasks register with the ``@METHODS.register("name")`` /
``@TASKS.register("name")`` decorators when their packages are imported. External packages add
methods through the entry-point group ``tdabench.methods``: each entry point names a class (or a
module whose import registers classes), loaded the first time the registry is listed.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists the registered names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str, builtin_module: str, entry_point_group: str | None = None):
        self.kind = kind
        self._builtin_module = builtin_module
        self._group = entry_point_group
        self._items: dict[str, type[T]] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorator(cls: type[T]) -> type[T]:
            existing = self._items.get(name)
            if existing is not None and existing is not cls:
                raise ValueError(f"{self.kind} {name!r} is registered twice ({existing} and {cls})")
            cls.name = name
            self._items[name] = cls
            return cls

        return decorator

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        importlib.import_module(self._builtin_module)
        if self._group is None:
            return
        for ep in entry_points(group=self._group):
            obj = ep.load()
            if isinstance(obj, type) and ep.name not in self._items:
                self.register(ep.name)(obj)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def get(self, name: str) -> type[T]:
        self._load()
        if name not in self._items:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; registered {self.kind}s: {', '.join(self.names())}"
            )
        return self._items[name]


METHODS: Registry = Registry("method", "methods", "tdabench.methods")
TASKS: Registry = Registry("task", "tasks")
