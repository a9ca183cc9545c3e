"""Write the documentation pages that would otherwise drift: docs/reference/methods.md,
docs/reference/tasks.md and docs/reference/configuration.md, from the registered methods and tasks
(entry points, plugins included) and conf/config.yaml with its comments.

    python docs/generate.py          # write the pages (``make docs`` runs this first)
    python docs/generate.py --check  # exit 1, naming the stale pages, when a page differs
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from omegaconf import OmegaConf

from tdabench.harness.core.registry import CONF_DIR, METHODS, TASKS
from tdabench.harness.engine.listing import _summary

OUT = Path(__file__).resolve().parent / "reference"
HEADER = "<!-- written by docs/generate.py from the registry and conf/; edit those, then run `make docs` -->\n\n"


def _value(v) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def _flat(node, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for key, value in node.items():
        if isinstance(value, dict):
            out += _flat(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def methods_page() -> str:
    names = METHODS.names()
    lines = [HEADER, "# Registered methods\n\n",
             f"{len(names)} methods. Set a parameter with `method.KEY=VALUE`; a task may change a default "
             "(see [Tasks](tasks.md)). The cost ladder lists the settings `frontier.level=i` selects, cheapest "
             "first.\n"]
    for name in names:
        cls = METHODS.get(name)
        lines.append(f"\n## {name}\n\n{_summary(cls)}.\n\n")
        needs = sorted(set(cls.requires) - {"checkpoint"})
        if needs:
            lines.append(f"Needs from the task: {', '.join(needs)}.\n\n")
        if cls.extra:
            lines.append(f"Needs the `{cls.extra}` extra: `pip install 'tdabench[{cls.extra}]'`.\n\n")
        lines.append("| parameter | default |\n|---|---|\n")
        lines += [f"| `{k}` | `{_value(v)}` |\n" for k, v in cls.defaults().items()]
        if cls.cost_ladder:
            rungs = "; ".join(f"{i}: " + ", ".join(f"{k}={v}" for k, v in rung.items())
                              for i, rung in enumerate(cls.cost_ladder))
            lines.append(f"\nCost ladder: {rungs}.\n")
    return "".join(lines)


def _task_config(name: str) -> dict:
    path = CONF_DIR / "task" / f"{name}.yaml"
    if path.exists():
        return OmegaConf.to_container(OmegaConf.load(path))
    return dict(TASKS.get(name).default_config)


def tasks_page() -> str:
    names = TASKS.names()
    lines = [HEADER, "# Registered tasks\n\n",
             f"{len(names)} tasks. Choose one with `task=NAME`; set a key with `task.KEY=VALUE`.\n"]
    for name in names:
        cfg = _task_config(name)
        defaults = cfg.pop("method_defaults", {}) or {}
        lines.append(f"\n## {name}\n\n{_summary(TASKS.get(name))}.\n\n| key | default |\n|---|---|\n")
        lines += [f"| `task.{k}` | `{_value(v)}` |\n" for k, v in _flat(cfg) if k != "name"]
        if defaults:
            lines.append("\nMethod defaults this task sets: "
                         + "; ".join(f"{m}: " + ", ".join(f"{k}={_value(v)}" for k, v in _flat(d))
                                     for m, d in defaults.items()) + ".\n")
    return "".join(lines)


def config_rows(text: str) -> list[tuple[str, str, str]]:
    """(dotted key, default as written, comment) for every leaf of config.yaml outside ``defaults``
    and ``hydra``; a comment continued on the following comment-only lines is joined."""
    rows, stack = [], []  # stack: (indent, key) of the open groups
    for line in text.splitlines():
        m = re.match(r"^( *)([\w]+):(.*)$", line)
        if m:
            indent, key, rest = len(m.group(1)), m.group(2), m.group(3)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            value, _, comment = rest.partition("#")
            if value.strip():
                rows.append([".".join([k for _, k in stack] + [key]), value.strip(), comment.strip()])
            else:
                stack.append((indent, key))
                if comment.strip():
                    rows.append([".".join(k for _, k in stack), "", comment.strip()])
        elif line.strip().startswith("#") and rows and line.startswith("  "):
            rows[-1][2] += " " + line.strip().lstrip("#").strip()
    return [tuple(r) for r in rows if not r[0].startswith(("defaults", "hydra"))]


def configuration_page() -> str:
    rows = config_rows((CONF_DIR / "config.yaml").read_text())
    loaded = {k for k, _ in _flat(OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml")))
              if not k.startswith(("defaults", "hydra"))}
    missing = loaded - {k for k, _, _ in rows}
    if missing:
        raise SystemExit(f"docs/generate.py: keys of conf/config.yaml not parsed: {', '.join(sorted(missing))}")
    lines = [HEADER, "# Configuration reference\n\n",
             "Every key of `conf/config.yaml` with its default and the comment beside it. Set one on the "
             "command line as `KEY=VALUE` (`gt.subsets=20`); the `task` and `method` groups are listed in "
             "[Tasks](tasks.md) and [Methods](methods.md).\n\n| key | default | meaning |\n|---|---|---|\n"]
    for key, value, comment in rows:
        cell = f"`{value}`" if value else "(group)"
        lines.append(f"| `{key}` | {cell.replace('|', '&#124;')} | {comment.replace('|', '&#124;')} |\n")
    return "".join(lines)


def main(argv: list[str]) -> int:
    pages = {"methods.md": methods_page(), "tasks.md": tasks_page(), "configuration.md": configuration_page()}
    if "--check" in argv:
        stale = [n for n, text in pages.items() if not (OUT / n).exists() or (OUT / n).read_text() != text]
        for name in stale:
            print(f"docs/reference/{name} is out of date: run `make docs`", file=sys.stderr)
        return 1 if stale else 0
    OUT.mkdir(exist_ok=True)
    for name, text in pages.items():
        (OUT / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
