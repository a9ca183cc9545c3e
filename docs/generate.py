"""Write the documentation pages that would otherwise drift: docs/reference/methods.md,
docs/reference/tasks.md and docs/reference/configuration.md, from the registered methods and tasks
(entry points, plugins included) and conf/config.yaml with its comments, and the sections of
results READMEs that docs/results.md copies (between its ``<!-- from ... -->`` lines).

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
from tdabench.harness.plugin.space import describe

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
OUT = DOCS / "reference"
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
        lines.append(f"\n## {name}\n\n{_summary(cls, None)}.\n\n")
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
        space = getattr(cls, "search_space", None) or {}
        if space:
            lines.append("\nSearch space (`tune.trials`): "
                         + ", ".join(f"`{k}` {v}" for k, v in describe(space).items()) + ".\n")
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
        lines.append(f"\n## {name}\n\n{_summary(TASKS.get(name), None)}.\n\n| key | default |\n|---|---|\n")
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


#: a section of a results README copied into a page, between these two lines
INCLUDED = re.compile(r"(<!-- from (\S+) section (\w+): written by docs/generate.py, edit it there -->\n)"
                      r".*?(<!-- end of \2 section \3 -->)", re.S)


def readme_section(path: str, name: str) -> str:
    """The text of ``path`` between its ``[start:name]`` and ``[end:name]`` markers."""
    text = (ROOT / path).read_text()
    start = re.search(rf"^.*\[start:{name}\].*\n", text, re.M)
    end = re.search(rf"^.*\[end:{name}\].*$", text, re.M)
    if not start or not end:
        raise SystemExit(f"docs/generate.py: {path} has no section {name}")
    return text[start.end():end.start()]


def with_sections(page: Path) -> str:
    """``page`` with every included section (:data:`INCLUDED`) copied anew from its README, so the
    page reads whole on a forge as in the built site."""
    return INCLUDED.sub(lambda m: m.group(1) + readme_section(m.group(2), m.group(3)) + m.group(4),
                        page.read_text())


def main(argv: list[str]) -> int:
    pages = {OUT / "methods.md": methods_page(), OUT / "tasks.md": tasks_page(),
             OUT / "configuration.md": configuration_page()}
    pages[DOCS / "results.md"] = with_sections(DOCS / "results.md")
    if "--check" in argv:
        stale = [p for p, text in pages.items() if not p.exists() or p.read_text() != text]
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run `make docs`", file=sys.stderr)
        return 1 if stale else 0
    OUT.mkdir(exist_ok=True)
    for path, text in pages.items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
