"""Five full nodes in one process, a 3/2 network split for 30 seconds, and a
node killed and restarted with its data: timpy.testing under trio's mock
clock, so the whole story takes well under a second and opens no socket."""

import tempfile
from pathlib import Path

import trio
import trio.testing

from timpy.testing import open_cluster


async def main() -> None:
    with tempfile.TemporaryDirectory() as data:
        async with open_cluster(5, data_dir=Path(data)) as cluster:
            await cluster.register(0, "alice", "correct-horse")
            await cluster.register(1, "bob", "correct-horse")
            async with cluster.client(2, "alice", "correct-horse") as alice:
                await alice.send("bob", "before the split")

                cluster.partition({0, 1, 2}, {3, 4})
                await trio.sleep(30)  # virtual seconds: the majority declares nodes 3 and 4 dead
                print("during the split node 0 sees", len(cluster.nodes[0].peers.placement.members), "nodes")
                cluster.heal()
                await cluster.wait_converged()

                await cluster.kill(4)  # abrupt, like SIGKILL
                await alice.send("bob", "while node 4 is down")
                await cluster.restart(4)  # same identity, same SQLite file, new incarnation
                await cluster.wait_converged()

            async with cluster.client(4, "bob", "correct-horse") as bob:
                page = await bob.history("alice")
                print("bob reads through node 4:", [m.body.decode() for m in page.messages])
    print(f"{trio.current_time():.0f} virtual seconds passed")


trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
