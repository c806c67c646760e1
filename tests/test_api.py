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


def test_data_layer_does_not_import_models():
    for path in (ROOT / "peterrec" / "data").rglob("*.py"):
        for module in _imports(path):
            for banned in ("peterrec.backbones", "peterrec.tasks", "peterrec.layers", "peterrec.training", "peterrec.eval"):
                assert not module.startswith(banned), f"{path} imports {module}"
