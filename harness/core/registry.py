"""Name -> class registries for methods, tasks and metrics, filled from entry points.

Every method, task and metric, built-in or not, is a plugin: a class named by an entry point in the
group ``tdabench.methods``, ``tdabench.tasks`` or ``tdabench.metrics`` of some installed distribution (tdabench's own
pyproject.toml lists the built-ins). The registry loads the group the first time it is asked.
A plugin whose import fails is reported in one line and skipped, so it never breaks the other
methods; a plugin that claims a name already taken is refused with an error naming both.
"""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Generic, TypeVar

#: the config tree shipped with the harness (``tdabench/conf``: config.yaml, task/, sweep/)
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

T = TypeVar("T")
log = logging.getLogger(__name__)
OWN_DISTRIBUTION = "tdabench"


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists the registered names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def _origin(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{ep.value} (distribution {dist.name if dist is not None else 'unknown'})"


class Registry(Generic[T]):
    """The classes of one entry-point group, by entry-point name."""

    def __init__(self, kind: str, entry_point_group: str):
        self.kind = kind
        self.group = entry_point_group
        self._items: dict[str, type[T]] = {}
        self._origins: dict[str, str] = {}
        self._loaded = False
        #: one line per plugin that could not be loaded or was refused
        self.problems: list[str] = []

    def add(self, name: str, cls: type[T], origin: str = "added at run time") -> type[T]:
        """Register ``cls`` under ``name`` (tests and notebooks; installed plugins use entry points)."""
        self._load()
        if name in self._items and self._items[name] is not cls:
            raise ValueError(f"{self.kind} name {name!r} is taken by {self._origins[name]}; "
                             f"{origin} cannot register it again: rename one of them")
        self._put(name, cls, origin)
        return cls

    def _put(self, name: str, cls: type[T], origin: str) -> None:
        cls.name = name
        self._items[name] = cls
        self._origins[name] = origin

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        eps = list(entry_points(group=self.group))
        # tdabench's own entry points first: a plugin cannot take a built-in name
        eps.sort(key=lambda ep: (getattr(getattr(ep, "dist", None), "name", "") != OWN_DISTRIBUTION, ep.name))
        for ep in eps:
            origin = _origin(ep)
            if ep.name in self._origins:
                if self._origins[ep.name] != origin:  # the same entry point seen twice is harmless
                    self._refuse(f"{self.kind} {ep.name!r} from {origin} is refused: the name is taken by "
                                 f"{self._origins[ep.name]}; rename the plugin's entry point")
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break the other methods
                self._refuse(f"{self.kind} {ep.name!r} from {origin} could not be imported and is skipped "
                             f"({type(exc).__name__}: {exc})")
                continue
            if not isinstance(obj, type):
                self._refuse(f"{self.kind} {ep.name!r} from {origin} is not a class and is skipped")
                continue
            self._put(ep.name, obj, origin)

    def _refuse(self, line: str) -> None:
        self.problems.append(line)
        log.warning(line)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def get(self, name: str) -> type[T]:
        self._load()
        if name not in self._items:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; registered {self.kind}s: {', '.join(self.names())}")
        return self._items[name]

    def origin(self, name: str) -> str:
        self._load()
        return self._origins[name]


METHODS: Registry = Registry("method", "tdabench.methods")
TASKS: Registry = Registry("task", "tdabench.tasks")
METRICS: Registry = Registry("metric", "tdabench.metrics")
