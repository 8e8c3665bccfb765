"""Message reactions: the last-writer-wins map (pure, hypothesis), the acting
rules, and a three-node cluster where a reaction is seen live, in history on
every replica, removed, sealed on disk and kept when its owner dies."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import timpy
from tests.conftest import PASSWORD
from timpy.client.client import fold_reaction
from timpy.crypto.seal import Sealer
from timpy.errors import Code, RequestError
from timpy.im import kinds
from timpy.store.engine import sqlite_engine
from timpy.store.repository import Repository
from timpy.store.rows import NewMessage
from timpy.testing import open_cluster
from timpy.wire.messages import (
    KIND_NORMAL,
    KIND_REACT,
    KIND_RECALL,
    MAX_REACTION_ENTRIES,
    MAX_REACTION_KEYS,
    ChatMessage,
    MessageContent,
    apply_reaction,
    reactions_of,
    with_reaction,
)

# --- the map ------------------------------------------------------------------------

# One reaction: (seq, key, user, on). Seqs are unique (one REACT message per seq).
actions = st.lists(
    st.tuples(st.sampled_from(["👍", "❤", "ok"]), st.sampled_from(["ann", "ben", "cy"]), st.booleans()),
    max_size=25,
).map(lambda xs: [(seq, *x) for seq, x in enumerate(xs, start=10)])


def fold(ext: dict[str, str], sequence: list[tuple[int, str, str, bool]]) -> dict[str, str]:
    for seq, key, user, on in sequence:
        ext = with_reaction(ext, key, user, seq, on) or ext
    return ext


def by_seq(sequence: list[tuple[int, str, str, bool]]) -> dict[str, list[str]]:
    """What the reactions are: each (key, user)'s action with the highest seq."""
    last: dict[tuple[str, str], bool] = {}
    for _seq, key, user, on in sorted(sequence):
        last[(key, user)] = on
    shown: dict[str, list[str]] = {}
    for (key, user), on in sorted(last.items()):
        if on:
            shown.setdefault(key, []).append(user)
    return shown


@given(actions, st.randoms(use_true_random=False), st.data())
def test_any_order_and_any_duplicates_give_the_same_reactions(sequence, rng, data):
    shuffled = list(sequence)
    rng.shuffle(shuffled)
    repeated = shuffled + data.draw(st.lists(st.sampled_from(sequence), max_size=10)) if sequence else shuffled
    rng.shuffle(repeated)
    base = {"edited": "1"}
    in_order, any_order = fold(base, sequence), fold(base, repeated)
    assert reactions_of(in_order) == reactions_of(any_order) == by_seq(sequence)
    assert in_order == any_order  # byte for byte: every copy stores the same ext
    assert any_order["edited"] == "1"  # other ext entries stay


def test_an_action_applies_only_over_an_older_one():
    ext = with_reaction({}, "👍", "ann", 5, True)
    assert with_reaction(ext, "👍", "ann", 5, True) is None  # the same message again
    assert with_reaction(ext, "👍", "ann", 4, False) is None  # an older removal lands late: it loses
    removed = with_reaction(ext, "👍", "ann", 6, False)
    assert reactions_of(removed) == {}
    assert with_reaction(removed, "👍", "ann", 3, True) is None  # the tombstone beats an older add
    assert reactions_of(with_reaction(removed, "👍", "ann", 7, True)) == {"👍": ["ann"]}
    assert reactions_of({"reactions": "not json"}) == {}


def test_a_terminal_folds_live_reactions_into_what_it_shows():
    shown = [ChatMessage("c", 1, "a", "ann", "ben", KIND_NORMAL, b"hi", 1, {}),
             ChatMessage("c", 2, "b", "ben", "ann", KIND_NORMAL, b"yo", 2, {})]
    react = ChatMessage("c", 3, "r", "ben", "ann", KIND_REACT, b"", 3, {"target": "1", "key": "👍", "on": "1"})
    assert fold_reaction(shown, react) and shown[0].reactions == {"👍": ["ben"]}
    assert not fold_reaction(shown, react)  # twice: nothing more
    assert not fold_reaction(shown, ChatMessage("other", 4, "r", "ben", "ann", KIND_REACT, b"", 4, react.ext))
    assert apply_reaction(shown[1], react) is shown[1]


# --- the rules and the store's effect -----------------------------------------------------


def target(ext: dict[str, str] | None = None, kind: int = KIND_NORMAL) -> ChatMessage:
    return ChatMessage("c", 3, "id", "ann", "ben", kind, b"text", 1_000, ext or {})


def check(actor: str, t: ChatMessage | None, key: str = "👍", on: str = "1") -> None:
    kinds.check_acting(KIND_REACT, actor, t, 2_000, 60_000, False, {"target": "3", "key": key, "on": on})


@pytest.mark.parametrize(("ext", "says"), [
    ({"target": "3"}, "emoji or a word"),
    ({"target": "3", "key": ""}, "emoji or a word"),
    ({"target": "3", "key": "x" * 17}, "emoji or a word"),
    ({"target": "3", "key": " ok"}, "spaces"),
    ({"target": "3", "key": "a\nb"}, "control"),
    ({"target": "3", "key": "ok", "on": "yes"}, '"1" or removed'),
    ({"key": "ok"}, "target"),
])
def test_a_bad_reaction_is_a_clear_error(ext, says):
    with pytest.raises(RequestError, match=says) as err:
        kinds.target_of(KIND_REACT, ext)
    assert err.value.code == Code.INVALID_MESSAGE


def test_who_may_react_to_what_and_how_many():
    check("ben", target())  # any member, on any ordinary message
    check("ann", target())  # its sender too
    for gone in (None, target(kind=timpy.KIND_DELETED)):
        with pytest.raises(RequestError) as err:
            check("ben", gone)
        assert err.value.code == Code.NO_SUCH_MESSAGE
    with pytest.raises(RequestError, match="ordinary message"):
        check("ben", target(kind=KIND_REACT))
    full: dict[str, str] = {}
    for i in range(MAX_REACTION_KEYS):
        full = with_reaction(full, f"k{i}", "ann", i + 1, True)
    check("ben", target(full), key="k0")  # one more user on a shown reaction
    with pytest.raises(RequestError, match=f"at most {MAX_REACTION_KEYS}") as err:
        check("ben", target(full), key="new")
    assert err.value.code == Code.LIMIT_REACHED
    check("ben", target(full), key="new", on="0")  # removing is never refused by the bound
    crowded: dict[str, str] = {}
    for i in range(MAX_REACTION_ENTRIES):
        crowded = with_reaction(crowded, "👍", f"u{i}", i + 1, i % 2 == 0)
    check("u1", target(crowded))  # an entry of one's own is there already
    with pytest.raises(RequestError, match=f"limit of {MAX_REACTION_ENTRIES}"):
        check("newcomer", target(crowded))


def test_the_store_effect_orders_reactions_by_their_seq():
    original = MessageContent("c1", "ann", "ben", KIND_NORMAL, b"hi", {}).pack()
    add = MessageContent("r1", "ben", "ann", KIND_REACT, b"", {"target": "1", "key": "👍", "on": "1"}).pack()
    remove = MessageContent("r2", "ben", "ann", KIND_REACT, b"", {"target": "1", "key": "👍", "on": "0"}).pack()
    results = set()
    for order in itertools.permutations([(add, 2), (remove, 3), (add, 2)]):
        content = original
        for acting, seq in order:
            target_seq, transform = kinds.effect_of(acting, seq)
            assert target_seq == 1
            content = transform(content)
        results.add(content)
    assert len(results) == 1  # the removal (seq 3) wins in every order
    assert reactions_of(MessageContent.unpack(results.pop()).ext) == {}
    recall = MessageContent("r3", "ann", "ben", KIND_RECALL, b"", {"target": "1"}).pack()
    assert kinds.effect_of(recall, 4)[1](original) is None


# --- the store: rows landing on a replica in any order ------------------------------------

ANN, BEN, CONV = b"a" * 16, b"b" * 16, b"c" * 16


def _replica() -> Repository:
    repo = Repository(sqlite_engine(None), Sealer(bytes(range(32))), kinds.effect_of)
    repo.create_schema()
    for u in (ANN, BEN):
        repo.create_account(u, b"secret", b"profile")
    return repo


def _stored_reactions(repo: Repository) -> dict[str, str]:
    row = repo.get_message(CONV, 1)
    assert row is not None
    return MessageContent.unpack(row.content).ext


@settings(max_examples=30, deadline=None)
@given(actions, st.randoms(use_true_random=False), st.data())
def test_a_replica_applying_copied_rows_in_any_order_agrees_with_the_owner(sequence, rng, data):
    owner, replica = _replica(), _replica()
    owner.write_batch([NewMessage(CONV, (ANN, BEN), ANN, b"\0" * 16, 1000,
                                  MessageContent("m", "ann", "ben", KIND_NORMAL, b"hi", {}).pack())])
    replica.apply_copies(owner.conversation_copies(CONV, 0, 1))  # the target, before any reaction
    users = {"ann": ANN, "ben": BEN, "cy": BEN}
    owner.write_batch([
        NewMessage(CONV, (ANN, BEN), users[user], seq.to_bytes(16, "big"), 1000 + seq,
                   MessageContent(f"r{seq}", user, "", KIND_REACT, b"", {"target": "1", "key": key,
                                                                         "on": "1" if on else "0"}).pack())
        for seq, key, user, on in sequence
    ])
    rows = [owner.conversation_copies(CONV, seq, 1) for seq in range(1, len(sequence) + 1)]
    again = data.draw(st.lists(st.sampled_from(rows), max_size=5)) if rows else []
    arriving = rows + again
    rng.shuffle(arriving)
    for bundle in arriving:  # out of order, some twice: as repair and moves may hand them over
        replica.apply_copies(bundle)
    assert _stored_reactions(replica) == _stored_reactions(owner)
    assert reactions_of(_stored_reactions(owner)) == by_seq(sequence)  # seqs there keep the drawn order


# --- three nodes --------------------------------------------------------------------------


async def _next_reaction(client: timpy.Client) -> ChatMessage:
    while True:
        m = await client.next_message(timeout=20)
        if m.kind == KIND_REACT:
            return m


async def _reactions_on_every_copy(cluster, conv: bytes, seq: int, want: dict[str, list[str]]) -> int:  # noqa: ANN001
    """Wait until every running node that should hold the conversation holds
    the message with these reactions; returns how many copies were checked."""
    with trio.fail_after(60):
        while True:
            running = [n for i, n in enumerate(cluster.nodes) if cluster.running(i)]
            holders = set(running[0].peers.placement.replicas(conv))
            copies = []
            for n in running:
                if n.node_id in holders:
                    row = await n.store.run(n.store.repo.get_message, conv, seq)
                    copies.append(None if row is None else reactions_of(MessageContent.unpack(row.content).ext))
            if copies and all(c == want for c in copies):
                return len(copies)
            await trio.sleep(0.2)


async def test_reactions_live_in_history_on_every_replica_removed_sealed_and_moved(autojump_clock, tmp_path: Path):
    async with open_cluster(3, data_dir=tmp_path) as cluster:
        await cluster.register(0, "ann", PASSWORD)
        await cluster.register(0, "ben", PASSWORD)
        async with cluster.client(1, "ann", PASSWORD) as ann, cluster.client(2, "ben", PASSWORD) as ben:
            await ben.wait_synced()
            hi = await ann.send("ben", "hi")
            conv = bytes.fromhex(hi.conversation)
            shown = [await ben.next_message(timeout=20)]

            await ben.react(hi.seq, "👍", to="ann")
            live = await _next_reaction(ann)  # ann's terminal sees it live
            assert live.sender == "ben" and live.ext == {"target": str(hi.seq), "key": "👍", "on": "1"}
            await ann.react(hi.seq, "applause", to="ben")
            assert fold_reaction(shown, await _next_reaction(ben))
            assert shown[0].reactions == {"applause": ["ann"]}  # ben folded ann's; his own he knows
            want = {"applause": ["ann"], "👍": ["ben"]}
            for c in (ann, ben):
                page = await c.history("ben" if c is ann else "ann")
                assert [m.kind for m in page.messages] == [KIND_NORMAL]  # reactions are not messages in history
                assert page.messages[0].reactions == want
            assert await _reactions_on_every_copy(cluster, conv, hi.seq, want) >= 2

            await ben.unreact(hi.seq, "👍", to="ann")
            removed = await _next_reaction(ann)
            assert removed.ext["on"] == "0"
            want = {"applause": ["ann"]}
            assert (await ann.history("ben")).messages[0].reactions == want
            await _reactions_on_every_copy(cluster, conv, hi.seq, want)

            # Refused: an unknown message, a recalled one, a reaction that is not one.
            with pytest.raises(timpy.RemoteError) as err:
                await ben.react(99, "👍", to="ann")
            assert err.value.code == Code.NO_SUCH_MESSAGE
            gone = await ann.send("ben", "oops")
            await ann.recall(gone.seq, to="ben")
            with pytest.raises(timpy.RemoteError) as err:
                await ben.react(gone.seq, "👍", to="ann")
            assert err.value.code == Code.NO_SUCH_MESSAGE
            with pytest.raises(timpy.RemoteError) as err:
                await ben.react(hi.seq, "far too long a reaction", to="ann")
            assert err.value.code == Code.INVALID_MESSAGE

        # Nothing of a reaction is readable at rest.
        files = [p for p in tmp_path.rglob("*") if p.is_file()]
        assert any(p.name.startswith("timpy.sqlite3") for p in files)
        for p in files:
            raw = p.read_bytes()
            assert "👍".encode() not in raw and b"applause" not in raw and b"reactions" not in raw, p

        # The owner dies: the ring moves the conversation, and its reactions with it.
        owner = cluster.node_ids.index(cluster.nodes[0].peers.placement.owner(conv))
        await cluster.kill(owner)
        await trio.sleep(20)  # the others declare it dead and move its keys
        alive = [i for i in range(3) if i != owner]
        assert all(len(cluster.nodes[i].peers.placement.members) == 2 for i in alive)
        await _reactions_on_every_copy(cluster, conv, hi.seq, want)
        async with cluster.client(alive[0], "ben", PASSWORD, device="d2") as ben:
            page = await ben.history("ann")
            assert page.messages[0].reactions == want
            await ben.react(hi.seq, "🎉", to="ann")  # the new owner takes new ones
            assert (await ben.history("ann")).messages[0].reactions == {"applause": ["ann"], "🎉": ["ben"]}


async def test_group_members_react_and_the_send_rules_apply(autojump_clock):
    async with open_cluster(3) as cluster:
        for i, name in enumerate(("ann", "ben", "cy", "dee")):
            await cluster.register(i % 3, name, PASSWORD)
        async with (
            cluster.client(0, "ann", PASSWORD) as ann, cluster.client(1, "ben", PASSWORD) as ben,
            cluster.client(2, "cy", PASSWORD) as cy, cluster.client(2, "dee", PASSWORD) as dee,
        ):
            team = await ann.create_group("Team", ["ben", "cy"], policy="open")
            await ben.wait_synced()
            posted = await ann.send_group(team.group, "release on friday")
            await ben.react(posted.seq, "🚀", group=team.group)
            await cy.react(posted.seq, "🚀", group=team.group)
            seen = {(m.sender, m.ext["key"]) for m in [await _next_reaction(ann), await _next_reaction(ann)]}
            assert seen == {("ben", "🚀"), ("cy", "🚀")}  # every member's terminal gets them live
            page = await ann.history(conversation=team.group)
            assert page.messages[-1].reactions == {"🚀": ["ben", "cy"]}
            # Not a member: the send checks refuse it, and nothing changes.
            with pytest.raises(timpy.RemoteError) as err:
                await dee.react(posted.seq, "👎", group=team.group)
            assert err.value.code == Code.NOT_A_MEMBER
            # Muted: a member who may not send may not react either.
            await ann.group("mute", team.group, users=["cy"], flag=True)
            with pytest.raises(timpy.RemoteError) as err:
                await cy.unreact(posted.seq, "🚀", group=team.group)
            assert err.value.code == Code.MUTED
            assert (await ben.history(conversation=team.group)).messages[-1].reactions == {"🚀": ["ben", "cy"]}
