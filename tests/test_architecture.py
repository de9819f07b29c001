"""The architecture's habits, checked by reading every .py file under app/ with `ast`.

Alembic's app/gallery/migrations/ aside; imports inside functions and under
`if TYPE_CHECKING:` count too. Enforced: no import cycle (TYPE_CHECKING-only imports
aside: they never run); a module imports only its own top-level name and strictly lower
layers, in the order of docs/ARCHITECTURE.md (LAYERS, where every top-level name must
be); no private name (`_name`) imported across modules; no sqlalchemy in app/service or
app/api; app/gallery's functions at most 40 lines, and no mention of pgvector there.
The checkers are plain functions of the graph; the last tests show each one failing.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"
MIGRATIONS = APP / "gallery" / "migrations"

# Bottom to top; `app` itself (app/__init__.py) is the ground under all of them.
LAYERS: list[tuple[str, ...]] = [
    ("app.names", "app.cpus", "app.geometry", "app.logs"),
    ("app.errors", "app.settings"),
    ("app.face",),
    ("app.scoring",),
    ("app.gallery",),
    ("app.vectors",),
    ("app.privacy",),
    ("app.keys", "app.slots", "app.memory"),
    ("app.service",),
    ("app.evaluation",),
    ("app.bulk", "app.evaluation_openset", "app.evaluation_buckets", "app.bench", "app.sbom"),
    ("app.api",),
    ("app.cli", "app.web", "app.models"),
]
MAX_GALLERY_FUNCTION_LINES = 40
TYPE_CHECKING_TESTS = ("TYPE_CHECKING", "typing.TYPE_CHECKING")


@dataclass(frozen=True, order=True)
class Import:
    """One imported module: `names` is empty for `import m`, else `from m import names`."""

    importer: str
    module: str
    names: tuple[str, ...]
    line: int
    type_checking: bool

    def statement(self) -> str:
        names = ", ".join(self.names)
        text = f"from {self.module} import {names}" if names else f"import {self.module}"
        return f"{self.importer}: {text} (line {self.line})"


@dataclass(frozen=True, order=True)
class Edge:
    importer: str
    imported: str
    line: int
    type_checking: bool


@functools.cache
def sources() -> dict[str, Path]:
    """Module name -> file, for every .py file under app/ outside the migrations."""
    found: dict[str, Path] = {}
    for path in sorted(APP.rglob("*.py")):
        if not path.is_relative_to(MIGRATIONS):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


@functools.cache
def tree(module: str) -> ast.Module:
    path = sources()[module]
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def top_level(module: str) -> str:
    return ".".join(module.split(".")[:2])


def in_app(module: str) -> bool:
    return module.split(".")[0] == "app"


def _imports_in(node: ast.AST, importer: str, package: str, guarded: bool) -> Iterator[Import]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield Import(importer, alias.name, (), node.lineno, guarded)
    elif isinstance(node, ast.ImportFrom):
        module = node.module or ""
        if node.level:  # relative: from the package, then one package up per extra dot
            parts = package.split(".")
            module = ".".join([*parts[: len(parts) - node.level + 1], *filter(None, [module])])
        names = tuple(alias.name for alias in node.names)
        yield Import(importer, module, names, node.lineno, guarded)
    elif isinstance(node, ast.If) and ast.unparse(node.test) in TYPE_CHECKING_TESTS:
        for statement in node.body:
            yield from _imports_in(statement, importer, package, True)
        for statement in node.orelse:
            yield from _imports_in(statement, importer, package, guarded)
    else:
        for child in ast.iter_child_nodes(node):
            yield from _imports_in(child, importer, package, guarded)


@functools.cache
def imports() -> tuple[Import, ...]:
    found: list[Import] = []
    for module, path in sources().items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found.extend(_imports_in(tree(module), module, package, False))
    return tuple(sorted(found))


def edges_of(found: Iterable[Import], modules: Iterable[str]) -> list[Edge]:
    """Imports of app modules as edges; `from app.x import y` reaches app.x.y if it exists."""
    known = set(modules)
    edges: set[Edge] = set()
    for imp in found:
        if not in_app(imp.module):
            continue
        targets = [f"{imp.module}.{name}" for name in imp.names] or [imp.module]
        for target in targets:
            imported = target if target in known else imp.module
            if imported != imp.importer:
                edges.add(Edge(imp.importer, imported, imp.line, imp.type_checking))
    return sorted(edges)


def app_edges() -> list[Edge]:
    return edges_of(imports(), sources())


def graph(edges: Iterable[Edge], runtime_only: bool) -> dict[str, set[str]]:
    result: dict[str, set[str]] = {}
    for edge in edges:
        if not (runtime_only and edge.type_checking):
            result.setdefault(edge.importer, set()).add(edge.imported)
    return result


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None; deterministic (sorted walk)."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        path.append(node)
        for following in sorted(edges.get(node, ())):
            if following in path:
                return [*path[path.index(following) :], following]
            if following not in done and (cycle := visit(following)) is not None:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(edges):
        if start not in done and (cycle := visit(start)) is not None:
            return cycle
    return None


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Cycles until none is left, each found once the closing edges before it are cut."""
    remaining = {node: set(following) for node, following in edges.items()}
    cycles: list[list[str]] = []
    while (cycle := find_cycle(remaining)) is not None:
        cycles.append(cycle)
        remaining[cycle[-2]].discard(cycle[-1])
    return cycles


def upward_imports(edges: Iterable[Edge], layers: Sequence[tuple[str, ...]]) -> list[str]:
    """Edges into the same layer (another top-level name) or a higher one, or out of LAYERS."""
    rank = {name: index for index, layer in enumerate(layers) for name in layer} | {"app": -1}
    offenders: list[str] = []
    for edge in sorted(edges):
        source, target = top_level(edge.importer), top_level(edge.imported)
        if source != target and not (
            source in rank and rank.get(target, len(layers)) < rank[source]
        ):
            guarded = ", under TYPE_CHECKING" if edge.type_checking else ""
            offenders.append(f"{edge.importer} -> {edge.imported} (line {edge.line}{guarded})")
    return offenders


def private_imports(found: Iterable[Import]) -> list[str]:
    return [
        Import(imp.importer, imp.module, (name,), imp.line, imp.type_checking).statement()
        for imp in sorted(found)
        if in_app(imp.module) and imp.module != imp.importer
        for name in imp.names
        if name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
    ]


def _fail(title: str, offenders: Sequence[str]) -> str:
    return f"{title} ({len(offenders)}):\n  " + "\n  ".join(offenders)


def test_no_import_cycle() -> None:
    cycles = find_cycles(graph(app_edges(), runtime_only=True))
    assert not cycles, _fail("import cycles", [" -> ".join(cycle) for cycle in cycles])


def test_every_top_level_name_is_in_exactly_one_layer() -> None:
    listed = [name for layer in LAYERS for name in layer]
    missing = sorted({top_level(module) for module in sources()} - {"app"} - set(listed))
    twice = sorted({name for name in listed if listed.count(name) > 1})
    assert not missing and not twice, f"not in LAYERS: {missing}; in two layers: {twice}"


def test_no_upward_import() -> None:
    offenders = upward_imports(app_edges(), LAYERS)
    assert not offenders, _fail("imports of the same or a higher layer", offenders)


def test_no_private_name_imported_across_modules() -> None:
    offenders = private_imports(imports())
    assert not offenders, _fail("private names imported across modules", offenders)


def test_no_sqlalchemy_in_service_or_api() -> None:
    offenders = [
        imp.statement()
        for imp in imports()
        if top_level(imp.importer) in ("app.service", "app.api")
        and imp.module.split(".")[0] == "sqlalchemy"
    ]
    assert not offenders, _fail("sqlalchemy imported in app/service or app/api", offenders)


def _functions(node: ast.AST, prefix: str) -> Iterator[tuple[int, str, int]]:
    """(line, qualified name, length in lines) of every function and method under node."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            end = child.end_lineno or child.lineno
            yield child.lineno, prefix + child.name, end - child.lineno + 1
            yield from _functions(child, f"{prefix}{child.name}.")
        elif isinstance(child, ast.ClassDef):
            yield from _functions(child, f"{prefix}{child.name}.")
        else:
            yield from _functions(child, prefix)


def _gallery_modules() -> list[str]:
    return [module for module in sources() if top_level(module) == "app.gallery"]


def test_gallery_functions_are_short() -> None:
    offenders = [
        f"{sources()[module].relative_to(ROOT)}:{line} {name}: {length} lines"
        for module in sorted(_gallery_modules())
        for line, name, length in sorted(_functions(tree(module), ""))
        if length > MAX_GALLERY_FUNCTION_LINES
    ]
    title = f"app/gallery functions over {MAX_GALLERY_FUNCTION_LINES} lines"
    assert not offenders, _fail(title, offenders)


def test_gallery_knows_no_pgvector() -> None:
    pattern = re.compile("pgvector", re.IGNORECASE)
    offenders = [
        f"{sources()[module].relative_to(ROOT)}:{number}: {text.strip()}"
        for module in sorted(_gallery_modules())
        for number, text in enumerate(sources()[module].read_text("utf-8").splitlines(), 1)
        if pattern.search(text)
    ]
    assert not offenders, _fail("app/gallery mentions pgvector", offenders)


def test_cycle_check_catches_a_cycle() -> None:
    edges = graph(app_edges(), runtime_only=True)
    importer = min(module for module, imported in edges.items() if "app.errors" in imported)
    edges.setdefault("app.errors", set()).add(importer)
    assert any("app.errors" in cycle for cycle in find_cycles(edges))
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None


def test_layer_check_catches_an_upward_import() -> None:
    added = [
        Edge("app.errors", "app.service", 1, False),
        Edge("app.errors", "app.settings", 2, True),
    ]
    offenders = upward_imports([*app_edges(), *added], LAYERS)
    assert "app.errors -> app.service (line 1)" in offenders
    assert "app.errors -> app.settings (line 2, under TYPE_CHECKING)" in offenders
    assert upward_imports([Edge("app.service.core", "app.errors", 1, False)], LAYERS) == []


def test_private_name_check_catches_a_private_import() -> None:
    synthetic = Import("app.service.core", "app.gallery.store", ("_aware", "__all__"), 7, False)
    own = Import("app.gallery.store", "app.gallery.store", ("_aware",), 3, False)
    offenders = private_imports([*imports(), synthetic, own])
    assert "app.service.core: from app.gallery.store import _aware (line 7)" in offenders
    assert private_imports([own, Import("app.x", "app.y", ("__all__",), 1, False)]) == []
