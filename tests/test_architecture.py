"""The package's layers, read from `docs/architecture.md` and checked against every import.

A module may import only from its own layer or a lower one, never in a cycle, never
another module's private name, and inside a function only an optional dependency the map
names. These tests read the source with `ast`; they import nothing."""

import ast
import functools
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sora_mini"
LAYERS = ("base", "models", "model", "training", "evaluation", "product", "cli")


def read_map() -> tuple[dict[str, str], set[str]]:
    """`({module: layer}, lazy-importable dependencies)` from docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    layers = {m: layer for m, layer in re.findall(r"^\| `([\w]+)` \|.*\| (\w+) \|$", text, re.M)}
    lazy_line = next(line for line in text.split("\n\n") if "Imports inside functions" in line)
    return layers, set(re.findall(r"`([\w.]+)`", lazy_line))


def imports_of(path: pathlib.Path):
    """Yield `(node, top_level, imported module names, names taken from them)` for each import."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield node, id(node) in top, [a.name for a in node.names], []
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [a.name for a in node.names]
            # `from sora_mini import vae` imports the module sora_mini.vae
            modules = ([f"{node.module}.{n}" for n in names if (PACKAGE / f"{n}.py").exists()]
                       if node.module == "sora_mini" else [node.module])
            yield node, id(node) in top, modules, names if node.module != "sora_mini" else []


def internal(name: str) -> str | None:
    return name.split(".")[1] if name.startswith("sora_mini.") else None


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))
LAYER_OF, LAZY = read_map()


@functools.cache
def graph() -> dict[str, set[str]]:
    return {m: {internal(n) for _, _, names, _ in imports_of(PACKAGE / f"{m}.py") for n in names
                if internal(n)} for m in MODULES}


def test_every_module_is_on_the_map():
    assert set(LAYER_OF) == set(MODULES), (f"not on the map: {sorted(set(MODULES) - set(LAYER_OF))}; "
                                           f"on the map but missing: {sorted(set(LAYER_OF) - set(MODULES))}")
    assert set(LAYER_OF.values()) <= set(LAYERS)


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_down(module):
    upward = [f"{module} ({LAYER_OF[module]}) imports {dep} ({LAYER_OF[dep]})" for dep in graph()[module]
              if LAYERS.index(LAYER_OF[dep]) > LAYERS.index(LAYER_OF[module])]
    assert not upward, upward


def test_no_import_cycles():
    edges = graph()
    state = {}

    def visit(m, path):
        state[m] = "open"
        for dep in sorted(edges[m] - {m}):
            if state.get(dep) == "open":
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(dep):], dep]))
            if dep not in state:
                visit(dep, [*path, dep])
        state[m] = "done"

    for m in MODULES:
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("module", MODULES)
def test_function_local_imports_only_for_optional_dependencies(module):
    local = [f"line {node.lineno}: {', '.join(names)}" for node, top, names, _ in imports_of(PACKAGE / f"{module}.py")
             if not top and not all(n.split(".")[0] in LAZY for n in names)]
    assert not local, f"{module} imports inside functions: {local}"


@pytest.mark.parametrize("module", MODULES)
def test_no_private_name_is_used_across_modules(module):
    source = (PACKAGE / f"{module}.py").read_text()
    aliases = {}
    private = []
    for node, _, names, taken in imports_of(PACKAGE / f"{module}.py"):
        if any(internal(n) for n in names):
            private += [f"from {names[0]} import {t}" for t in taken if t.startswith("_") and t != "__version__"]
            for a in node.names:
                if isinstance(node, ast.ImportFrom) and node.module == "sora_mini":
                    aliases[a.asname or a.name] = a.name
    for alias in aliases:
        private += re.findall(rf"\b{re.escape(alias)}\._[a-z]\w*", source)
    assert not private, f"{module} uses private names of other modules: {private}"


def test_the_checks_catch_what_they_forbid(tmp_path):
    """The readers above see an upward import, a function-local one and a private name."""
    path = tmp_path / "m.py"
    path.write_text("from sora_mini import recipes\n\ndef f():\n    from sora_mini.vae import _x\n")
    found = list(imports_of(path))
    assert [(top, names) for _, top, names, _ in found] == [(True, ["sora_mini.recipes"]),
                                                           (False, ["sora_mini.vae"])]
    assert found[1][3] == ["_x"]
