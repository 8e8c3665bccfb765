"""A load generator for the partition test, run inside a network namespace:
``python -m tests.e2e.loadgen URL OUT --users a0,a1 --to b0,b1 [--register NAMES]``.

Each sender sends 1:1 messages round-robin to the recipients until the file
``OUT.stop`` appears (at most ``--max-seconds``), each with its own client id,
retrying a send with the same client id while the node answers UNAVAILABLE.
Every acknowledgement is written to OUT as a JSON line (sender, client id,
conversation, seq); refusals are counted by error code in OUT.errors.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import trio

import timpy

PASSWORD = "correct-horse"


async def sender(url: str, user: str, to: list[str], out: Path, stop: Path, deadline: float, errors: Counter) -> None:
    n = 0

    def done() -> bool:
        return time.monotonic() >= deadline or stop.exists()

    with out.open("a") as acks:
        while not done():
            try:
                async with timpy.connect(url, user, PASSWORD, sync=False) as client:
                    while not done():
                        recipient = to[n % len(to)]
                        client_id = f"{user}-{n}"
                        try:
                            with trio.fail_after(20):
                                ack = await client.send(recipient, f"{user} {n}", client_id=client_id)
                        except timpy.RemoteError as exc:
                            errors[exc.code.name] += 1
                            if client.closed_reason is not None:
                                break  # connect again
                            if exc.code != timpy.Code.UNAVAILABLE:
                                n += 1  # not retryable: the next message
                            await trio.sleep(0.2)
                            continue
                        acks.write(json.dumps({"sender": user, "to": recipient, "client_id": client_id,
                                               "conversation": ack.conversation, "seq": ack.seq}) + "\n")
                        acks.flush()
                        n += 1
            except Exception as exc:  # noqa: BLE001 - a connection that failed: count it, connect again
                errors[type(exc).__name__] += 1
                await trio.sleep(0.5)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("--users", default="")
    parser.add_argument("--to", default="")
    parser.add_argument("--register", default="")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    args = parser.parse_args()
    for name in filter(None, args.register.split(",")):
        await timpy.register(args.url, name, PASSWORD)
    users, to = list(filter(None, args.users.split(","))), list(filter(None, args.to.split(",")))
    errors: Counter = Counter()
    deadline = time.monotonic() + args.max_seconds
    stop = args.out.with_suffix(".stop")
    async with trio.open_nursery() as nursery:
        for user in users:
            nursery.start_soon(sender, args.url, user, [t for t in to if t != user], args.out, stop, deadline, errors)
    args.out.with_suffix(".errors.json").write_text(json.dumps(dict(errors)))


if __name__ == "__main__":
    trio.run(main)
