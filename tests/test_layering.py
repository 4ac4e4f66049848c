"""The package's layering rules (docs/architecture.md), checked on the source with ``ast``.

* Commands are leaves: no tfsd module imports ``tfsd.{train,export,tflite,evaluate,predict,plot,
  demo}``.
* ``tfsd.training`` never imports ``tfsd.serving``; ``tfsd.layers``/``schedules``/``philox``
  import no other tfsd module but each other; ``tfsd.models`` and ``tfsd.data`` import neither
  training nor serving.
* No import cycle between tfsd modules.
* No module defines absl flags at import (statically: no ``DEFINE_*`` call outside a function;
  and in a fresh process: importing every tfsd module leaves ``absl.flags.FLAGS`` without a flag
  of tfsd's).
* No function-level import of a tfsd module (one would only be there to step around a cycle);
  function-level imports only for optional heavy dependencies, each with a comment.
* No file in ``tfsd/`` over about 500 lines.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "tfsd"
COMMANDS = {f"tfsd.{name}" for name in ("train", "export", "tflite", "evaluate", "predict",
                                        "plot", "prepare", "demo")}  # fmt: skip
# Third-party modules a function may import on first use (optional and slow to import).
LAZY_ALLOWED = ("matplotlib", "google.cloud", "google.api_core")
MAX_LINES = 500  # "about 500 lines": small modules, one concept each


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(node: ast.ImportFrom, module: str, is_package: bool, known: set) -> list[str]:
    """The tfsd modules an ``ImportFrom`` loads: ``from tfsd import data`` is ``tfsd.data``."""
    if node.level:
        base = module.split(".")
        base = base[: len(base) - node.level + (1 if is_package else 0)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.append(sub if sub in known else target)
    return [m for m in out if m.startswith("tfsd")]


class Imports:
    """Every import statement of every tfsd module, with whether it is at module level."""

    def __init__(self):
        self.modules = _modules()
        known = set(self.modules)
        self.edges: dict[str, set[str]] = {m: set() for m in known}
        self.lazy: list[tuple[str, int, str, bool]] = []  # module, line, imported, commented
        self.define_at_import: list[tuple[str, int]] = []
        for module, path in self.modules.items():
            source = path.read_text()
            lines = source.splitlines()
            tree = ast.parse(source)
            is_package = path.name == "__init__.py"
            for node, in_function in _walk(tree):
                if isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    targets = _resolve(node, module, is_package, known) or [node.module or ""]
                elif isinstance(node, ast.Call) and not in_function:
                    name = ast.unparse(node.func)
                    if name.split(".")[-1].startswith("DEFINE"):
                        self.define_at_import.append((module, node.lineno))
                    continue
                else:
                    continue
                for target in targets:
                    if target.startswith("tfsd"):
                        # `import tfsd.x.y` loads tfsd.x.y; edges go to the deepest known module.
                        while target not in known and "." in target:
                            target = target.rsplit(".", 1)[0]
                        if target != module:
                            self.edges[module].add(target)
                    if in_function:
                        here = lines[node.lineno - 1]
                        above = lines[node.lineno - 2] if node.lineno > 1 else ""
                        commented = "#" in here or above.strip().startswith("#")
                        self.lazy.append((module, node.lineno, target, commented))


def _walk(tree: ast.AST):
    """(node, inside a function or class body) for every node."""
    stack = [(tree, False)]
    while stack:
        node, inside = stack.pop()
        yield node, inside
        nested = inside or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        stack.extend((child, nested) for child in ast.iter_child_nodes(node))


@pytest.fixture(scope="module")
def imports() -> Imports:
    # No time bound here: timings belong in benchmarks, and this one failed under load (2.3 s).
    return Imports()


def test_the_walk_sees_the_package(imports):
    # A walk that found nothing would pass every rule below.
    assert {"tfsd.training.loop", "tfsd.serving.saved_model", "tfsd.train"} <= set(imports.modules)
    assert "tfsd.training.run_dir" in imports.edges["tfsd.training.loop"]
    assert "tfsd.training.loop" in imports.edges["tfsd.train"]


def test_commands_are_leaves(imports):
    bad = [(m, t) for m, targets in imports.edges.items() for t in targets if t in COMMANDS]
    assert bad == []


@pytest.mark.parametrize(
    "lower, forbidden",
    [
        ("tfsd.training", "tfsd.serving"),
        ("tfsd.models", "tfsd.training"),
        ("tfsd.models", "tfsd.serving"),
        ("tfsd.models", "tfsd.data"),
        ("tfsd.data", "tfsd.training"),
        ("tfsd.data", "tfsd.serving"),
        ("tfsd.data", "tfsd.models"),
        ("tfsd.layers", "tfsd.models"),
        ("tfsd.schedules", "tfsd."),
        ("tfsd.philox", "tfsd."),
    ],
)
def test_lower_layers_never_import_higher_ones(imports, lower, forbidden):
    bad = [
        (m, t)
        for m, targets in imports.edges.items()
        if m == lower or m.startswith(lower + ".")
        for t in targets
        if t == forbidden or t.startswith(forbidden if forbidden.endswith(".") else forbidden + ".")
    ]
    assert bad == []


def test_no_import_cycle(imports):
    edges = imports.edges
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    # Every module was walked to the end without meeting itself on the stack.
    assert set(state) >= set(edges) and set(state.values()) == {2}


def test_the_cycle_check_can_fail(imports):
    imports.edges["tfsd.layers"].add("tfsd.training.loop")  # a made-up upward import
    try:
        with pytest.raises(AssertionError, match="import cycle"):
            test_no_import_cycle(imports)
    finally:
        imports.edges["tfsd.layers"].discard("tfsd.training.loop")


def test_no_function_level_import_of_tfsd_and_lazy_imports_are_commented(imports):
    assert [(m, line) for m, line, t, _ in imports.lazy if t.startswith("tfsd")] == []
    unexplained = [
        (m, line, t)
        for m, line, t, commented in imports.lazy
        if not t.startswith(LAZY_ALLOWED) or not commented
    ]
    assert unexplained == []


def test_no_flags_defined_at_import_statically(imports):
    assert imports.define_at_import == []


def test_importing_every_module_defines_no_flag():
    """In a fresh process (flags are process-wide): import all of tfsd, list FLAGS' modules."""
    code = (
        "import importlib, sys\n"
        "from absl import flags\n"
        "for m in sys.argv[1:]:\n"
        "    importlib.import_module(m)\n"
        "print(sorted({f.name for f in flags.FLAGS.flags_by_module_dict().get('tfsd', [])}))\n"
        "print(sorted(m for m in flags.FLAGS.flags_by_module_dict() if 'tfsd' in m))\n"
        "print(sorted(n for n in flags.FLAGS if n in ('config', 'model_dir', 'data_dir')))\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", code, *_modules()],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:3] == ["[]", "[]", "[]"], out.stdout


def test_no_file_over_about_500_lines(imports):
    long = {
        m: n
        for m, p in imports.modules.items()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
