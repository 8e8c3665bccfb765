"""Many sends in flight on one connection: every request is answered once,
by its request id; a conversation keeps the order the sends arrived in; a bad
send fails alone; a retried client id is a duplicate with its first number."""

import random

import trio

import timpy
from tests.conftest import PASSWORD, node_config, users
from tests.support.raw_frames import Raw
from timpy.errors import Code
from timpy.wire import protocol as wp


async def _login(node: timpy.Node, name: str) -> Raw:
    raw = await Raw.open(node)
    await raw.hello()
    await raw.send("login", rid=1, name=name, password=PASSWORD, device="d", no_sync=True)
    op, _ = await raw.receive()
    assert op == "login_ok"
    return raw


async def test_sends_in_flight_are_answered_by_request_id_in_conversation_order():
    async with timpy.open_node(node_config()) as node:
        await users(node.tcp_url, "alice", "bob", "carol")
        alice, bob = await _login(node, "alice"), await _login(node, "bob")
        plan: list[tuple[int, str, str, int]] = []  # rid, recipient, client id, kind
        for k in range(60):
            plan.append((100 + k, random.choice(["bob", "carol"]), f"m{k}", 0))
        bad_rid = 100 + random.randrange(60)
        plan[bad_rid - 100] = (bad_rid, "bob", "bad", -5)  # an unknown kind
        again = random.choice([p for p in plan if p[3] == 0])
        plan.append((500, again[1], again[2], 0))  # the same client id again
        # All written at once, nothing read in between.
        data = b"".join(wp_frame(rid, to, cid, kind) for rid, to, cid, kind in plan)
        await alice.stream.send_all(data)

        answers: dict[int, tuple[str, object]] = {}
        with trio.fail_after(20):
            while len(answers) < len(plan):
                frame = await _frame(alice)
                op, body = wp.operation_of(frame)
                if op == "delivery":
                    continue  # alice's own messages, echoed to her terminal
                assert op in ("ack", "error"), (op, body)
                rid = frame.rid
                assert rid not in answers, f"request {rid} answered twice"
                answers[rid] = (op, body)

        assert answers[bad_rid][0] == "error" and answers[bad_rid][1].code == Code.INVALID_MESSAGE
        seqs: dict[str, list[int]] = {"bob": [], "carol": []}
        first_seq: dict[str, int] = {}
        for rid, to, cid, _kind in plan:
            op, body = answers[rid]
            if rid in (bad_rid, 500):
                continue
            assert op == "ack" and body.client_id == cid and not body.duplicate
            seqs[to].append(body.seq)
            first_seq[cid] = body.seq
        for to, got in seqs.items():
            assert got == list(range(1, len(got) + 1)), (to, got)  # request order, gap-free
        op, body = answers[500]
        assert op == "ack" and body.duplicate and body.seq == first_seq[again[2]]

        # bob receives his messages once each, in order
        expected = [cid for rid, to, cid, _kind in plan if to == "bob" and rid not in (bad_rid, 500)]
        got_ids: list[str] = []
        with trio.fail_after(20):
            while len(got_ids) < len(expected):
                op, body = await bob.receive()
                if op == "delivery":
                    got_ids.append(body.message.client_id)
        assert got_ids == expected
        await alice.stream.aclose()
        await bob.stream.aclose()


def wp_frame(rid: int, to: str, client_id: str, kind: int) -> bytes:
    from timpy.wire.framing import frame_bytes

    return frame_bytes(wp.encode(wp.make_frame(
        "send", rid=rid, message=wp.Message(client_id=client_id, recipient=to, body=b"hi", kind=kind)
    )))


async def _frame(raw: Raw) -> object:
    """The next whole frame (with its request id)."""
    while not raw.ready:
        data = await raw.stream.receive_some(65536)
        assert data, "the node closed the connection"
        raw.ready += raw.decoder.feed(data)
    return wp.decode(raw.ready.pop(0))
