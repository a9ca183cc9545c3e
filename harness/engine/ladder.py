"""Cost ladders: ``frontier.level=i`` runs a method at rung i of its ``cost_ladder``.

A method declares its cost knobs as ``Method.cost_ladder``, an ordered tuple of settings
(``{parameter: value}``), cheapest first. ``frontier.level`` (null by default) selects one rung;
its values replace the method's resolved parameters (the class's defaults and the task's
``method_defaults``), so the record's ``config.method`` holds the values actually used and each
rung has its own config hash and its own leaderboard row. ``frontier`` itself is left out of the
config hash: a rung that equals the defaults is the same run as one without a level.

Rule for explicit values: a parameter set on the command line (``method.draws=50``) or in a sweep
file is never overridden silently; if the selected rung sets that parameter too, the run is
refused (:class:`ConfigError`) naming both values. Parameters the rung does not set combine freely
with a level (``method.eps=3e-4 frontier.level=2``).

A method without a ladder runs at level 0 as at a null level (its one point on the frontier).
A level beyond a method's ladder (any level above 0 for a method without one) raises
:class:`LevelBeyondLadder`: a sweep skips that pairing with a one-line note and writes no record
(a single run is refused).
"""

from __future__ import annotations

from typing import Any, Iterable

from tdabench.harness.core.registry import METHODS, UnknownNameError
from tdabench.harness.core.settings import settings_of
from tdabench.harness.engine.config import ConfigError

#: the value a method parameter has in the composed config unless something set it explicitly
DEFAULT_PREFIX = "${tdabench.default:"


class LevelBeyondLadder(ConfigError):
    """``frontier.level`` is past the end of the method's cost ladder: nothing to run."""


def level_problem(level) -> str | None:
    """Why ``level`` is not a valid ``frontier.level``, or None."""
    if level is None or (isinstance(level, int) and not isinstance(level, bool) and level >= 0):
        return None
    return (f"frontier.level={level!r} must be null (the method's own settings) or an integer >= 0 "
            "(rung of the method's cost ladder, 0 = cheapest)")


def rung(method_cls, level: int) -> dict[str, Any]:
    """The parameters of rung ``level`` of ``method_cls.cost_ladder`` (level 0 of a method
    without a ladder: none, its defaults); raises :class:`LevelBeyondLadder` with a one-line note
    past its end."""
    ladder = tuple(getattr(method_cls, "cost_ladder", ()) or ()) or ({},)
    if level >= len(ladder):
        have = f"levels 0 to {len(ladder) - 1}" if len(ladder) > 1 else "no cost ladder (level 0 only)"
        raise LevelBeyondLadder([f"frontier.level={level}: method {method_cls.name} has {have}; "
                                 "nothing to run at this level"])
    return dict(ladder[level])


def explicit_keys(raw_method: dict) -> set[str]:
    """Parameters of an unresolved ``method`` config node that were set explicitly (on the
    command line or in a sweep file): those whose value is not the registry's default resolver."""
    return {k for k, v in raw_method.items()
            if k != "name" and not (isinstance(v, str) and v.startswith(DEFAULT_PREFIX))}


def conflicts(method_cls, level: int, explicit: Iterable[str], values: dict | None = None) -> list[str]:
    """One line per explicitly set parameter that rung ``level`` of ``method_cls`` also sets
    (an empty list past the ladder's end: that level is skipped anyway)."""
    try:
        settings = rung(method_cls, level)
    except LevelBeyondLadder:
        return []
    values = values or {}
    return [f"method.{k}{'=' + repr(values[k]) if k in values else ''} conflicts with "
            f"frontier.level={level}, whose rung of method {method_cls.name} sets {k}={settings[k]!r}; "
            f"drop method.{k} or frontier.level"
            for k in sorted(set(explicit) & set(settings))]


def apply_level(cfg: dict, explicit: Iterable[str] = ()) -> dict:
    """``cfg`` (a resolved config) with the rung ``frontier.level`` of its method's cost ladder
    applied to the method's parameters; ``cfg`` itself when the level is null. ``explicit``: the
    method parameters set explicitly (see :func:`explicit_keys`). Raises :class:`ConfigError` for
    a bad level or a conflict, :class:`LevelBeyondLadder` past the ladder's end. Idempotent."""
    s = settings_of(cfg)
    level = s.frontier.level
    problem = level_problem(level)
    if problem:
        raise ConfigError([problem])
    if level is None:
        return cfg
    try:
        method_cls = METHODS.get(s.method_name)
    except UnknownNameError:
        return cfg  # reported with the other problems of the config
    problems = conflicts(method_cls, level, explicit, s.method)
    if problems:
        raise ConfigError(problems)
    return {**cfg, "method": {**s.method, **rung(method_cls, level)}}


def ladder_problems(method_cls) -> list[str]:
    """Rungs of ``method_cls.cost_ladder`` that name a parameter the method lacks or hold a value
    its signature refuses (a check of the declaration, for tests and plugin authors)."""
    allowed = set(method_cls.parameters())
    problems = []
    for i, settings in enumerate(getattr(method_cls, "cost_ladder", ()) or ()):
        unknown = sorted(set(settings) - allowed)
        if unknown:
            problems.append(f"method {method_cls.name}: cost_ladder[{i}] sets {', '.join(unknown)}, "
                            f"not among its parameters ({', '.join(sorted(allowed))})")
        problems += [f"cost_ladder[{i}]: {p}" for p in
                     method_cls.parameter_problems({k: v for k, v in settings.items() if k in allowed})]
    return problems
