"""The import graph of hf_spectral keeps the layering of CONTRIBUTING.md: no upward arrows, no two
modules importing each other, no inner module importing the package root, dynamics reading only
snapshots, and the tracker usable without transformers.

Run it alone with ``pytest tests/test_layering.py -q`` (about a second, plus two short subprocesses).
The graph is read from the source (``import`` statements anywhere in a module, function-level ones
included, ``if TYPE_CHECKING:`` blocks excluded), so a lazy import cannot hide an arrow.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_spectral"

# Layer of each module (longest prefix wins), bottom first: a module may import its own layer and lower ones.
LAYERS: dict[str, int] = {
    "hf_spectral._version": 0, "hf_spectral._lazy": 0, "hf_spectral.errors": 0, "hf_spectral.status": 0,
    "hf_spectral.tensor_info": 0, "hf_spectral.atomic": 0, "hf_spectral.caches": 0, "hf_spectral.utils": 0,
    "hf_spectral.metrics": 1,
    "hf_spectral.views": 2,
    "hf_spectral.store": 3,
    "hf_spectral.sources": 4,
    "hf_spectral.dynamics": 5,  # beside the engine: it reads snapshots (see DYNAMICS_MAY_IMPORT)
    "hf_spectral.module_cache": 5, "hf_spectral.snapshot_cache": 5, "hf_spectral.engine": 5,
    "hf_spectral.batching": 5, "hf_spectral.prefetch": 5, "hf_spectral.calibration": 5, "hf_spectral.processes": 5,
    "hf_spectral.analyzer": 6, "hf_spectral.series": 6, "hf_spectral.comparison": 6,
    "hf_spectral.cost": 6, "hf_spectral.dry_run": 6,
    "hf_spectral.tracking": 7, "hf_spectral.experiments": 7,
    "hf_spectral.highlights": 8, "hf_spectral.plots": 8, "hf_spectral.report": 8, "hf_spectral.cards": 8,
    "hf_spectral.cli": 8, "hf_spectral.__main__": 8, "hf_spectral.recipe_support": 8,
    "hf_spectral": 9,  # the package root: the public API, loaded lazily
}
DYNAMICS_MAY_IMPORT = ("hf_spectral.dynamics", "hf_spectral.store", "hf_spectral.atomic", "hf_spectral.metrics",
                       "hf_spectral.errors", "hf_spectral.status", "hf_spectral.tensor_info", "hf_spectral._lazy")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def imports_of(name: str) -> set[str]:
    """The hf_spectral modules ``name`` imports at run time (``from hf_spectral import metrics`` is
    an import of ``hf_spectral.metrics``; of the root only when the imported name is not a module)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "hf_spectral"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if base.split(".")[0] != "hf_spectral":
                continue
            subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES}
            found |= subs
            if len(subs) < len(node.names):
                found.add(base)
    return found - {name}


GRAPH = {name: imports_of(name) for name in MODULES}


def layer_of(name: str) -> int:
    best = max((prefix for prefix in LAYERS if name == prefix or name.startswith(prefix + ".")), key=len)
    return LAYERS[best]


def test_every_module_has_a_layer() -> None:
    assert all(layer_of(name) is not None for name in MODULES)


def test_no_upward_imports() -> None:
    upward = [f"{a} ({layer_of(a)}) -> {b} ({layer_of(b)})" for a, targets in GRAPH.items() for b in targets
              if layer_of(b) > layer_of(a)]
    assert upward == []


def test_no_module_imports_the_package_root() -> None:
    assert [a for a, targets in GRAPH.items() if "hf_spectral" in targets] == []


def test_no_two_file_loops() -> None:
    loops = sorted({tuple(sorted((a, b))) for a, targets in GRAPH.items() for b in targets if a in GRAPH.get(b, ())})
    assert loops == []


def test_dynamics_reads_only_snapshots() -> None:
    wrong = [f"{a} -> {b}" for a, targets in GRAPH.items() if a.startswith("hf_spectral.dynamics")
             for b in targets if not any(b == p or b.startswith(p + ".") for p in DYNAMICS_MAY_IMPORT)]
    assert wrong == []


def test_the_scanner_sees_arrows() -> None:
    """The checks above would catch what they look for (function-level imports included)."""
    assert "hf_spectral.engine" in GRAPH["hf_spectral.analyzer"]
    assert "hf_spectral.sources.hub" in GRAPH["hf_spectral.sources.resolve"]  # imported inside a function
    assert "hf_spectral.metrics" in GRAPH["hf_spectral.engine"]  # `from hf_spectral import metrics`


def _fresh_import(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent, timeout=120)


@pytest.mark.parametrize("module, absent", [
    ("hf_spectral.tracking.tracker", ("transformers",)),
    ("hf_spectral.dynamics.io, hf_spectral.dynamics.comparison, hf_spectral.dynamics.steps",
     ("hf_spectral.engine", "hf_spectral.sources", "hf_spectral.analyzer", "matplotlib")),
    ("hf_spectral", ("torch", "transformers")),
    # the analyze path: torch and accelerate on first use only (the numpy backend never uses them)
    ("hf_spectral.cli.analyze, hf_spectral.analyzer, hf_spectral.engine, hf_spectral.metrics, hf_spectral.sources",
     ("torch", "accelerate", "transformers", "diffusers", "huggingface_hub", "matplotlib")),
])
def test_importing_a_layer_leaves_out(module: str, absent: tuple[str, ...]) -> None:
    _fresh_import(f"import sys\nimport {module}\nloaded = [m for m in {absent!r} if m in sys.modules]\n"
                  "assert not loaded, loaded")
