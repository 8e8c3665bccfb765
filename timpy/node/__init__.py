"""The node: one object that owns a trio nursery and wires the layers."""

from timpy.node.node import Node, open_node

__all__ = ["Node", "open_node"]
