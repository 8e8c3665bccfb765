"""An echo bot: answers every message it receives with the same text.

Run against a node:  python examples/echo_bot.py tcp://127.0.0.1:7070
With no URL it starts its own in-memory node and a user who talks to the bot.
"""

import sys

import trio

import timpy

BOT, PASSWORD = "echo-bot", "echo-bot-password"


async def run_bot(url: str, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async with timpy.connect(url, BOT, PASSWORD, device="bot", create=True) as bot:
        task_status.started()
        async for message in bot.events():
            if message.sender != BOT:
                await bot.send(message.sender, b"echo: " + message.body)


async def demo() -> None:
    async with timpy.open_node(timpy.NodeConfig(memory=True, listen="127.0.0.1:0", ws=None, cluster=timpy.ClusterConfig(listen="127.0.0.1:0"))) as node:
        async with trio.open_nursery() as nursery:
            await nursery.start(run_bot, node.tcp_url)
            async with timpy.connect(node.tcp_url, "carol", "carol-password", create=True) as carol:
                for text in ("ping", "is anyone there?"):
                    await carol.send(BOT, text)
                    reply = await carol.next_message(timeout=5)
                    print(f"carol: {text!r} -> bot: {reply.body.decode()!r}")
                    assert reply.body == b"echo: " + text.encode()
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        trio.run(run_bot, sys.argv[1])
    else:
        trio.run(demo)
