"""The layers use lrnn.ops only through its public surface: every import of lrnn.ops in lrnn/layers is
``from lrnn.ops import <names in lrnn.ops.__all__>`` (no submodules such as ``lrnn.ops._chunking``)."""

from __future__ import annotations

import ast
from pathlib import Path

import lrnn.layers
import lrnn.ops


def ops_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import of lrnn.ops or one of its submodules in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lrnn.ops"):
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, []) for alias in node.names if alias.name.startswith("lrnn.ops"))
    return found


def test_layers_import_only_public_ops_names():
    offenders = []
    layer_files = sorted(Path(lrnn.layers.__file__).parent.glob("*.py"))
    assert layer_files
    for path in layer_files:
        for line, module, names in ops_imports(path):
            private = [n for n in names if n not in lrnn.ops.__all__]
            if module != "lrnn.ops" or private or not names:
                offenders.append(f"{path.name}:{line}: from {module} import {', '.join(names) or '(module)'}")
    assert not offenders, "layers must import only names lrnn.ops exports:\n" + "\n".join(offenders)
