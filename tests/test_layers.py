"""The house rules, read from the source: the rooms of harness/ import in one direction, the plugin
folders never import each other and see of harness/ only the plugin contract (and core), no module
is over 450 lines, and methods see a task only through the AttributionTask protocol."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tdabench.harness.plugin.attribution_task import AttributionTask

ROOT = Path(__file__).resolve().parent.parent
#: top-level folders installed as tdabench.<name>; metrics/ takes part once it exists
PLUGINS = ("methods", "tasks", "metrics")
FOLDERS = ("harness", *PLUGINS)
ROOMS = ("core", "plugin", "engine", "read", "views", "share")
#: which rooms (and folders) each room of harness/ may import
ALLOWED = {"core": {"core"}, "read": {"core", "read"}, "plugin": {"core", "read", "plugin"},
           "engine": {"core", "read", "plugin", "engine"}, "views": set(ROOMS),
           "share": {"core", "read", "plugin", "engine", "share"}}
#: the only rooms of harness/ that methods/, tasks/ and metrics/ may import: the plugin contract
PLUGIN_ROOMS = {"core", "plugin"}
MAX_LINES = 450


def sources() -> list[Path]:
    return sorted(p for f in FOLDERS if (ROOT / f).is_dir() for p in (ROOT / f).rglob("*.py"))


def imported(path: Path, root: Path = ROOT) -> list[tuple[int, list[str]]]:
    """(line, dotted name as parts without ``tdabench``) of every import of a project module in
    ``path`` (absolute or relative), including imports inside functions."""
    here = list(path.relative_to(root).with_suffix("").parts)
    package = here if path.name == "__init__.py" else here[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name.split(".") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (node.module or "").split(".") if node.module else []
            if node.level:
                base = package[: len(package) - (node.level - 1)] + base
            names = [base + [a.name] for a in node.names]
        else:
            continue
        for n in names:
            n = n[1:] if n[:1] == ["tdabench"] else n
            if n and n[0] in FOLDERS:
                out.append((node.lineno, n))
    return out


def room_problems(path: Path, root: Path = ROOT) -> list[str]:
    """Imports of ``path`` that break a rule of the house (one line each)."""
    rel = path.relative_to(root)
    folder = rel.parts[0]
    room = rel.parts[1] if folder == "harness" and len(rel.parts) > 2 else None
    problems = []
    for line, name in imported(path, root):
        where = f"{rel}:{line} imports {'.'.join(name)}"
        if folder == "harness" and name[0] in PLUGINS:
            problems.append(f"{where}: harness/ finds plugins through entry points, never by name")
        elif folder in PLUGINS and name[0] in PLUGINS and name[0] != folder:
            problems.append(f"{where}: {folder}/ and {name[0]}/ never import each other")
        elif folder in PLUGINS and name[:1] == ["harness"] and (len(name) < 2 or name[1] not in PLUGIN_ROOMS):
            problems.append(f"{where}: {folder}/ imports from harness only the plugin contract "
                            f"(tdabench.harness.plugin) and core")
        elif room is not None and name[0] == "harness" and len(name) > 1 and name[1] in ROOMS \
                and name[1] not in ALLOWED[room]:
            problems.append(f"{where}: harness/{room} may import only {', '.join(sorted(ALLOWED[room]))}")
    return problems


def test_rooms_import_in_one_direction():
    problems = [p for path in sources() for p in room_problems(path)]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_each_rule(tmp_path):
    """Each rule, broken once in a scratch tree shaped like the project, is reported; allowed
    imports are not."""
    files = {"harness/read/a.py": "from tdabench.harness.engine.run import run\n",
             "harness/core/b.py": "from ..read import record\n",
             "harness/engine/c.py": "def f():\n    import tdabench.harness.views.insight\n",
             "harness/views/d.py": "from tdabench.methods.bif import BIF\n",
             "methods/e.py": "from tdabench.tasks.digits import DigitsMLP\n",
             "tasks/f.py": "from tdabench.metrics import lds\n",
             "harness/plugin/g.py": "from tdabench.harness.engine.run import run\n",
             "metrics/h.py": "from tdabench.harness.engine.cli import main\n",
             "harness/views/fine.py": "from tdabench.harness.engine.run import run\nfrom ..read import record\n",
             "methods/fine.py": "from tdabench.harness.plugin.method import Method\nfrom .gradients import x\n"
                                "from tdabench.harness.plugin import Float\nfrom tdabench.harness.core import logs\n",
             "harness/engine/fine.py": "from tdabench.harness.plugin.task import Task\n"}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    found = {rel: room_problems(tmp_path / rel, tmp_path) for rel in files}
    assert all(len(v) == 1 for rel, v in found.items() if "fine" not in rel), found
    assert not any(v for rel, v in found.items() if "fine" in rel), found


def test_no_module_over_the_line_limit():
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in sources()
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"split these by job (at most {MAX_LINES} lines): " + "; ".join(long)


def protocol_members() -> set[str]:
    return set(AttributionTask.__annotations__) | {n for n in vars(AttributionTask) if not n.startswith("_")}


def test_methods_use_only_the_attribution_task_protocol():
    """Every ``task.<member>`` in methods/ is a member of AttributionTask (so no method reads a
    task's config, cache folder or fingerprint)."""
    members = protocol_members()
    assert {"cache_path", "checkpoint", "train_split", "per_example_loss"} <= members
    assert not {"cfg", "cache_dir", "fingerprint", "models", "fit_many"} & members
    used = []
    for path in sorted((ROOT / "methods").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "task":
                if node.attr not in members:
                    used.append(f"{path.relative_to(ROOT)}:{node.lineno}: task.{node.attr}")
    assert not used, "not in AttributionTask: " + "; ".join(used)


@pytest.mark.parametrize("name", ["digits_mlp", "text_neox", "pythia_scaling", "cifar10_resnet9"])
def test_every_builtin_task_is_an_attribution_task(name):
    from tdabench.harness.core.registry import TASKS

    cls = TASKS.get(name)
    missing = sorted(m for m in protocol_members() if not hasattr(cls, m) and m not in _instance_attributes())
    assert not missing, f"{name} lacks {missing}"


def _instance_attributes() -> set[str]:
    """Members that Task.__init__ sets on the instance."""
    init = ast.parse((ROOT / "harness/plugin/task.py").read_text())
    return {t.attr for node in ast.walk(init) if isinstance(node, ast.Assign) for t in node.targets
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}


def test_a_task_instance_satisfies_the_protocol_and_keys_method_caches(small_digits, tmp_path):
    assert isinstance(small_digits, AttributionTask)
    a = small_digits.cache_path("curvature", "ekfac", {"model": "m1"})
    assert a == small_digits.cache_path("curvature", "ekfac", {"model": "m1"})
    assert a.parent == small_digits.cache_dir / "curvature" and a.name.startswith(f"{small_digits.name}-ekfac-")
    assert a != small_digits.cache_path("curvature", "ekfac", {"model": "m2"})
    other_seed = type(small_digits)(small_digits.cfg, seed=1, cache_dir=small_digits.cache_dir)
    assert a != other_seed.cache_path("curvature", "ekfac", {"model": "m1"})
    assert small_digits.scratch_dir().is_dir()


def test_benchmarks_import_the_installed_package_only():
    """Benchmark scripts import tdabench as installed: no sys.path edits, no imports of each other
    (a helper two scripts share belongs to the package)."""
    scripts = sorted((ROOT / "benchmarks").glob("*.py"))
    siblings = {p.stem for p in scripts} | {"benchmarks"}
    problems = []
    for path in scripts:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) \
                    and node.value.id == "sys":
                problems.append(f"{path.name}:{node.lineno}: sys.path")
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            problems += [f"{path.name}:{node.lineno}: imports {n}" for n in names if n.split(".")[0] in siblings]
    assert not problems, "; ".join(problems)


def module_of(name: list[str], root: Path = ROOT) -> str | None:
    """The project module (dotted, without ``tdabench``) that an imported name lives in: the longest
    prefix of ``name`` that is a module file or a package."""
    for k in range(len(name), 0, -1):
        base = root.joinpath(*name[:k])
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return ".".join(name[:k])
    return None


def import_cycles(paths: list[Path], root: Path = ROOT) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (imports inside
    functions included: a cycle there is still two modules that cannot be understood apart);
    a package's ``__init__`` re-exporting its own modules is not a cycle of theirs."""
    graph: dict[str, set[str]] = {}
    for path in paths:
        rel = path.relative_to(root).with_suffix("")
        me = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        targets = {module_of(n, root) for _, n in imported(path, root)}
        graph[me] = {t for t in targets if t and t != me and not (rel.name == "__init__" and t.startswith(me + "."))}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles():
    assert import_cycles(sources()) == []


def test_the_cycle_finder_sees_imports_inside_functions(tmp_path):
    pkg = tmp_path / "harness" / "read"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from tdabench.harness.read.a import f\n")
    (pkg / "a.py").write_text("from tdabench.harness.read.b import g\n\ndef f():\n    return g()\n")
    (pkg / "b.py").write_text("def g():\n    from tdabench.harness.read.a import f\n    return f\n")
    (pkg / "c.py").write_text("from tdabench.harness.read import a\n")
    files = sorted(tmp_path.rglob("*.py"))
    assert import_cycles(files, tmp_path) == [["harness.read.a", "harness.read.b"]]
