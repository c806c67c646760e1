"""The documented Python API resolves, and the import direction rules hold."""

import ast
import pathlib

import peterrec

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_public_names_resolve():
    for name in peterrec.__all__:
        assert getattr(peterrec, name) is not None


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_library_never_imports_pipelines_or_flags():
    for path in (ROOT / "peterrec").rglob("*.py"):
        for module in _imports(path):
            assert not module.startswith("pipelines"), f"{path} imports {module}"
            assert module != "absl.flags", f"{path} reads flags"


# The one-way import order (docs/adding_a_model.md): a module may import its own layer and the layers above it
# in this list, never one below. Function-level imports count. ``peterrec.recipes`` (the registry; its
# package module imports only errors and settings) sits at the bottom: the recipe modules under it are
# the top layer, found by the registry at run time.
LAYERS = (
    ("base", ("peterrec", "peterrec.features", "peterrec.errors", "peterrec.io", "peterrec.settings", "peterrec.search_space", "peterrec.recipes",
              "peterrec.augment")),
    ("data", ("peterrec.data",)),
    ("eval", ("peterrec.eval", "peterrec.losses")),
    ("layers", ("peterrec.layers",)),
    ("models", ("peterrec.backbones", "peterrec.models")),
    ("tasks", ("peterrec.tasks", "peterrec.augment.task", "peterrec.augment.embeddings", "peterrec.augment.counterfactual", "peterrec.augment.generate")),
    ("training", ("peterrec.distribute", "peterrec.training")),
    ("export", ("peterrec.export", "peterrec.patches", "peterrec.serving", "peterrec.inference", "peterrec.checkpoint_tf1",
                "peterrec.tf1")),
    ("experiment", ("peterrec.jobs", "peterrec.runner")),
    ("jobs", ("peterrec.pretraining", "peterrec.finetuning", "peterrec.evaluation", "peterrec.side_info",
              "peterrec.augment.casr", "peterrec.tuning")),
    ("recipes", ("peterrec.recipes.*",)),
)


def _module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _library():
    """``{module: path}`` of every library module."""
    return {_module_name(path): path for path in (ROOT / "peterrec").rglob("*.py")}


def _peterrec_imports(path, modules):
    """The library modules ``path`` imports at run time (``from pkg import sub`` counts as ``pkg.sub`` when that is a module)."""
    tree = ast.parse(path.read_text())
    for block in ast.walk(tree):  # imports under ``if TYPE_CHECKING:`` never run: not counted
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test):
            block.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module in modules:
            subs = [f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in modules]
            yield from subs or [node.module]


def _layer(module):
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            hit = module.startswith(prefix[:-1]) if prefix.endswith("*") else module == prefix or module.startswith(prefix + ".")
            if hit and (best is None or len(prefix) > best[1]):
                best = (rank, len(prefix))
    assert best is not None, f"{module} is in no layer of tests/test_api.py LAYERS"
    return best[0]


def test_imports_go_one_way():
    modules = _library()
    wrong = [
        f"{module} ({LAYERS[_layer(module)][0]}) imports {imported} ({LAYERS[_layer(imported)][0]})"
        for module, path in sorted(modules.items())
        for imported in _peterrec_imports(path, modules)
        if _layer(imported) > _layer(module)
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    modules = _library()
    graph = {module: set(_peterrec_imports(path, modules)) - {module} for module, path in modules.items()}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_no_library_module_over_400_lines():
    long = {str(path.relative_to(ROOT)): n for path in (ROOT / "peterrec").rglob("*.py") if (n := len(path.read_text().splitlines())) > 400}
    assert not long, f"split these modules (issue #15: none over ~400 lines): {long}"
