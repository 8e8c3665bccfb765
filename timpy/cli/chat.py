"""``timpy chat``: register, log in, send and read from a terminal.

Lines typed are sent to the current peer; commands start with '/':
/to NAME, /history [N], /quit. With --send the command sends one message
and exits; with --history it prints the conversation and exits.

``--url`` may be given several times (nodes of one cluster): the chat fails
over to the next when its connection closes, and says so on screen.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import datetime
from typing import TypeVar

import click
import trio

import timpy
from timpy.client.client import TlsError, UrlError, parse_url
from timpy.errors import Code, RemoteError
from timpy.wire.messages import ChatMessage


def _line(m: ChatMessage) -> str:
    when = datetime.fromtimestamp(m.server_time / 1000).strftime("%H:%M:%S")
    return f"[{when}] #{m.seq} {m.sender} -> {m.recipient}: {m.body.decode(errors='replace')}"


@click.command()
@click.option("--url", "urls", multiple=True, default=("tcp://127.0.0.1:7070",), show_default=True,
              help="Node to connect to (tcp://, tcps://, ws://, wss://); repeat it to fail over to other nodes.")
@click.option("--ca", type=click.Path(dir_okay=False), help="PEM file of a private CA that signed the nodes' TLS certificates.")
@click.option("--user", required=True, help="Your user name.")
@click.option("--password", prompt=True, hide_input=True, help="Your password (prompted if not given).")
@click.option("--register", "do_register", is_flag=True, help="Create the account first.")
@click.option("--device", default="terminal", show_default=True, help="This terminal's device name.")
@click.option("--to", "peer", help="Who to talk to.")
@click.option("--send", "text", help="Send this one message to --to and exit.")
@click.option("--history", "history", type=int, help="Print the last N messages with --to and exit.")
@click.option("--listen", "listen_for", type=float, help="Print incoming messages for this many seconds and exit.")
def chat(urls: tuple[str, ...], ca: str | None, user: str, password: str, do_register: bool, device: str,
         peer: str | None, text: str | None, history: int | None, listen_for: float | None) -> None:
    """Chat from the terminal."""
    try:
        for url in urls:
            parse_url(url)
        trio.run(_chat, list(urls), ca, user, password, do_register, device, peer, text, history, listen_for)
    except (RemoteError, UrlError, TlsError) as exc:
        raise click.ClickException(getattr(exc, "text", None) or str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot reach {', '.join(urls)}: {exc}; is the node running?") from None


T = TypeVar("T")
READY_WAIT = 20.0  # seconds a one-shot command retries while the cluster answers "unavailable"


async def _when_ready(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, again while the node answers UNAVAILABLE (a node still
    joining its cluster, a ring change on its way), for up to READY_WAIT
    seconds; the first such answer is shown on stderr."""
    deadline, delay, told = trio.current_time() + READY_WAIT, 0.25, False
    while True:
        try:
            return await call()
        except RemoteError as exc:
            if exc.code != Code.UNAVAILABLE or trio.current_time() + delay > deadline:
                raise
            if not told:
                click.echo(f"{exc.text}; trying again for up to {READY_WAIT:.0f} s", err=True)
                told = True
        await trio.sleep(delay)
        delay = min(delay * 2, 2.0)


async def _chat(urls: list[str], ca: str | None, user: str, password: str, do_register: bool, device: str,
                peer: str | None, text: str | None, history: int | None, listen_for: float | None) -> None:
    if do_register:
        await _when_ready(lambda: timpy.register(urls, user, password, ca=ca))
        click.echo(f"registered {user}")
        if peer is None and text is None and history is None and listen_for is None:
            return
    interactive = text is None and history is None and listen_for is None
    async with AsyncExitStack() as stack:
        client = await _when_ready(lambda: stack.enter_async_context(timpy.connect(
            urls, user, password, device=device, ca=ca, failover=interactive or None,
            on_status=lambda line: click.echo(f"\r*** {line}"))))
        if text is not None or history is not None or listen_for is not None:
            if text is not None:
                if not peer:
                    raise click.UsageError("--send needs --to")
                client_id = secrets.token_hex(8)  # the same id on every try: stored once
                ack = await _when_ready(lambda: client.send(peer, text, client_id=client_id))
                click.echo(f"sent #{ack.seq}")
            if history is not None:
                if not peer:
                    raise click.UsageError("--history needs --to")
                page = await _when_ready(lambda: client.history(peer, limit=history))
                for m in page.messages:
                    click.echo(_line(m))
            if listen_for is not None:
                with trio.move_on_after(listen_for):
                    async for m in client.events():
                        click.echo(_line(m))
            return
        await _interactive(client, peer)


async def _interactive(client: timpy.Client, peer: str | None) -> None:
    click.echo(f"logged in as {client.user}. Type a message, or /to NAME, /history [N], /quit")
    state = {"peer": peer}

    async with trio.open_nursery() as nursery:

        async def show() -> None:
            # Ends when the connection is closed for good (failover gave up,
            # or the node refused this device): say why at once, and stop.
            async for m in client.events():
                click.echo("\r" + _line(m))
            click.echo(f"\r*** disconnected: {client.closed_reason}")
            nursery.cancel_scope.cancel()

        nursery.start_soon(show)
        stdin = trio.wrap_file(sys.stdin)
        while True:
            line = await stdin.readline()
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            try:
                if line == "/quit":
                    break
                if line.startswith("/to "):
                    state["peer"] = line[4:].strip()
                    click.echo(f"talking to {state['peer']}")
                elif line.startswith("/history"):
                    if not state["peer"]:
                        click.echo("first: /to NAME")
                        continue
                    n = int(line.split()[1]) if len(line.split()) > 1 else 20
                    for m in (await client.history(state["peer"], limit=n)).messages:
                        click.echo(_line(m))
                elif line.startswith("/"):
                    click.echo("commands: /to NAME, /history [N], /quit")
                elif not state["peer"]:
                    click.echo("first: /to NAME")
                else:
                    ack = await client.send(state["peer"], line)
                    click.echo(f"  (sent #{ack.seq})")
            except RemoteError as exc:
                click.echo(f"error: {exc.text}")
        nursery.cancel_scope.cancel()
