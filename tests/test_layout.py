"""The house: imports read from the source of both packages form no cycle and run one way
(front end -> run -> library; inside cellfeat the decision sits below the models and their
evaluation), and the README's Layout section names every module."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cellfeat", "pipelines")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(f): f for pkg in PACKAGES for f in sorted((ROOT / pkg).rglob("*.py"))}


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (``from ..io import x`` in
    ``pipelines.run.stages`` -> ``pipelines.io``)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of both packages it imports, at the top or inside a function.

    Imports inside a module-level ``main`` are left out: ``main`` is a command-line entry
    point (``python -m ...``), run as ``__main__``, above every module. ``from pkg import
    name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``.
    """
    modules = _modules()
    graph = {}
    for name, f in modules.items():
        tree = ast.parse(f.read_text())
        body = [n for n in tree.body if not (isinstance(n, ast.FunctionDef) and n.name == "main")]
        deps = set()
        for node in (sub for top in body for sub in ast.walk(top)):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(name, f.name == "__init__.py", node)
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in modules else target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in modules} - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(mod, path):
        state[mod] = "open"
        for dep in sorted(graph.get(mod, ())):
            if state.get(dep) == "open":
                return [*path[path.index(dep):], dep]
            if dep not in state:
                found = visit(dep, [*path, dep])
                if found:
                    return found
        state[mod] = "done"
        return None

    for mod in sorted(graph):
        if mod not in state:
            found = visit(mod, [mod])
            if found:
                return found
    return None


def test_no_import_cycle_in_either_package():
    graph = import_graph()
    assert {"cellfeat.models.candidates", "cellfeat.decision", "pipelines.run.stages"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    """The check can fail: the two cycles of commit 45f3e90, as graphs."""
    assert find_cycle({"models": {"evaluation"}, "evaluation": {"models"}}) == \
        ["evaluation", "models", "evaluation"]
    assert find_cycle({"stages": {"report"}, "report": {"stability"},
                       "stability": {"stages"}}) is not None
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def _reaches(graph, start: str, prefix: str) -> bool:
    seen, stack = set(), [start]
    while stack:
        m = stack.pop()
        if m in seen:
            continue
        seen.add(m)
        if m != start and m.startswith(prefix):
            return True
        stack.extend(graph.get(m, ()))
    return False


@pytest.mark.parametrize("importer, forbidden", [
    ("cellfeat", "pipelines"),                    # the library knows nothing of the front end
    ("cellfeat.decision", "cellfeat.models"),     # the call sits below the models ...
    ("cellfeat.decision", "cellfeat.evaluation"),  # ... and below their evaluation
    ("cellfeat.models", "cellfeat.evaluation"),
    ("pipelines.report", "pipelines.run"),        # what a person reads never runs a stage
    ("pipelines.run", "pipelines.bench"),         # nothing depends on the measuring tools
    ("pipelines.report", "pipelines.bench"),
    ("pipelines.bundle", "pipelines.run"),
    ("pipelines.run.tasks", "pipelines.run.features"),   # the stage runs the tasks,
    ("pipelines.run.cluster", "pipelines.run.features"),  # not the other way round
])
def test_imports_run_one_way(importer, forbidden):
    graph = import_graph()
    for mod in (m for m in graph if m == importer or m.startswith(importer + ".")):
        direct = {d for d in graph[mod] if d == forbidden or d.startswith(forbidden + ".")}
        assert not direct, f"{mod} imports {sorted(direct)}"


def test_every_package_says_what_it_holds_and_may_import():
    for name, f in _modules().items():
        if f.name == "__init__.py" and name.count(".") >= 1 or name in PACKAGES:
            doc = ast.get_docstring(ast.parse(f.read_text())) or ""
            assert len(doc) > 80, f"{name} has no package docstring"
            if name.startswith("pipelines"):
                assert "import" in doc, f"{name}'s docstring does not say what it may import"


def test_readme_layout_names_every_module():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    missing = [name for name, f in _modules().items()
               if f.name not in ("__init__.py", "__main__.py") and
               f"{f.relative_to(ROOT).as_posix()}" not in section]
    assert not missing, f"README Layout does not list {missing}"


def test_no_source_file_is_ignored_by_git():
    """A `.gitignore` line `models/` once matched `cellfeat/models/` too: the package existed
    on the machine that wrote it and in no clone. Every module must be committable."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    files = [str(f.relative_to(ROOT)) for f in _modules().values()]
    files += [str(p.relative_to(ROOT)) for p in (ROOT / "pipelines").rglob("*.j2")]
    out = subprocess.run(["git", "check-ignore", "--no-index", *files], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.stdout.strip() == "", f"ignored by git: {out.stdout.split()}"
