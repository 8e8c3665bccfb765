"""A click group whose commands are imported when they are named."""

from __future__ import annotations

import importlib
from typing import Any

import click


class LazyGroup(click.Group):
    """A command group that imports a command's module only when the command
    is named (or help lists them all): ``lazy`` maps each command's name to
    ``"module:attribute"``. So ``timpy chat`` does not load the benchmarks,
    nor ``timpy cluster status`` the whole node (several seconds of start-up
    on a busy machine), nor one ``timpy bench`` the other benches."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attr = self.lazy[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)
