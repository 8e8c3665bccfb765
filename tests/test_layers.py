"""Layers only point down: every import in timpy/ is checked against one order.

The order is DESIGN.md's (bottom to top), documented in docs/architecture.md:
base (errors, concurrency, logs, files, frozen) < wire < crypto < config < cluster <
store < im < gateway < node; client may import base and wire only; cli,
timpy/__init__, timpy/__main__ and timpy/testing are on top. Imports under
``if TYPE_CHECKING:`` count: a type is a dependency.

Inside ``im``, features never import each other (DESIGN.md): each feature
(its module and its pure rules) may import the core and itself only; what
two features share lives in the core (``users``, ``references``,
``ratelimit``, ...) or is handed in at construction by the node.

Under ``tests/``, no module imports a test module (``test_*.py``): what
two test modules share lives in ``tests/support/`` (fixtures in a
``conftest.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "timpy"

ORDER = ["base", "wire", "crypto", "config", "cluster", "store", "im", "gateway", "node"]
BASE = {"errors", "concurrency", "logs", "files", "frozen"}
TOP = {"cli", "__init__", "__main__", "testing"}


def layer_of(module: str) -> str:
    """The layer of a dotted module name inside timpy."""
    parts = module.split(".")
    assert parts[0] == "timpy", module
    if len(parts) == 1:
        return "top"
    first = parts[1]
    if first in BASE:
        return "base"
    if first in TOP:
        return "top"
    if first == "client":
        return "client"
    if first in ORDER:
        return first
    raise AssertionError(f"{module} is in no layer: add it to tests/test_layers.py and docs/architecture.md")


def may_import(importer: str, imported: str) -> str | None:
    """None when the import points down or sideways; else the rule it breaks."""
    if importer == "top" or importer == imported:
        return None
    if importer == "client":
        if imported in {"base", "wire"}:
            return None
        return "the client library may import only base (errors, concurrency, logs, files) and wire"
    if imported == "top":
        return f"{importer} may not import the top layer (cli, timpy, timpy.testing)"
    if imported == "client":
        return f"{importer} may not import the client library (only the top layer may)"
    if ORDER.index(imported) < ORDER.index(importer):
        return None
    return f"{importer} may import only layers below it: {' < '.join(ORDER)}"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def import_statements(source: str, module: str, is_package: bool = False) -> list[tuple[ast.AST, str]]:
    """Every import statement anywhere in a module's text (TYPE_CHECKING
    blocks and functions too), with what it imports from, made absolute
    (``from .x import y`` -> the package's ``x``; "" for ``import a.b``)."""
    tree = ast.parse(source, filename=module)
    package = module.split(".")
    if not is_package:
        package = package[:-1]
    found: list[tuple[ast.AST, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.append((node, ""))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                found.append((node, ".".join(base + ([node.module] if node.module else []))))
            else:
                found.append((node, node.module or ""))
    return found


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """Every timpy module imported anywhere in a module's text (TYPE_CHECKING blocks and functions too)."""
    found: list[tuple[int, str]] = []
    for node, target in import_statements(source, module, is_package):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "timpy"]
        elif isinstance(node, ast.ImportFrom):
            if target.split(".")[0] != "timpy":
                continue
            if target == "timpy" or node.module is None:
                # "from timpy import errors", "from . import session": each name is a module.
                found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
            else:
                # "from timpy.im import kinds": a name that is a module of the package counts as that module.
                folder = PACKAGE.parent.joinpath(*target.split("."))
                names = [a.name for a in node.names]
                submodules = [n for n in names if (folder / f"{n}.py").is_file() or (folder / n).is_dir()]
                found += [(node.lineno, f"{target}.{n}") for n in submodules]
                if len(submodules) < len(names):
                    found.append((node.lineno, target))
    return found


def violations() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        source = path.read_text(encoding="utf-8")
        for line, imported in imports_of(source, importer, path.name == "__init__.py"):
            rule = may_import(layer_of(importer), layer_of(imported))
            if rule is not None:
                problems.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line}: {importer} imports {imported} "
                    f"({layer_of(importer)} -> {layer_of(imported)}): {rule}"
                )
    return problems


def test_every_import_points_down() -> None:
    problems = violations()
    assert not problems, "upward imports:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("importer", "imported", "allowed"),
    [
        ("im", "store", True),
        ("store", "im", False),
        ("gateway", "node", False),
        ("node", "gateway", True),
        ("client", "wire", True),
        ("client", "im", False),
        ("im", "client", False),
        ("top", "node", True),
        ("wire", "top", False),
        ("config", "crypto", True),
        ("config", "store", False),
    ],
)
def test_the_rules(importer: str, imported: str, allowed: bool) -> None:
    assert (may_import(importer, imported) is None) is allowed


def test_the_checker_sees_type_checking_and_relative_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import session\n"
        "if TYPE_CHECKING:\n"
        "    from ..node.node import Node\n"
        "def later():\n"
        "    import timpy.cli.main\n"
    )
    found = [name for _, name in imports_of(source, "timpy.gateway.probe")]
    assert found == ["timpy.gateway.session", "timpy.node.node", "timpy.cli.main"]
    rules = [may_import("gateway", layer_of(name)) for name in found]
    assert rules[0] is None and rules[1] is not None and rules[2] is not None


# --- features of im -----------------------------------------------------------------

# Each feature of timpy/im/ and its modules (the feature, its pure rules). A
# module of im/ that is in no feature is core. A new feature adds a line here.
FEATURES: dict[str, set[str]] = {
    "accounts": {"accounts"},
    "attachments": {"attachments"},
    "conversations": {"conversations", "conversation_rules"},
    "groups": {"groups", "group_rules"},
    "messaging": {"messaging"},
    "presence": {"presence"},
    "push": {"push", "push_rules"},
    "receipts": {"receipts"},
    "replies": {"replies", "reply_rules"},
    "rooms": {"rooms"},
    "roster": {"roster", "roster_rules"},
    "search": {"search", "search_rules"},
    "signalling": {"signalling"},
    "threads": {"threads"},
    "webhooks": {"webhooks", "webhook_rules"},
}
CORE = {
    "__init__", "batches", "delivery", "events", "fields", "ids", "kinds", "peers", "ratelimit", "records",
    "references", "replication", "routes", "signal_routes", "tasks", "terminals", "users", "writer",
}


def feature_of(module: str) -> str | None:
    """The feature a timpy.im module belongs to; None for the core (and for modules outside im)."""
    parts = module.split(".")
    if parts[:2] != ["timpy", "im"] or len(parts) < 3:
        return None
    for feature, modules in FEATURES.items():
        if parts[2] in modules:
            return feature
    return None


def feature_violations() -> list[str]:
    problems = []
    for path in sorted((PACKAGE / "im").rglob("*.py")):
        importer = module_name(path)
        mine = feature_of(importer)
        if mine is None:
            continue
        for line, imported in imports_of(path.read_text(encoding="utf-8"), importer, path.name == "__init__.py"):
            theirs = feature_of(imported)
            if theirs is not None and theirs != mine:
                problems.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line}: the {mine} feature imports {imported} "
                    f"(the {theirs} feature): move what they share into the im core, or have the node pass it in"
                )
    return problems


def test_every_module_of_im_is_core_or_in_one_feature() -> None:
    found = {p.stem for p in (PACKAGE / "im").glob("*.py")}
    listed = [m for modules in FEATURES.values() for m in modules]
    assert len(listed) == len(set(listed)) and not set(listed) & CORE, "a module is listed twice"
    unknown = sorted(found - CORE - set(listed))
    assert not unknown, f"timpy/im/ modules in no feature and not core: {unknown}: add them to FEATURES or CORE"
    assert not (CORE | set(listed)) - found, "FEATURES or CORE names a module that is gone"


def test_features_never_import_each_other() -> None:
    problems = feature_violations()
    assert not problems, "features importing each other:\n" + "\n".join(problems)


def test_the_feature_checker_sees_an_import_of_another_feature() -> None:
    source = "from timpy.im.messaging import Messenger\nfrom timpy.im import roster_rules as rules\nfrom timpy.im.users import Users\n"
    found = [feature_of(name) for _, name in imports_of(source, "timpy.im.groups")]
    assert found == ["messaging", "roster", None]
    assert feature_of("timpy.im.group_rules") == feature_of("timpy.im.groups") == "groups"



# --- the benches ------------------------------------------------------------------


def bench_violations() -> list[str]:
    """``timpy.cli.bench``: a command's module imports ``common`` and no other
    bench; ``common`` imports none; the group (``__init__``) names its
    commands' modules as text and imports none, so one bench loads no other."""
    problems = []
    folder = PACKAGE / "cli" / "bench"
    for path in sorted(folder.glob("*.py")):
        importer = module_name(path)
        allowed = {"timpy.cli.bench.common"} if path.stem not in {"__init__", "common"} else set()
        for line, imported in imports_of(path.read_text(encoding="utf-8"), importer, path.name == "__init__.py"):
            if imported.startswith("timpy.cli.bench") and imported not in allowed:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {importer} imports {imported}: "
                                "a bench imports only timpy.cli.bench.common; move what two benches share there")
    return problems


def test_benches_import_only_their_common_module() -> None:
    problems = bench_violations()
    assert not problems, "benches importing each other:\n" + "\n".join(problems)


# --- the tests ----------------------------------------------------------------------

TESTS = PACKAGE.parent / "tests"


def names_a_test_module(dotted: str) -> bool:
    """A dotted name with a part pytest collects as a module (``test_*.py`` or ``*_test.py``)."""
    return any(part.startswith("test_") or part.endswith("_test") for part in dotted.split("."))


def imported_test_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """Every test module that a module's text imports, in any form: ``import
    tests.a.test_b``, ``from tests.a.test_b import x``, ``from tests.a import
    test_b``, relative (``from .test_b import x``, ``from . import test_b``),
    inside functions too."""
    found: list[tuple[int, str]] = []
    for node, target in import_statements(source, module, is_package):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if names_a_test_module(alias.name)]
        elif isinstance(node, ast.ImportFrom):
            if names_a_test_module(target):
                found.append((node.lineno, target))
            else:
                found += [(node.lineno, f"{target}.{a.name}") for a in node.names if names_a_test_module(a.name)]
    return found


def cross_test_imports() -> list[str]:
    problems = []
    for path in sorted(TESTS.rglob("*.py")):
        importer = module_name(path)
        for line, imported in imported_test_modules(path.read_text(encoding="utf-8"), importer, path.name == "__init__.py"):
            problems.append(
                f"{path.relative_to(PACKAGE.parent)}:{line}: {importer} imports the test module {imported}: "
                "move what they share into a module of tests/support/ (a fixture into the nearest conftest.py) "
                "and import it from there in both"
            )
    return problems


def test_no_test_module_imports_another() -> None:
    """A helper or fixture two test modules share lives in tests/support/ or a
    conftest.py: importing a test module runs its module body a second time,
    shares its fixtures unseen, and breaks when its tests move."""
    problems = cross_test_imports()
    assert not problems, "test modules importing test modules:\n" + "\n".join(problems)


def test_the_test_import_checker_sees_every_form() -> None:
    source = (
        "import tests.cluster.test_routing\n"
        "from tests.cluster.test_owner_restart import send_until_acked\n"
        "from tests.store import test_repository as r\n"
        "from .test_bad_input import Raw\n"
        "from . import test_admin, helpers\n"
        "from tests.support.clients import clients\n"
        "from tests.conftest import PASSWORD\n"
        "import tests.store.backends\n"
        "def later():\n"
        "    from ..store.test_shared_node import shared_config\n"
    )
    found = [name for _, name in imported_test_modules(source, "tests.gateway.test_probe")]
    assert found == [
        "tests.cluster.test_routing", "tests.cluster.test_owner_restart", "tests.store.test_repository",
        "tests.gateway.test_bad_input", "tests.gateway.test_admin", "tests.store.test_shared_node",
    ]
