"""The node object and the embedding API ``open_node``.

Start-up order: keys, storage (schema and key check), domain services, the
writer, then listeners. Shutdown runs the other way: listeners and client
connections close first, the writer stores and acknowledges what was queued,
and storage closes last, so nothing acknowledged is lost.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import random
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import msgpack
import nacl.signing
import trio

from timpy.cluster import catalog as ops
from timpy.cluster.membership import Changed, MembershipConfig
from timpy.cluster.ownership import Epoch
from timpy.cluster.ownership_service import OwnershipService
from timpy.cluster.placement import Placement, ReplicationConfig
from timpy.cluster.service import ClusterService
from timpy.cluster.transport import PeerTransport, TcpPeerTransport, nat_settings
from timpy.concurrency import unwrap_single_error
from timpy.config import Limits, NodeConfig, env_name, flag_name, option_name, parse_hostport
from timpy.crypto.blind import BlindIndexer
from timpy.crypto.keys import ClusterKeys, derive_key, load_or_create_cluster_key, write_secret_file
from timpy.crypto.seal import Sealer
from timpy.crypto.tokens import TokenAuthority
from timpy.errors import ConfigError
from timpy.files import private_directory, tighten
from timpy.gateway.listeners import ConnectionGate, run_tcp_listener, run_ws_listener
from timpy.im import ids, kinds
from timpy.im.accounts import Accounts
from timpy.im.attachments import Attachments
from timpy.im.conversations import Conversations
from timpy.im.delivery import Deliverer
from timpy.im.events import NO_EVENTS, EventSink, event_id
from timpy.im.groups import Groups
from timpy.im.messaging import ActingKinds, BlockedSenders, Messenger
from timpy.im.peers import Peers
from timpy.im.presence import Presence
from timpy.im.push import Push
from timpy.im.receipts import Receipts
from timpy.im.records import Records
from timpy.im.replication import Replicator
from timpy.im.replies import Replies
from timpy.im.rooms import Rooms
from timpy.im.roster import Roster
from timpy.im.search import Search
from timpy.im.signal_routes import Signals
from timpy.im.signalling import Signalling
from timpy.im.tasks import TaskHost
from timpy.im.terminals import TerminalRegistry
from timpy.im.threads import Threads
from timpy.im.users import SYSTEM_USER, Identity, Users
from timpy.im.webhooks import LEGACY_OUTBOX, Webhooks
from timpy.im.writer import Committed, Writer
from timpy.logs import set_node_id
from timpy.node.coordinator import BackendCoordinator
from timpy.node.datadir import DataDirLock
from timpy.node.identity import load_or_create_identity, node_id_of
from timpy.node.metrics import NodeMetrics, counters, gauge, gauges
from timpy.store.backends import BackendMap
from timpy.store.engine import WalCheckpointer, sqlite_engine, url_engine
from timpy.store.outbox import Outbox, ShardedOutbox
from timpy.store.repository import Repository, Store
from timpy.store.rows import InboxItem
from timpy.store.sharded import ShardedRepository
from timpy.store.stamp_floor import FILE as STAMP_FLOOR_FILE
from timpy.store.stamp_floor import StampFloor
from timpy.wire.messages import KIND_NORMAL, SendResult

log = logging.getLogger("timpy.node")


def _bind_error(exc: BaseException) -> OSError | None:
    """The OSError that refused a listening address, alone or inside exception groups."""
    if isinstance(exc, OSError) and exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _bind_error(inner)
            if found is not None:
                return found
    return None


@contextmanager
def _naming_the_address(address: str, section: str, key: str, what: str) -> Iterator[None]:
    """Turn "address in use" into an error naming the address, the option that sets it and what to do."""
    try:
        yield
    except BaseException as exc:
        refused = _bind_error(exc)
        if refused is None:
            raise
        reason = {
            errno.EADDRINUSE: "the address is already in use (another timpy node or program listens there)",
            errno.EADDRNOTAVAIL: "no interface of this machine has that address",
            errno.EACCES: "permission denied (ports below 1024 need privileges)",
        }[refused.errno]
        raise ConfigError(
            f"cannot open {what} on {address}: {reason}. Set {option_name(section, key)} "
            f"(flag {flag_name(section, key)}, ${env_name(section, key)}) to a free HOST:PORT "
            "(port 0 picks one) or \"off\", or stop the program using it"
        ) from None


def now_ms() -> int:
    return int(time.time() * 1000)


class Node:
    """A running timpy node. Create it with ``open_node``."""

    def __init__(
        self,
        config: NodeConfig,
        keys: ClusterKeys | None = None,
        transport: PeerTransport | None = None,
        *,
        identity: nacl.signing.SigningKey | None = None,
        rng: random.Random | None = None,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        # transport: None = TCP on [cluster] listen. identity: None = data_dir/node.key (new in memory).
        # rng: membership's randomness; clock_ms: the wall clock (timpy.testing seeds and skews them).
        self.config = config
        self._keys = keys
        self._transport = transport
        self._identity, self._rng, self._now_ms = identity, rng, clock_ms
        self.tcp_address: tuple[str, int] | None = None
        self.ws_address: tuple[str, int] | None = None
        self.peer_address: str | None = None
        self.cluster: ClusterService | None = None
        self.node_id = ""
        self.terminals = TerminalRegistry()
        self.stored_count = 0  # messages this node's writer numbered and stored since it started
        self.tasks = TaskHost()  # background work: kept until it runs, refused once it stopped
        self.checkpointer: WalCheckpointer | None = None  # an embedded SQLite file's, started with the node
        self._tasks_scope = trio.CancelScope()
        self._tasks_done = trio.Event()
        self.gate = ConnectionGate(config.limits.max_connections)
        self.metrics = NodeMetrics()
        self.metrics.watch(self._live_metrics)
        self.ready = False  # listeners up and, in a cluster, membership running
        self.admin_address: tuple[str, int] | None = None
        self.admin_token = ""
        self._gateway_scope = trio.CancelScope()
        self._gateway_done = trio.Event()
        self._writer_done = trio.Event()
        self._cluster_scope = trio.CancelScope()
        self._cluster_done = trio.Event()
        self._cluster_started = self._gateway_started = self._stopped = False
        self.shutdown_phase = "running"  # what _stop is doing, for a shutdown cut short
        # One running node per data directory (not with --memory: it keeps nothing there).
        self.data_lock: DataDirLock | None = None if config.memory else DataDirLock(config.data_dir)

    # --- wiring ---------------------------------------------------------

    def _open_keys(self) -> tuple[ClusterKeys, str]:
        if self._keys is not None:
            return self._keys, "given"
        joining = bool(self.config.cluster.join)
        if joining and not os.environ.get("TIMPY_CLUSTER_KEY") and not self.config.key_file.exists():
            raise ConfigError(
                f"joining a cluster needs its key, and there is none at {self.config.key_file}: copy cluster.key "
                "from a member there (mode 0600), pass --cluster-key FILE, or set $TIMPY_CLUSTER_KEY"
            )
        if self.config.memory and self.config.cluster_key_file is None and not self.config.key_file.exists():
            if not os.environ.get("TIMPY_CLUSTER_KEY"):
                return ClusterKeys.generate(), "memory (ephemeral)"
        return load_or_create_cluster_key(self.config.key_file)

    def _open_store(self, keys: ClusterKeys) -> tuple[Store, str]:
        c = self.config
        if c.storage.shared:
            initial = BackendMap(1, c.storage.backends)
            repo = ShardedRepository(
                initial, Sealer(keys.storage), lambda spec: url_engine(spec.url, c.sqlite_synchronous), kinds.effect_of
            )
            return Store(repo, c.storage.threads, self._observe_storage), "shared backends"
        if c.database_url:
            engine, where, threads = url_engine(c.database_url), "database (url)", 8
        elif c.memory:
            engine, where, threads = sqlite_engine(None), "memory", 1
        else:
            path = c.data_dir / "timpy.sqlite3"
            engine, where, threads = sqlite_engine(path, c.sqlite_synchronous, background_checkpoints=True), str(path), 1
            self.checkpointer = WalCheckpointer(path, c.sqlite_synchronous)
        return Store(Repository(engine, Sealer(keys.storage), kinds.effect_of), threads, self._observe_storage), where

    async def _start(self, nursery: trio.Nursery) -> None:
        c = self.config
        if not c.memory:
            private_directory(c.data_dir)
        if self.data_lock is not None:
            self.data_lock.acquire()
        keys, key_source = self._open_keys()
        identity = self._identity or load_or_create_identity(None if c.memory else c.data_dir / "node.key")
        self.node_id = node_id_of(identity)
        set_node_id(self.node_id)
        self.store, store_where = self._open_store(keys)
        if c.admin.listen:
            self.admin_token = self._load_admin_token()
        shared = c.storage.shared
        if not shared:
            await self.store.run(self.store.repo.create_schema)
        self.indexer = BlindIndexer(keys.index)
        if c.cluster.listen or self._transport is not None:
            cc = c.cluster
            transport = self._transport or TcpPeerTransport(
                keys, identity, listen=cc.listen or "", queue=4096, advertise=cc.advertise, nat=nat_settings(cc)
            )
            membership = MembershipConfig(
                probe_interval=cc.probe_interval,
                probe_timeout=cc.probe_timeout,
                suspicion_mult=cc.suspicion_mult,
                push_pull_interval=cc.push_pull_interval,
            )
            self.cluster = ClusterService(
                self.node_id, transport, membership, seeds=list(cc.join), on_change=self._membership_changed,
                rng=self._rng,
            )
            cluster = self.cluster
            self.ownership = OwnershipService(
                self.node_id, cluster.rpc, lambda: cluster.membership, self._epoch_changed,
                data_dir=None if c.memory else c.data_dir, joining=bool(cc.join),
            )
            # A restarted node rejoins the voters it knew, without --join.
            cluster.seeds = list(dict.fromkeys([*cc.join, *self.ownership.seeds()]))
            # Shared backends keep the data durable themselves: one owner per key, no node copies.
            replication = ReplicationConfig(1, 1, cc.vnodes) if shared else ReplicationConfig(
                cc.replicas, cc.write_quorum, cc.vnodes
            )
            placement = Placement(self.node_id, "", replication)
            self.ownership.core.settled = placement.settled  # which rings the next epoch may drop
            self.peers = Peers(placement, self.cluster.rpc, self.ownership)
            self.peers.serve(ops.CLUSTER_STATUS, lambda _: self.cluster_status())
            self.peers.serve(ops.CLUSTER_FORGET, lambda a: self._forget(a.node_id))
            self.peers.serve(ops.ADMIN_BROADCAST, lambda a: self._broadcast_here(a.broadcast_id, a.body))
        else:
            self.peers = Peers.standalone(self.node_id)
        self.backends: BackendCoordinator | None = None
        if shared:
            self.backends = BackendCoordinator(self.store, self.peers, self.node_id, c.storage.backends)
            await self.backends.load()
            store_where = "shared backends " + ", ".join(b.name for b in self.store.repo.map.backends)
        # Repair puts an inbox entry that lost its slot back through the user's owner's writer (built below).
        self.replicator = Replicator(
            self.store, self.peers, self._restore_inbox_entry, c.cluster.anti_entropy_interval, shared=shared
        )
        ask_on_start = True
        if not shared:  # with no account held here this node owned no one before it started
            ask_on_start = (await self.store.run(self.store.local.key_count))[1] > 0
        self.webhooks = await self._open_webhooks(keys)
        events: EventSink = self.webhooks if self.webhooks is not None else NO_EVENTS
        self.accounts = Accounts(
            self.store, self.indexer, TokenAuthority(keys.token_seed), c.security, self._limits, self._now_ms,
            self.peers, self.replicator, events,
        )
        await self.accounts.start()
        limits = self._limits
        self.records = Records(self.store, self.peers, self.replicator)
        self.writer = Writer(
            self.store, self.peers, self.replicator, self.indexer, limits, self._now_ms,
            checks=[BlockedSenders(self.records), ActingKinds(self.store, limits, self._now_ms), Replies(self.store)],
            floor=StampFloor(None if self.config.memory else self.config.data_dir / STAMP_FLOOR_FILE),
        )
        self.deliverer = Deliverer(
            self.store, self.peers, self.replicator, self.terminals, self.writer, self.tasks, limits, self._now_ms,
            ask_on_start=ask_on_start,
        )
        self.writer.listen(self.deliverer.on_commit)
        self.writer.listen(self._count_stored)
        self.routes = self.deliverer.routes
        self.users = Users(self.store, self.indexer, self.peers, self.replicator)
        self.messenger = Messenger(self.store, self.indexer, limits, self.peers, self.replicator, self.writer, self.users)
        self.groups = Groups(
            self.store, self.indexer, limits, self.peers, self.replicator, self.users, self.writer, events
        )
        # Integrations: the webhook check before a send is queued (in the sender's task, not the
        # writer's: a slow endpoint must not stall other senders), events handed off after the commit
        # and durable before the ack; pushes noted after the commit; logins and logouts at the owner.
        if self.webhooks is not None:
            self.writer.check_sends(self.webhooks.check_send)
            self.writer.listen(self.webhooks.on_commit)
            self.writer.hold_acks(self.webhooks.hold)
        self.push = Push(c.push, self.records, self.routes, self.peers, self.indexer, self._now_ms, self.metrics.registry)
        if c.push.enabled:
            self.writer.listen(self.push.on_commit)
        self.routes.watch_terminals(self._terminal_changed)
        self.signals = Signals(self.peers, self.terminals, self.routes)
        self.roster = Roster(self.indexer, self.peers, self.records, self.users, self.signals)
        self.presence = Presence(
            self.store, self.indexer, self.peers, self.records, self.routes, self.roster.friends_of, self.signals, self._now_ms,
            self.tasks.spawn,
        )
        self.routes.watch_presence(self.presence.terminals_changed)
        self.receipts = Receipts(
            self.store, self.indexer, self.peers, self.replicator, self.writer, self.signals, limits
        )
        self.conversations = Conversations(
            self.store, self.indexer, self.peers, self.records, self.signals, self.routes, self._now_ms,
            self.tasks.spawn,
        )
        self.search = Search(
            self.store, self.indexer, self.peers, self.replicator, self.conversations.conversation_ids, self.tasks.spawn
        )
        self.writer.listen(self.conversations.committed)
        self.writer.listen(self.search.committed)
        self.receipts.marked.append(self.conversations.inbox_changed)
        self.groups.changed.append(self.conversations.group_saved)
        self.groups.send_checks.append(Replies.check_group)
        self.threads = Threads(
            self.store, self.indexer, self.peers, self.replicator, self.records, self.users, self.writer,
            self.groups.check_sender,
        )
        self.messenger.read_rules.append(self.threads.may_read)  # a thread is read by its parent's members now
        self.signalling = Signalling(
            self.store, self.indexer, self.peers, self.replicator, self.records, self.users, self.signals, limits
        )
        self.rooms = Rooms(
            self.indexer, self.peers, self.signals, limits, trio.current_time, self.tasks.spawn
        )
        self.attachments = Attachments(
            self.store, self.peers, lambda: self.config.files, self._now_ms, derive_key(keys.root, "file-url"),
            self.tasks.spawn, lambda: self.config.limits.max_frame, shared=shared,
        )
        self.writer.add_check(self.attachments.check)
        self.writer.listen(self.attachments.on_commit)
        self.tasks.spawn(self.attachments.run)  # retention sweeps; stopped with the task host
        if self.checkpointer is not None:
            self.tasks.spawn(self.checkpointer.run)  # stopped with the task host, before the store closes
        await nursery.start(self._run_tasks)
        nursery.start_soon(self._run_writer)
        await nursery.start(self._run_cluster)
        await nursery.start(self._run_gateway)
        log.info(
            "node %s ready: storage %s, cluster key %s (fingerprint %s)%s%s%s%s",
            self.node_id,
            store_where,
            key_source,
            keys.fingerprint,
            f", tcp://{self.tcp_address[0]}:{self.tcp_address[1]}" if self.tcp_address else "",
            f", ws://{self.ws_address[0]}:{self.ws_address[1]}" if self.ws_address else "",
            f", admin http://{self.admin_address[0]}:{self.admin_address[1]}" if self.admin_address else "",
            f", peers at {self.peer_address}" + (f" joining {', '.join(c.cluster.join)}" if c.cluster.join else "")
            if self.peer_address else ", standalone (no peer listener)",
        )
        self.ready = True
        if c.ready_file is not None:
            self._write_ready_file(c.ready_file)

    async def _open_webhooks(self, keys: ClusterKeys) -> Webhooks | None:
        """The webhooks and their outbox, in the store like every keyed row:
        each event's rows belong to the key owning it, and only that key's
        current owner delivers them. Embedded, the rows are copied to the
        key's replicas; with shared backends, they are in the key's backend."""
        c = self.config
        legacy = None if c.memory else c.data_dir / LEGACY_OUTBOX
        if not c.webhooks.endpoints:
            self.peers.serve(ops.WEBHOOKS_DEAD, lambda _: [])  # the cluster's dead-letter view: none here
            if legacy is not None and legacy.exists():
                log.warning("%s holds webhook events of an earlier version; they are delivered once this node has "
                            "[webhooks] endpoints again", legacy)
            return None
        placement = self.peers.placement

        def owns(_kind: str, key: bytes) -> bool:
            try:
                return placement.is_local(key)
            except LookupError:  # no ring yet: the node has not joined
                return False

        if c.storage.shared:
            sharded = ShardedOutbox(self.store.repo, Sealer(keys.storage))
            return Webhooks(c.webhooks, self.store, sharded, self.node_id, self._now_ms, self.metrics.registry,
                            self._rng, owns=owns, peers=self.peers, legacy_outbox=legacy, user_id_of=self.user_id_of)
        outbox = Outbox(self.store.repo.engine, Sealer(keys.storage))  # its table is in the store's schema
        return Webhooks(c.webhooks, self.store, outbox, self.node_id, self._now_ms, self.metrics.registry, self._rng,
                        owns=owns, to_replicas=self.replicator.to_replicas, peers=self.peers, legacy_outbox=legacy,
                        user_id_of=self.user_id_of)

    def _terminal_changed(self, user_id: bytes, device_id: bytes, node_id: str, attached: bool) -> None:
        """At the user's owner: a device's terminal was recorded (a login) or went away (a logout)."""
        if attached:
            self.push.device_online(user_id, device_id)
        event = "user.login" if attached else "user.logout"
        if self.webhooks is not None and self.webhooks.wants(event):
            self.tasks.spawn(self._terminal_event, event, user_id, device_id, node_id, self._now_ms())

    async def _terminal_event(self, event: str, user_id: bytes, device_id: bytes, node_id: str, at_ms: int) -> None:
        assert self.webhooks is not None
        account = await self.store.run(self.store.repo.get_account, user_id)
        name = msgpack.unpackb(account.profile).get("name", "") if account is not None else ""
        await self.webhooks.emit(event, event_id(event, user_id, device_id, node_id, at_ms),
                                 {"user": name, "device": device_id.hex(), "node": node_id, "time": at_ms},
                                 ("user", user_id))

    async def _run_cluster(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._cluster_started = True
        try:
            with self._cluster_scope:
                async with trio.open_nursery() as cl:
                    if self.cluster is not None:
                        with _naming_the_address(self.config.cluster.listen or "", "cluster", "listen", "the peer listener"):
                            await cl.start(self.cluster.run)
                        self.peer_address = self.cluster.transport.address
                        self.peers.placement.addresses[self.node_id] = self.peer_address
                        await cl.start(self.ownership.run)
                    await cl.start(self.replicator.run)
                    if self.backends is not None:
                        await cl.start(self.backends.run)
                    # Members met at start give back the live terminals of users this node owns.
                    self.deliverer.ask_for_terminals(self.peers.placement.members)
                    if self.webhooks is not None:
                        await cl.start(self.webhooks.run)
                    await cl.start(self.push.run)
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self._cluster_done.set()

    def _membership_changed(self, change: Changed) -> None:
        """Keys do not move here: only a ring epoch a majority accepted moves them (``_epoch_changed``)."""
        assert self.cluster is not None and self.cluster.membership is not None
        self.peers.placement.addresses.update(
            {m.name: m.address for m in self.cluster.membership.members.values() if m.address}
        )
        self.ownership.note_addresses()
        # A member met for the first time since this node started gives back
        # the live terminals of users this node owns (a quick restart may leave
        # every ring unchanged).
        self.deliverer.ask_for_terminals(self.cluster.membership.alive_members())

    def _forget(self, name: str) -> dict[str, object]:
        """``timpy cluster forget``: a voter that is gone for good stops counting."""
        self.ownership.forget(str(name))
        log.warning("operator asked to forget member %s; the next ring epoch removes it from the voters", name)
        return self.ownership.status()

    def _epoch_changed(self, epoch: Epoch) -> None:
        placement = self.peers.placement
        for name in epoch.members.union(*epoch.rings):
            address = self.ownership.address_of(name)
            if address:
                placement.addresses.setdefault(name, address)
        before = placement.members
        if not placement.set_members(epoch.members, epoch.previous, epoch.earlier, epoch.gone):
            return
        if placement.members == before:  # only the rings catch-up reads changed (docs/consistency.md)
            return
        log.info("ring changed (version %d): %d nodes", placement.version, len(placement.members))
        self.routes.keep_only(placement.members)
        self.records.forget_cache()
        self.rooms.ring_changed(frozenset(placement.members))
        self.deliverer.reattach_terminals()
        self.replicator.trigger()
        if self.webhooks is not None:
            self.webhooks.ring_changed()

    def _live_metrics(self) -> Iterator[object]:
        """Values Prometheus reads at scrape time."""
        yield gauge("timpy_connections", "Open client connections", self.gate.open)
        yield gauge("timpy_terminals", "Live terminals (logged-in connections) on this node", len(self.terminals))
        yield counters("timpy_deliveries", "Messages pushed to live terminals on this node", "node",
                       {self.node_id: self.terminals.delivered})
        if not hasattr(self, "writer"):
            return
        yield gauges("timpy_queue_depth", "Work waiting, by queue", "queue", {
            "writer": self.writer.queue_depth(),
            "storage": self.store.queued(),
            "peer_requests": self.cluster.rpc._running if self.cluster is not None else 0,
        })
        states: dict[str, float] = {"alive": 1.0, "suspect": 0.0, "dead": 0.0, "left": 0.0}
        if self.cluster is not None and self.cluster.membership is not None:
            states = dict.fromkeys(states, 0.0)
            for m in self.cluster.membership.members.values():
                states[m.state.value] = states.get(m.state.value, 0.0) + 1
        yield gauges("timpy_members", "Cluster members as this node sees them, by state", "state", states)
        transport = self.cluster.transport if self.cluster is not None else None
        if isinstance(transport, TcpPeerTransport):
            paths = dict.fromkeys(("tcp", "ice", "relay"), 0.0)
            for path in transport.paths().values():
                paths[path.kind] += 1
            yield gauges("timpy_peer_paths", "Peers with a live channel, by path (docs/nat.md)", "path", paths)
            yield counters("timpy_nat_events", "NAT traversal: frames relayed for others, ICE upgrades, ICE failures",
                           "event", {"relayed": transport.stats.relayed, "ice_upgrades": transport.stats.ice,
                                     "ice_failed": transport.stats.ice_failed})
        if self.cluster is not None:
            yield counters("timpy_gossip_messages", "Membership messages sent, by kind (Ping: one probe round)",
                           "kind", dict(self.cluster.sent))
        yield gauge("timpy_ring_version", "Changes of the node ring seen", self.peers.placement.version)
        repair = self.replicator.progress
        yield counters("timpy_repair", "Repair between replicas since start: passes, key ranges and buckets compared, "
                       "rows copied, slots found with different values, inbox entries put back", "what", {
                           "passes": repair.passes, "ranges_compared": repair.ranges_compared,
                           "rows_repaired": repair.rows_repaired, "conflicting_slots": repair.conflicting_slots,
                           "inbox_entries_restored": repair.inbox_entries_restored,
                       })
        yield counters("timpy_messages_stored", "Messages this node's writer stored", "node",
                       {self.node_id: self.stored_count})

    def traffic(self) -> dict[str, int]:
        """Counters the dashboard turns into rates."""
        return {
            "messages_in": self.metrics.messages_in.value,
            "deliveries": self.terminals.delivered,
            "connections": self.gate.open,
            "terminals": len(self.terminals),
            "stored": self.stored_count,
        }

    def cluster_status(self) -> dict[str, object]:
        """What ``timpy cluster status`` shows: members as this node sees them, ring shares, repair progress."""
        placement = self.peers.placement
        shares = placement.ring.shares()
        members = self.cluster.status() if self.cluster is not None else [
            {"name": self.node_id, "address": "", "state": "alive", "incarnation": 0}
        ]
        paths = self.cluster.transport.paths() if self.cluster is not None else {}
        names = {str(m["address"]): str(m["name"]) for m in members}
        for m in members:
            m["share"] = round(shares.get(str(m["name"]), 0.0), 4)
            path = paths.get(str(m["address"]))
            m["path"] = path.as_dict(names) if path is not None else None
        return {
            "node": self.node_id,
            "members": members,
            "ring_version": placement.version,
            "ownership": self.ownership.status() if self.cluster is not None else {"standalone": True},
            "replicas": placement.config.replicas,
            "write_quorum": placement.config.write_quorum,
            "repair": self.replicator.progress.as_dict(),
            "terminals": len(self.terminals),
            "routes": self.routes.record_count(),
            "stored": self.stored_count,
            "storage": self.backends.status() if self.backends is not None else {"mode": "embedded"},
        }

    def _write_ready_file(self, path: Path) -> None:
        info = {
            "node_id": self.node_id,
            "pid": os.getpid(),
            "tcp": f"{self.tcp_address[0]}:{self.tcp_address[1]}" if self.tcp_address else None,
            "ws": f"{self.ws_address[0]}:{self.ws_address[1]}" if self.ws_address else None,
            "peer": self.peer_address,
            "admin": f"{self.admin_address[0]}:{self.admin_address[1]}" if self.admin_address else None,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(path)

    async def _run_writer(self) -> None:
        try:
            await self.writer.run()
        finally:
            self._writer_done.set()

    def _count_stored(self, committed: Sequence[Committed]) -> None:
        """Writer listener: messages this node numbered and stored (metrics, status)."""
        self.stored_count += sum(1 for c in committed if c.numbered_here)

    def _observe_storage(self, op: str, seconds: float) -> None:
        self.metrics.storage_latency.labels(op).observe(seconds)

    async def _restore_inbox_entry(self, item: InboxItem) -> None:
        await self.writer.restore_inbox_entry(item)

    def _limits(self) -> Limits:
        return self.config.limits  # read each time: set_limits replaces the config

    async def _run_tasks(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The background task host, from before the writer starts until after the cluster tasks stop."""
        try:
            with self._tasks_scope:
                await self.tasks.run(task_status)
        finally:
            self._tasks_done.set()

    async def _run_gateway(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._gateway_started = True
        try:
            with self._gateway_scope:
                async with trio.open_nursery() as gw:
                    if self.config.listen:
                        host, port = parse_hostport(self.config.listen)
                        with _naming_the_address(self.config.listen, "", "listen", "the TCP client listener"):
                            listeners = await gw.start(run_tcp_listener, self, host, port)
                        self.tcp_address = listeners[0].socket.getsockname()[:2]
                    if self.config.ws:
                        host, port = parse_hostport(self.config.ws)
                        with _naming_the_address(self.config.ws, "", "ws", "the WebSocket listener"):
                            server = await gw.start(run_ws_listener, self, host, port)
                        self.ws_address = (host, server.port)
                    if self.config.admin.listen:
                        with _naming_the_address(self.config.admin.listen, "admin", "listen", "the admin listener"):
                            self.admin_address = await gw.start(self._run_admin)
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self._gateway_done.set()

    async def _run_admin(self, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        from hypercorn.trio import serve

        from timpy.gateway.admin import build_app, hypercorn_config

        host, port = parse_hostport(self.config.admin.listen or "")
        hc = hypercorn_config(self.config.admin, host, port)
        app = build_app(self, self.admin_token)
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(functools.partial(serve, app, hc, shutdown_trigger=trio.sleep_forever))
            bound = str(binds[0]).rsplit("//", 1)[-1]  # "http://127.0.0.1:PORT"
            bhost, _, bport = bound.rpartition(":")
            task_status.started((bhost.strip("[]"), int(bport)))

    def _load_admin_token(self) -> str:
        """$TIMPY_ADMIN_TOKEN, else the token file, else a new one written there (0600)."""
        from_env = os.environ.get("TIMPY_ADMIN_TOKEN")
        if from_env:
            return from_env.strip()
        path = self.config.admin.token_file or self.config.data_dir / "admin.token"
        if self.config.memory and self.config.admin.token_file is None:
            return secrets.token_urlsafe(32)  # no data directory: ask the node object for it
        if path.exists():
            tighten(path)
            return path.read_text().strip()
        token = secrets.token_urlsafe(32)
        write_secret_file(path, token)
        return token

    # --- operator actions (the admin API) ----------------------------------

    def user_id_of(self, name: str) -> bytes:
        return ids.user_id(self.indexer, ids.normalize_name(name))

    async def send_system_message(self, to: str, body: bytes) -> SendResult:
        """A message from the reserved user 'system', stored and delivered like any other."""
        system = await self.accounts.ensure_system_account()
        return await self.messenger.send(system, to, uuid.uuid4().hex, KIND_NORMAL, body)

    async def broadcast(self, body: bytes, timeout: float = 300.0) -> dict[str, object]:
        """A system message to every user: each node sends it to the users it
        owns. The same client id everywhere makes it idempotent per user, so a
        user whose owner changes during the walk still gets it once."""
        system = await self.accounts.ensure_system_account()
        broadcast_id = uuid.uuid4().hex
        counts: dict[str, int] = {}

        async def at(node_id: str) -> None:
            if node_id == self.node_id:
                counts[node_id] = await self._broadcast_here(broadcast_id, body, system.user_id)
            else:
                counts[node_id] = await self.peers.call(
                    node_id, ops.ADMIN_BROADCAST, ops.Broadcast(broadcast_id, body), timeout=timeout)

        async with trio.open_nursery() as nursery:
            for node_id in sorted(self.peers.placement.members | {self.node_id}):
                nursery.start_soon(at, node_id)
        log.info("broadcast %s sent to %d users", broadcast_id, sum(counts.values()))
        return {"broadcast": broadcast_id, "sent": sum(counts.values()), "by_node": counts}

    async def _broadcast_here(self, broadcast_id: str, body: bytes, system_id: bytes | None = None) -> int:
        """Send the broadcast to every user this node owns; returns how many."""
        if system_id is None:
            system_id = (await self.accounts.ensure_system_account()).user_id
        system = Identity(system_id, SYSTEM_USER)
        digest = self.store.repo.user_digest
        sent, after = 0, b""
        for _ in range(10_000_000 // 500):  # bounded walk over the users stored here
            page = await self.store.run(digest, after, 500)
            if not page:
                break
            after = page[-1][0]
            for user_id, _ in page:
                if user_id == system_id or not self.peers.is_local(user_id):
                    continue
                account = await self.store.run(self.store.repo.get_account, user_id)
                if account is None:
                    continue
                name = msgpack.unpackb(account.profile).get("name", "")
                if name:
                    await self.messenger.send(system, name, f"broadcast-{broadcast_id}", KIND_NORMAL, body)
                    sent += 1
        return sent

    def set_limits(self, **changes: object) -> Limits:
        """Change limits at run time on this node; new connections get them."""
        from timpy.gateway.admin import checked_limits

        limits = checked_limits(self.config.limits, changes)
        self.config = self.config.replace(limits=limits)  # every feature reads it through _limits
        log.info("limits changed: %s", ", ".join(f"{k}={v}" for k, v in changes.items()))
        return limits

    async def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        with trio.CancelScope(shield=True):
            self.shutdown_phase = "closing client connections"
            self._gateway_scope.cancel()
            if self._gateway_started:
                await self._gateway_done.wait()
            self.shutdown_phase = "storing acknowledged writes"
            self.writer.close()
            await self._writer_done.wait()
            if self.cluster is not None:
                self.shutdown_phase = "leaving the cluster"
                await self.cluster.leave()
            self.shutdown_phase = "stopping cluster tasks"
            self._cluster_scope.cancel()
            if self._cluster_started:
                await self._cluster_done.wait()
            self.shutdown_phase = "stopping background tasks"
            self._tasks_scope.cancel()
            if self.tasks.running:
                await self._tasks_done.wait()
            self.shutdown_phase = "closing the store"
            self.store.close()
            if self.data_lock is not None:
                self.data_lock.release()
            log.info("node %s stopped", self.node_id)

    # --- for embedding programs -----------------------------------------

    @property
    def tcp_url(self) -> str:
        if self.tcp_address is None:
            raise RuntimeError("this node has no TCP listener")
        scheme = "tcps" if self.config.tls_cert is not None else "tcp"
        return f"{scheme}://{self.tcp_address[0]}:{self.tcp_address[1]}"

    @property
    def ws_url(self) -> str:
        if self.ws_address is None:
            raise RuntimeError("this node has no WebSocket listener")
        scheme = "wss" if self.config.tls_cert is not None else "ws"
        return f"{scheme}://{self.ws_address[0]}:{self.ws_address[1]}/"


@asynccontextmanager
async def open_node(
    config: NodeConfig | None = None, *, keys: ClusterKeys | None = None, transport: PeerTransport | None = None
) -> AsyncIterator[Node]:
    """Run a node inside the caller's trio program for the duration of the block.

    ``transport`` carries the node's cluster traffic instead of TCP on
    ``[cluster] listen`` (``timpy.testing`` passes an in-memory one); peers
    to join are still ``[cluster] join``, in that transport's addresses.

    >>> async with timpy.open_node(NodeConfig(memory=True, listen="127.0.0.1:0")) as node:
    ...     print(node.tcp_url)
    """
    node = Node(config or NodeConfig(), keys, transport)
    with unwrap_single_error():
        async with _node_nursery(node) as running:
            yield running


@asynccontextmanager
async def _node_nursery(node: Node) -> AsyncIterator[Node]:
    try:
        async with trio.open_nursery() as nursery:
            try:
                await node._start(nursery)
                yield node
            finally:
                if hasattr(node, "messenger"):  # built after everything _stop closes
                    await node._stop()
                else:
                    nursery.cancel_scope.cancel()
    finally:
        if node.data_lock is not None:
            node.data_lock.release()  # every task of the node has ended
