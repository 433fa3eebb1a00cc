"""The package's shape: imports run one way (DEVELOPERS.md, "Layout"), nothing imports train.

Every ``import ds2.x`` / ``from ds2 import x`` / ``from ds2.x import y`` in ds2/, at module
level or inside a function, is an edge; a module may only import modules of a lower layer.
That rules out cycles, and it keeps decoding, tuning, alignment and serving free of the
training loop.
"""

import ast
import configparser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "ds2"

# Lowest first. A module may import modules of lower layers only. cli (the top) is
# checked separately: it may import anything, and nothing may import it.
LAYERS = [
    {"ds2", "io", "config", "grammar", "_ctc_numba", "_align_numba"},  # ground: nothing from ds2 (ds2 = __init__)
    {"text", "audio", "distributed"},
    {"features", "espeak", "norm"},
    {"data", "voices", "recurrent"},
    {"model", "lm", "metrics", "ctc", "alignment", "augment"},
    {"checkpoint", "longform", "quantize"},
    {"decode", "streaming"},
    {"tune", "train", "prepare", "synth", "align", "serve"},
    {"segment", "noise", "transcribe"},
]


def _module_name(path: Path) -> str:
    return "ds2" if path.name == "__init__.py" else path.stem


def ds2_imports(path: Path) -> set[str]:
    """The ds2 modules a source file imports, by short name ("ds2" for the package itself)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "ds2":
                    found.add(parts[1] if len(parts) > 1 else "ds2")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ds2":
            parts = node.module.split(".")
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from ds2 import audio, __version__
                for alias in node.names:
                    is_module = (PACKAGE / f"{alias.name}.py").exists() or (PACKAGE / alias.name / "__init__.py").exists()
                    found.add(alias.name if is_module else "ds2")
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the ds2 modules it imports; a subpackage (ds2/decode/) is one module, the
    union of its files."""
    graph = {_module_name(path): ds2_imports(path) - {_module_name(path)}
             for path in sorted(PACKAGE.glob("*.py")) if path.name != "cli.py"}
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        name = init.parent.name
        graph[name] = set().union(*(ds2_imports(path) for path in init.parent.glob("*.py"))) - {name}
    return graph


def test_every_module_has_a_layer():
    layered = set().union(*LAYERS)
    modules = set(_graph())
    assert modules - layered == set(), "add new modules to LAYERS (and to DEVELOPERS.md's layout)"
    assert layered - modules == set(), "LAYERS names modules that no longer exist"


def test_imports_only_go_down():
    layer_of = {name: index for index, layer in enumerate(LAYERS) for name in layer}
    upward = [
        f"ds2.{module} (layer {layer_of[module]}) imports ds2.{target} (layer {layer_of.get(target, '?')})"
        for module, targets in _graph().items()
        for target in targets
        if layer_of.get(target, len(LAYERS)) >= layer_of[module]
    ]
    assert upward == []


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, str] = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        if state.get(node) == "open":
            pytest.fail("import cycle: " + " -> ".join(trail[trail.index(node):] + [node]))
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            visit(target, trail + [node])
        state[node] = "done"

    for module in graph:
        visit(module, [])


def test_nothing_imports_train_or_cli():
    importers = {module for module, targets in _graph().items() if targets & {"train", "cli"}}
    assert importers == set()
    for path in (REPO / "benchmarks").glob("*.py"):
        if path.name in TRAINING_BENCHMARKS:
            continue
        assert "train" not in ds2_imports(path), path


# Benchmarks whose subject is the training loop itself (the others measure decoding or kernels
# and must not need it).
TRAINING_BENCHMARKS = {"augment.py", "train_throughput.py"}


def test_the_checker_sees_lazy_and_package_imports(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("from ds2 import audio, __version__\nimport ds2.text\ndef f():\n    from ds2.train import train\n")
    assert ds2_imports(source) == {"audio", "ds2", "text", "train"}


def test_cli_is_installed_inside_the_package():
    link = PACKAGE / "cli.py"
    assert link.is_symlink() and link.resolve() == (REPO / "cli.py").resolve()
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    assert "py_modules" not in setup["options"]  # nothing at the top of site-packages but ds2
    assert setup["options.entry_points"]["console_scripts"].strip() == "ds2 = ds2.cli:app"
    assert "ds2.cuda = cuda" in setup["options"]["package_dir"]
