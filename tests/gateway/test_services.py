"""The gateway is typed against `NodeServices`, a protocol it defines; a real node must satisfy it,
and the gateway must use nothing of the node that the protocol does not list."""

from __future__ import annotations

import ast
import importlib
import inspect
import types
import typing
from pathlib import Path

import timpy
from tests.conftest import node_config
from timpy.gateway import services
from timpy.gateway.services import Counts, GatewayMetrics, NodeServices, Observes

GATEWAY = Path(services.__file__).parent


def type_namespace() -> dict[str, object]:
    """The names services.py imports under TYPE_CHECKING, imported for real."""
    namespace: dict[str, object] = {}
    for node in ast.walk(ast.parse(Path(services.__file__).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module not in (None, "__future__", "typing"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                namespace[alias.asname or alias.name] = getattr(module, alias.name)
    return namespace


def members(protocol: type) -> dict[str, object]:
    return {
        name: value for name, value in vars(protocol).items()
        if not name.startswith("_") and (isinstance(value, property) or callable(value))
    }


def check_satisfies(obj: object, protocol: type, namespace: dict[str, object]) -> list[str]:
    problems = []
    for name, member in members(protocol).items():
        if not hasattr(obj, name):
            problems.append(f"{type(obj).__name__} has no {name}, which {protocol.__name__} lists")
            continue
        value = getattr(obj, name)
        if isinstance(member, property):
            wanted = typing.get_type_hints(member.fget, localns=namespace)["return"]
            if wanted in (GatewayMetrics, Counts, Observes):
                problems += check_satisfies(value, wanted, namespace)
            elif isinstance(wanted, type) and not isinstance(value, wanted):
                problems.append(f"{name} is a {type(value).__name__}, {protocol.__name__} wants {wanted.__name__}")
            elif isinstance(wanted, types.UnionType) and not isinstance(
                value, tuple(typing.get_origin(t) or t for t in typing.get_args(wanted))
            ):
                problems.append(f"{name} is a {type(value).__name__}, {protocol.__name__} wants {wanted}")
        else:
            if inspect.iscoroutinefunction(member) != inspect.iscoroutinefunction(value):
                problems.append(f"{name}: async on one side only")
            want = list(inspect.signature(member).parameters.values())[1:]
            have = list(inspect.signature(value).parameters.values())
            shape = [(p.name, p.kind, p.default) for p in want]
            if shape != [(p.name, p.kind, p.default) for p in have]:
                problems.append(f"{name}{inspect.signature(value)} differs from the protocol's {shape}")
    return problems


async def test_a_running_node_provides_every_service_the_gateway_uses(tmp_path):
    async with timpy.open_node(node_config()) as node:
        assert check_satisfies(node, NodeServices, type_namespace()) == []


def test_the_checker_refuses_an_object_missing_a_member():
    class Partial:
        node_id = "n1"

    problems = check_satisfies(Partial(), NodeServices, type_namespace())
    assert "Partial has no accounts, which NodeServices lists" in problems


def test_the_gateway_uses_only_what_the_protocol_lists():
    """Every `node.X` / `self.node.X` in the gateway names a member of NodeServices."""
    listed = set(members(NodeServices))
    used = {}
    for path in GATEWAY.glob("*.py"):
        for n in ast.walk(ast.parse(path.read_text())):
            if not isinstance(n, ast.Attribute):
                continue
            base = n.value
            is_node = (isinstance(base, ast.Name) and base.id == "node") or (
                isinstance(base, ast.Attribute) and base.attr == "node"
                and isinstance(base.value, ast.Name) and base.value.id == "self"
            )
            if is_node:
                used.setdefault(n.attr, path.name)
    assert {name: where for name, where in used.items() if name not in listed} == {}
    assert listed - set(used) == set(), "the protocol lists members the gateway no longer uses"
