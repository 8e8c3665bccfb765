"""A chat app's home screen and search box: the conversation list (last
message, unread and mention counts, pinned first) and search over sealed
messages, on three in-process nodes (timpy.testing, mock clock, no socket)."""

import trio
import trio.testing

from timpy import ConversationEntry
from timpy.testing import open_cluster


async def main() -> None:
    async with open_cluster(3, seed=7) as cluster:
        for i, name in enumerate(("ann", "bob", "cat")):
            await cluster.register(i, name, "correct-horse")
        async with cluster.client(0, "ann", "correct-horse") as ann, \
                cluster.client(1, "bob", "correct-horse") as bob, \
                cluster.client(2, "cat", "correct-horse") as cat:
            await ann.send("bob", "the ferry leaves the harbour at nine")
            crew = await cat.create_group("crew", ["ann", "bob"], policy="invite")
            await cat.send_group(crew.group, "bob, bring the harbour map", mentions=["bob"])
            await bob.set_conversation(crew.group, pinned=True)
            page = await bob.conversations()
            for e in page.entries:
                title = e.name if e.group else e.peer
                last = e.last.body.decode() if e.last else ""
                print(f"{'📌' if e.pinned else '  '} {title:6} unread {e.unread} (@{e.mentions})  {last}")
            found = await bob.search("harb")
            print(f"'harb' is in {found.count} messages:", [(h.conversation[:8], h.seq) for h in found.hits])
            await bob.receipt(crew.group, 1)
            while True:  # the list is kept current on every terminal of bob
                e = await bob.next_notice(ConversationEntry, timeout=5)
                if e.conversation == crew.group and e.unread == 0:
                    print("after reading:", e.name, "unread", e.unread)
                    break


trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
