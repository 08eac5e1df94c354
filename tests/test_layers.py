"""The three layers (fedgma/__init__.py): the library needs Flower and NumPy only, and no layer imports a later one."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "fedgma"
LIBRARY = PACKAGE / "strategies"
TOOLS = PACKAGE / "tools"


def _imported_modules(path: Path) -> set[str]:
    """Every fedgma module a file imports (relative imports resolved), module-level or inside functions."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] == "fedgma"}


def _layer(module: str) -> int:
    if module.startswith("fedgma.strategies"):
        return 1
    if module.startswith("fedgma.tools"):
        return 3
    return 2 if module != "fedgma" else 1  # the package root re-exports the library


def test_no_layer_imports_a_later_one():
    offending = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for imported in _imported_modules(path):
            if _layer(imported) > _layer(module):
                offending.append(f"{path.relative_to(REPO)} imports {imported}")
    assert not offending, offending


def test_the_library_imports_without_torch_or_the_app():
    code = ("import sys\n"
            "from fedgma import FedGMA, GMA, ReplyBounds, ReplyGuard, clientapp_from_numpy_client\n"
            "import fedgma.strategies.masking, fedgma.strategies.protocol\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'matplotlib', "
            "'scipy', 'ray') or (m.startswith('fedgma.') and not m.startswith('fedgma.strategies')))\n"
            "print(loaded)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip() == "[]", result.stdout


def test_the_protocol_loads_without_the_server_strategies():
    code = "import sys, fedgma.strategies.protocol; print(sorted(m for m in sys.modules if m.startswith('fedgma')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip() == "['fedgma', 'fedgma.strategies', 'fedgma.strategies.protocol']"


def test_the_server_app_imports_no_partitioner():
    """Only clients partition: the ServerApp's start skips datasets and flwr_datasets (with seaborn, scipy)."""
    code = ("import sys\nimport fedgma.server_app\n"
            "print(sorted(m for m in ('datasets', 'flwr_datasets', 'seaborn') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip() == "[]", result.stdout
