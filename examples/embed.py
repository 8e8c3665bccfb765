"""Embed a timpy node in your own trio program and talk to it with the client.

Run: python examples/embed.py
"""

import trio

import timpy


async def main() -> None:
    config = timpy.NodeConfig(memory=True, listen="127.0.0.1:0", ws="127.0.0.1:0", cluster=timpy.ClusterConfig(listen="127.0.0.1:0"))
    async with timpy.open_node(config) as node:
        print("node", node.node_id, "listening on", node.tcp_url, "and", node.ws_url)
        await timpy.register(node.tcp_url, "alice", "alice-password")
        await timpy.register(node.tcp_url, "bob", "bob-password")
        async with (
            timpy.connect(node.tcp_url, "alice", "alice-password") as alice,
            timpy.connect(node.ws_url, "bob", "bob-password") as bob,
        ):
            ack = await alice.send("bob", "Hello Bob!")
            print(f"alice sent #{ack.seq} in conversation {ack.conversation}")
            message = await bob.next_message(timeout=5)
            print(f"bob got from {message.sender}: {message.body.decode()}")
            await bob.send("alice", "Hi Alice!")
            page = await alice.history("bob")
            for m in page.messages:
                print(f"  #{m.seq} {m.sender}: {m.body.decode()}")
            assert [m.body for m in page.messages] == [b"Hello Bob!", b"Hi Alice!"]


if __name__ == "__main__":
    trio.run(main)
