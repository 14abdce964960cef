"""Code versions derived from the code each asset runs and the config it reads, so Dagster's
staleness view is true.

An asset's ``code_version`` is the first 12 hex digits of a SHA-256 over two things:

**Its code.** The *roots* are the library modules its body refers to: every name the body
function uses (and, transitively, the bodies of the ``defs/`` helpers it calls) that is
imported from ``blindspot_assets`` outside ``defs/``, resolved through re-exports to the
module that defines it (``from blindspot_assets.stats import compute_concept_stats`` is
``stats.concepts``). Its *closure* adds every module those import, read statically from their
``import`` statements — module-level and function-local alike, not those under
``if TYPE_CHECKING:`` — and from the string constants naming a module (the registries import
``FAMILY_MODULES[...]`` by name). Each module counts as its syntax tree without docstrings
(``code_fingerprint``): comments, docstrings and formatting change nothing. Nothing is
declared by hand, so nothing drifts; the closure is broad (a statistic imports the stores,
the config, the progress helpers), and that is honest: it is what the asset runs. The Dagster
layer itself is not hashed.

**Its config slice.** Each asset declares the run-config blocks it reads (``reads=``, next to
its definition); the blocks' values, as loaded when the code location loads, go into the hash,
so editing ``stats.temperature`` and reloading marks the assets reading ``stats`` — and what is
downstream of them — stale, and nothing else. The body gets a view of the config in which every
other block raises (``config_view``), so the declaration cannot fall behind the body. Where the
data lives (``data_root``, ``store_root``) is read by every asset and hashed into every version.

Why the code version and not a data version: Dagster compares an asset's code version with
the one its last materialisation recorded as soon as the code location is reloaded; a data
version (``MaterializeResult(data_version=...)``) is only recorded by a new materialisation
and an observable source only by an observation, so neither can see a config edit by itself.
The code version is per asset, not per partition: an edit of one model's entry of ``models``
marks every partition of the assets that read ``models`` stale (observing
``model_checkpoints`` re-reads the checkpoints, per partition).

In the graph each version is then folded with its ancestors' (``folded``, applied in
``definitions.py``): Dagster marks a child stale for a parent's new data version, not for its
new code version, so without it only the assets reading an edited block would show stale.

``COVERAGE`` records each asset's roots, closure and blocks; the asset-graph snapshot records
roots and blocks (not the hashes, nor the closure, which moves with any import).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blindspot_assets.config import TOP_LEVEL, RunConfig, load_config
from blindspot_assets.defs.resources import default_config_path

PACKAGE = "blindspot_assets"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # blindspot_assets/
# read by every asset: where the data lives
WHERE = ("data_root", "store_root")
# the blocks an asset may declare: every top-level field of the run config but WHERE
BLOCKS = tuple(f for f in TOP_LEVEL if f not in WHERE)

SourceOf = Callable[[str], str]


@dataclass(frozen=True)
class Coverage:
    """What an asset's code version covers."""

    roots: tuple[str, ...]
    """The library modules its body refers to (relative to blindspot_assets)."""
    closure: tuple[str, ...]
    """The roots and every library module they import, transitively."""
    reads: tuple[str, ...]
    """The run-config blocks it reads (besides WHERE)."""


COVERAGE: dict[str, Coverage] = {}


# -- modules and their code ----------------------------------------------------------------


def is_module(name: str) -> bool:
    """Whether ``blindspot_assets.<name>`` is a module or a package of this repository."""
    path = PACKAGE_ROOT / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def module_path(name: str) -> Path:
    path = PACKAGE_ROOT / name.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def read_source(module: str) -> str:
    """The source text of ``blindspot_assets.<module>`` (``__init__`` for a package)."""
    return module_path(module).read_text()


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            value = first.value if isinstance(first, ast.Expr) else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


@functools.lru_cache(maxsize=512)  # keyed by the text: an edited module is parsed again
def code_fingerprint(source: str) -> str:
    """The code of a module, without comments, docstrings and formatting."""
    return ast.dump(_without_docstrings(ast.parse(source)), include_attributes=False)


@functools.cache
def _tree(module: str) -> ast.Module:
    return ast.parse(read_source(module))


@functools.cache
def _fingerprint(module: str) -> str:
    return code_fingerprint(read_source(module))  # once per module while the location loads


def _relative(dotted: str) -> str | None:
    """``blindspot_assets.x.y`` → ``x.y``; None for anything outside the package."""
    if dotted == PACKAGE or not dotted.startswith(PACKAGE + "."):
        return None
    return dotted[len(PACKAGE) + 1 :]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` except what is under ``if TYPE_CHECKING:`` (never runs)."""
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                todo.extend(child.orelse)
            else:
                todo.append(child)


def _import_bindings(tree: ast.AST) -> Iterator[tuple[str, str, str | None]]:
    """(bound name, module imported from, imported name or None for a module import)."""
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                yield alias.asname or alias.name, node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.asname or alias.name.split(".")[0], alias.name, None


@functools.cache
def resolve(module: str, name: str) -> str:
    """The module that defines ``name`` as seen from ``blindspot_assets.<module>``: a
    submodule of that name, the module a re-export comes from, else ``module`` itself."""
    if is_module(f"{module}.{name}"):
        return f"{module}.{name}"
    for bound, source, imported in _import_bindings(_tree(module)):
        target = _relative(source)
        if bound == name and imported is not None and target is not None and target != module:
            return resolve(target, imported)
    return module


def imports_of(module: str) -> set[str]:
    """The library modules ``module`` imports: import statements anywhere in it (not under
    ``TYPE_CHECKING``) and string constants that name a module of the package."""
    found: set[str] = set()
    tree = _tree(module)
    for _, source, imported in _import_bindings(tree):
        target = _relative(source)
        if target is None or not is_module(target):
            continue
        found.add(target if imported is None else resolve(target, imported))
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            named = _relative(node.value)
            if named is not None and is_module(named):
                found.add(named)
    found.discard(module)
    return found


def closure(roots: Iterable[str]) -> tuple[str, ...]:
    """``roots`` and every library module they import, transitively (``defs`` excluded)."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen or module.split(".")[0] == "defs" or module == "definitions":
            continue
        seen.add(module)
        todo.extend(imports_of(module))
    return tuple(sorted(seen))


# -- what an asset body refers to ----------------------------------------------------------


def _top_level(module: str) -> dict[str, ast.AST]:
    """The module's top-level functions, classes and assignments, by the name they bind."""
    out: dict[str, ast.AST] = {}
    for node in _tree(module).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        out.setdefault(name.id, node)  # the first binding, its value's names
    return out


def _names_in(node: ast.AST) -> set[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        # the body and signature, not the decorators (an asset's decorator names its deps)
        inner = [*node.body, *([node.args] if not isinstance(node, ast.ClassDef) else [])]
        return {n.id for part in inner for n in ast.walk(part) if isinstance(n, ast.Name)}
    if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
        value = node.value
        return (
            set() if value is None else {n.id for n in ast.walk(value) if isinstance(n, ast.Name)}
        )
    return set()


def roots_of(functions: Iterable[Callable[..., Any]]) -> tuple[str, ...]:
    """The library modules the given ``defs/`` functions refer to, following the ``defs/``
    functions and module-level values they use."""
    roots: set[str] = set()
    seen: set[tuple[str, str]] = set()
    todo: list[tuple[str, str]] = []
    for fn in functions:
        module = _relative(fn.__module__)
        if module is None:
            raise ValueError(f"{fn.__qualname__} is not code of {PACKAGE}")
        todo.append((module, fn.__name__))
    while todo:
        module, name = todo.pop()
        if (module, name) in seen:
            continue
        seen.add((module, name))
        node = _top_level(module).get(name)
        if node is None:
            raise ValueError(f"{name} is no top-level definition of {PACKAGE}.{module}")
        bindings = {b: (s, i) for b, s, i in _import_bindings(_tree(module))}
        local = _top_level(module)
        for used in _names_in(node):
            if used in bindings:
                source, imported = bindings[used]
                target = _relative(source)
                if target is None or imported is None:
                    continue
                where = resolve(target, imported)
                if where.split(".")[0] == "defs":
                    if imported in _top_level(where):
                        todo.append((where, imported))
                else:
                    roots.add(where)
            elif used in local and used != name:
                todo.append((module, used))
    return tuple(sorted(roots))


# -- the config slice ------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def slice_of(cfg: RunConfig, reads: Iterable[str]) -> str:
    """The values of the blocks ``reads`` (and WHERE) of ``cfg``, as canonical JSON."""
    fields = sorted({*WHERE, *reads})
    return json.dumps({f: _plain(getattr(cfg, f)) for f in fields}, sort_keys=True, default=str)


class UndeclaredConfig(AttributeError):
    """An asset read a run-config block it does not declare in ``reads=``."""


class Unread:
    """Stands for a block the asset did not declare: any use of it raises."""

    def __init__(self, block: str, asset: str) -> None:
        object.__setattr__(self, "_where", (block, asset))

    def _refuse(self, *_: object) -> Any:
        block, asset = object.__getattribute__(self, "_where")
        raise UndeclaredConfig(
            f"{asset} reads the run config's {block!r}, which it does not declare: add "
            f"{block!r} to its reads= (defs/versions.py), so a change of it marks {asset} stale"
        )

    def __getattr__(self, attr: str) -> Any:
        return self._refuse()

    __getitem__ = __iter__ = __len__ = __contains__ = __bool__ = __str__ = _refuse
    __int__ = __index__ = __float__ = __format__ = __add__ = __radd__ = __lt__ = _refuse


def config_view(cfg: RunConfig, asset: str) -> RunConfig:
    """``cfg`` with every block ``asset`` does not declare replaced by an ``Unread``."""
    reads = COVERAGE[asset].reads
    view = copy.copy(cfg)
    for block in BLOCKS:
        if block not in reads:
            object.__setattr__(view, block, Unread(block, asset))
    return view


# -- the version -----------------------------------------------------------------------------


@functools.cache
def loaded_config() -> RunConfig:
    """The run config as the code location loads it (the same file the runs read)."""
    return load_config(default_config_path())


def version_of(
    modules: Iterable[str], config_slice: str = "", fingerprint: SourceOf | None = None
) -> str:
    """The code version of ``modules``' code (``fingerprint``: a module's normalised code)
    and a config slice."""
    fingerprint = fingerprint or _fingerprint
    digest = hashlib.sha256(config_slice.encode() + b"\0")
    for module in sorted(set(modules)):
        digest.update(module.encode() + b"\0" + fingerprint(module).encode() + b"\0")
    return digest.hexdigest()[:12]


def derived_version(
    asset: str, functions: Sequence[Callable[..., Any]], reads: Iterable[str]
) -> str:
    """Record what ``asset`` runs (its body ``functions``) and reads; its code version."""
    reads = tuple(sorted(set(reads)))
    unknown = [b for b in reads if b not in BLOCKS]
    if unknown:
        raise ValueError(f"{asset}: reads={unknown} are no blocks of the run config {BLOCKS}")
    roots = roots_of(functions)
    if not roots:
        raise ValueError(f"{asset}: its body calls no library code ({PACKAGE} outside defs)")
    COVERAGE[asset] = Coverage(roots=roots, closure=closure(roots), reads=reads)
    return version_of(COVERAGE[asset].closure, slice_of(loaded_config(), reads))


def current_versions(
    source_of: SourceOf | None = None, cfg: RunConfig | None = None
) -> dict[str, str]:
    """Every asset's code version, with some modules' source or the config replaced."""
    cfg = cfg or loaded_config()
    fingerprint = None
    if source_of is not None:
        fingerprint = functools.cache(lambda module: code_fingerprint(source_of(module)))
    return {
        asset: version_of(c.closure, slice_of(cfg, c.reads), fingerprint)
        for asset, c in COVERAGE.items()
    }


def library_modules() -> list[str]:
    """Every module of the library (outside defs), for tests."""
    out = []
    for path in PACKAGE_ROOT.rglob("*.py"):
        parts = path.relative_to(PACKAGE_ROOT).with_suffix("").parts
        if parts[0] in ("defs", "definitions"):
            continue
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        if parts:
            out.append(".".join(parts))
    return sorted(out)


def folded(own: dict[str, str], parents: dict[str, set[str]]) -> dict[str, str]:
    """Each asset's own version hashed with its parents' folded versions, so a change anywhere
    upstream gives every asset downstream a new code version too. Dagster's staleness does not
    pass a parent's new code version on to its children (only a new data version, once the
    parent is materialised again); folding shows the whole downstream stale after a reload.
    Parents without a version of their own (the observable ``model_checkpoints``) are left out:
    their data versions reach the children through Dagster."""
    out: dict[str, str] = {}

    def fold(asset: str) -> str:
        if asset not in out:
            ups = sorted(fold(p) for p in parents.get(asset, set()) if p in own)
            out[asset] = hashlib.sha256(" ".join([own[asset], *ups]).encode()).hexdigest()[:12]
        return out[asset]

    for asset in own:
        fold(asset)
    return out
