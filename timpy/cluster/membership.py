"""SWIM membership with the Lifeguard refinements, as a sans-IO state machine.

Events go in (``tick(now)``, ``receive(now, message)``, ``join``, ``leave``);
actions come out (``Send`` a message to an address, ``Changed`` for the
application). No sockets, no clock, no randomness of its own: the caller
passes the time and a ``random.Random``. That is what lets
``timpy.cluster.simulation`` run hundreds of nodes deterministically.

What it implements (after SWIM, Das et al. 2002; Lifeguard, Dadgar et al.
2018; and hashicorp/memberlist):
- a probe round every ``probe_interval`` to the next member of a shuffled
  round-robin; no ack within the (health-scaled) probe timeout sends
  ``indirect_checks`` ping-reqs through other members; no ack by the end of
  the round makes the member *suspect*;
- suspicion with incarnation numbers: a suspected member that hears of it
  refutes by raising its incarnation; otherwise it is declared *dead* when its
  suspicion timeout ends, a timeout that starts long and shrinks with every
  independent confirmation (Lifeguard's dynamic suspicion); a node probing a
  member it suspects tells it so first in the ping (Lifeguard's buddy system);
- local health awareness (Lifeguard): a node whose own probes fail scales its
  timeouts up rather than accusing others;
- dissemination piggybacked on pings and acks, each update retransmitted
  ``retransmit_mult * log10(n + 1)`` times, newest news about a member
  replacing older news;
- periodic push-pull full-state sync with a random member (asked again of
  another member once, after a probe interval, if unanswered: memberlist runs
  it over a reliable stream), and with a random dead one (so two sides of a
  healed partition find each other again);
- graceful leave: a *left* member is not suspected and is never probed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from enum import StrEnum


class State(StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


@dataclass(frozen=True)
class MembershipConfig:
    """Defaults follow memberlist's LAN profile."""

    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    indirect_checks: int = 3
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    retransmit_mult: int = 4
    gossip_per_message: int = 12
    push_pull_interval: float = 30.0
    awareness_max: int = 8


# --- messages (what a node sends another) ------------------------------------


@dataclass(frozen=True)
class Update:
    """News about one member, piggybacked on other messages."""

    name: str
    address: str
    incarnation: int
    state: State
    source: str = ""  # who accuses (suspect/dead), for confirmations


@dataclass(frozen=True)
class Ping:
    seq: int
    source: str  # the sender's address
    target: str  # the name it means to reach
    gossip: tuple[Update, ...] = ()


@dataclass(frozen=True)
class Ack:
    seq: int
    source: str
    gossip: tuple[Update, ...] = ()


@dataclass(frozen=True)
class PingReq:
    seq: int
    source: str
    target: str
    target_address: str
    gossip: tuple[Update, ...] = ()


@dataclass(frozen=True)
class PushPull:
    source: str
    states: tuple[Update, ...]
    reply: bool  # True: answer with our own state


Message = Ping | Ack | PingReq | PushPull


# --- actions (what the caller must do) ----------------------------------------


@dataclass(frozen=True)
class Send:
    address: str
    message: Message


@dataclass(frozen=True)
class Changed:
    """A member changed state, as this node sees it (for the application)."""

    name: str
    address: str
    state: State
    incarnation: int


Action = Send | Changed


@dataclass
class Member:
    name: str
    address: str
    incarnation: int
    state: State
    since: float


@dataclass
class _Suspicion:
    start: float
    incarnation: int
    accuser: str  # who first suspected; relaying the news does not make one an accuser
    confirmations: set[str] = field(default_factory=set)


@dataclass
class _Probe:
    target: str
    deadline: float
    round_end: float
    indirect_sent: bool = False


@dataclass
class _Relay:
    requester: str  # address of the node that asked us to ping
    seq: int  # its sequence number
    expires: float


@dataclass
class _News:
    update: Update
    sent: int = 0


class Membership:
    def __init__(
        self, name: str, address: str, config: MembershipConfig, rng: random.Random, now: float
    ) -> None:
        self.name = name
        self.address = address
        self.config = config
        self.rng = rng
        self.incarnation = 0
        self.members: dict[str, Member] = {name: Member(name, address, 0, State.ALIVE, now)}
        self.awareness = 0  # Lifeguard local health: 0 healthy .. awareness_max
        self.leaving = False
        self._seq = 0
        self._probe_order: list[str] = []
        self._probe: dict[int, _Probe] = {}
        self._relays: dict[int, _Relay] = {}
        self._suspicions: dict[str, _Suspicion] = {}
        self._news: dict[str, _News] = {}
        self._next_probe = now + rng.uniform(0, config.probe_interval)
        self._next_push_pull = now + rng.uniform(0, config.push_pull_interval)
        self._push_pull_wait: tuple[str, float] | None = None  # (address asked, when to ask another)
        self._seeds: list[str] = []
        self._next_join = now
        self._join_delay = config.probe_interval
        self._enqueue(self._self_update())

    # --- views ----------------------------------------------------------

    def alive_members(self) -> set[str]:
        return {m.name for m in self.members.values() if m.state in (State.ALIVE, State.SUSPECT)}

    def state_of(self, name: str) -> State | None:
        m = self.members.get(name)
        return m.state if m else None

    def _others(self, *states: State) -> list[Member]:
        return [m for m in self.members.values() if m.name != self.name and m.state in states]

    # --- entry points ---------------------------------------------------

    def join(self, now: float, seeds: list[str]) -> list[Action]:
        """Contact seed addresses with a full-state push-pull (retried while alone)."""
        self._seeds = [a for a in seeds if a != self.address]
        self._next_join = now + self._join_delay
        self._join_delay = min(self._join_delay * 2, 8 * self.config.probe_interval)  # back off while nobody answers
        return [Send(a, PushPull(self.address, self._full_state(), reply=True)) for a in seeds if a != self.address]

    def leave(self, now: float) -> list[Action]:
        """Announce a graceful leave to a few members; stop probing."""
        self.leaving = True
        self.incarnation += 1
        me = self.members[self.name]
        me.incarnation, me.state = self.incarnation, State.LEFT
        update = Update(self.name, self.address, self.incarnation, State.LEFT, self.name)
        targets = self._others(State.ALIVE, State.SUSPECT)
        self.rng.shuffle(targets)
        return [Send(m.address, PushPull(self.address, (update,), reply=False)) for m in targets[: 2 * self.config.indirect_checks]]

    def tick(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if self.leaving:
            return actions
        cfg = self.config
        # probes whose direct timeout passed: ask others; whose round ended: suspect
        for seq, probe in list(self._probe.items()):
            target = self.members.get(probe.target)
            if target is None or target.state in (State.DEAD, State.LEFT):
                del self._probe[seq]
                continue
            if not probe.indirect_sent and now >= probe.deadline:
                probe.indirect_sent = True
                helpers = [m for m in self._others(State.ALIVE) if m.name != probe.target]
                self.rng.shuffle(helpers)
                for helper in helpers[: cfg.indirect_checks]:
                    actions.append(
                        Send(helper.address, PingReq(seq, self.address, target.name, target.address, self._gossip()))
                    )
            if now >= probe.round_end:
                del self._probe[seq]
                self._adjust_awareness(+1)
                actions += self._apply(now, Update(target.name, target.address, target.incarnation, State.SUSPECT, self.name))
        for seq, relay in list(self._relays.items()):
            if now >= relay.expires:
                del self._relays[seq]
        # suspicions that ran out
        for name, s in list(self._suspicions.items()):
            m = self.members.get(name)
            if m is None or m.state != State.SUSPECT or m.incarnation != s.incarnation:
                del self._suspicions[name]
                continue
            # confirmations beyond the first accuser shorten the timeout
            if now - s.start >= self._suspicion_timeout(len(s.confirmations) - 1):
                del self._suspicions[name]
                actions += self._apply(now, Update(name, m.address, m.incarnation, State.DEAD, self.name))
        if self._seeds and now >= self._next_join and len(self.members) == 1:
            actions += self.join(now, self._seeds)  # nobody answered yet: try again
        if now >= self._next_probe:
            self._next_probe = now + cfg.probe_interval
            actions += self._start_probe(now)
        if self._push_pull_wait is not None and now >= self._push_pull_wait[1]:
            # The periodic exchange went unanswered (lost, or the peer is slow): ask one other
            # member now rather than a whole push_pull_interval later. Once per period, so
            # a node that missed some news converges within about one period, not two.
            asked = self._push_pull_wait[0]
            self._push_pull_wait = None
            others = [m for m in self._others(State.ALIVE) if m.address != asked]
            if others:
                peer = self.rng.choice(others)
                actions.append(Send(peer.address, PushPull(self.address, self._full_state(), reply=True)))
        if now >= self._next_push_pull:
            self._next_push_pull = now + cfg.push_pull_interval
            for pool in (self._others(State.ALIVE), self._others(State.DEAD)):
                if pool:
                    peer = self.rng.choice(pool)
                    actions.append(Send(peer.address, PushPull(self.address, self._full_state(), reply=True)))
                    if pool[0].state == State.ALIVE:
                        self._push_pull_wait = (peer.address, now + cfg.probe_interval)
        return actions

    def receive(self, now: float, message: Message) -> list[Action]:
        if self.leaving:
            return []
        actions: list[Action] = []
        for update in getattr(message, "gossip", ()):
            actions += self._apply(now, update)
        if isinstance(message, Ping):
            if message.target == self.name:
                actions.append(Send(message.source, Ack(message.seq, self.address, self._gossip())))
        elif isinstance(message, Ack):
            if message.seq in self._probe:
                del self._probe[message.seq]
                self._adjust_awareness(-1)
            relay = self._relays.pop(message.seq, None)
            if relay is not None:
                actions.append(Send(relay.requester, Ack(relay.seq, self.address, self._gossip())))
        elif isinstance(message, PingReq):
            seq = self._next_seq()
            self._relays[seq] = _Relay(message.source, message.seq, now + self.config.probe_interval)
            actions.append(Send(message.target_address, Ping(seq, self.address, message.target, self._gossip())))
        elif isinstance(message, PushPull):
            for update in message.states:
                # A remote "dead" is only a suspicion here (as memberlist does):
                # we give the member the chance to refute before we bury it.
                if update.state == State.DEAD and update.name != self.name:
                    update = Update(update.name, update.address, update.incarnation, State.SUSPECT, update.source)
                actions += self._apply(now, update)
            if message.reply:
                actions.append(Send(message.source, PushPull(self.address, self._full_state(), reply=False)))
            elif self._push_pull_wait is not None and message.source == self._push_pull_wait[0]:
                self._push_pull_wait = None  # answered
        return actions

    # --- probing --------------------------------------------------------

    def _start_probe(self, now: float) -> list[Action]:
        if not self._probe_order:
            self._probe_order = [m.name for m in self._others(State.ALIVE, State.SUSPECT)]
            self.rng.shuffle(self._probe_order)
        while self._probe_order:
            name = self._probe_order.pop()
            m = self.members.get(name)
            if m is not None and m.state in (State.ALIVE, State.SUSPECT):
                seq = self._next_seq()
                scale = self.awareness + 1
                self._probe[seq] = _Probe(
                    name, now + self.config.probe_timeout * scale, now + self.config.probe_interval * scale
                )
                gossip = self._gossip()
                if m.state == State.SUSPECT:
                    # Lifeguard's buddy system: tell a suspect first, so it can refute in time.
                    news = Update(name, m.address, m.incarnation, State.SUSPECT, self._accuser(name))
                    gossip = (news, *gossip[: self.config.gossip_per_message - 1])
                return [Send(m.address, Ping(seq, self.address, name, gossip))]
        return []

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _adjust_awareness(self, delta: int) -> None:
        self.awareness = max(0, min(self.config.awareness_max, self.awareness + delta))

    def _suspicion_timeout(self, confirmations: int) -> float:
        cfg = self.config
        n = max(len(self.alive_members()), 2)
        low = cfg.suspicion_mult * math.log10(n) * cfg.probe_interval * (self.awareness + 1)
        high = cfg.suspicion_max_timeout_mult * low
        expected = max(cfg.suspicion_mult - 2, 1)
        fraction = math.log(confirmations + 1) / math.log(expected + 1)
        return max(low, high - (high - low) * min(fraction, 1.0))

    # --- the rules ------------------------------------------------------

    def _self_update(self) -> Update:
        return Update(self.name, self.address, self.incarnation, State.ALIVE, self.name)

    def _refute(self, incarnation: int) -> list[Action]:
        self.incarnation = max(self.incarnation, incarnation) + 1
        me = self.members[self.name]
        me.incarnation, me.state = self.incarnation, State.ALIVE
        self._adjust_awareness(+1)  # being suspected hints our own health is poor
        self._enqueue(self._self_update())
        return []

    def _apply(self, now: float, u: Update) -> list[Action]:
        if u.name == self.name:
            if u.state != State.ALIVE and not self.leaving and u.incarnation >= self.incarnation:
                return self._refute(u.incarnation)
            return []
        m = self.members.get(u.name)
        if u.state == State.ALIVE:
            if m is None:
                self.members[u.name] = Member(u.name, u.address, u.incarnation, State.ALIVE, now)
                self._probe_order.insert(self.rng.randrange(len(self._probe_order) + 1), u.name)
                return self._changed(u)
            if u.incarnation <= m.incarnation:
                return []
            m.incarnation, m.address = u.incarnation, u.address
            if m.state != State.ALIVE:
                m.state, m.since = State.ALIVE, now
                self._suspicions.pop(u.name, None)
                return self._changed(u)
            self._enqueue(u)
            return []
        if m is None:
            if u.state in (State.DEAD, State.LEFT):
                return []  # nothing to bury
            self.members[u.name] = Member(u.name, u.address, u.incarnation, State.SUSPECT, now)
            self._suspicions[u.name] = _Suspicion(now, u.incarnation, u.source, {u.source})
            return self._changed(u)
        if u.incarnation < m.incarnation or m.state in (State.DEAD, State.LEFT) and u.incarnation == m.incarnation:
            return []
        if m.state in (State.DEAD, State.LEFT) and u.state == State.SUSPECT:
            return []  # a newer incarnation must come as alive
        if u.state == State.SUSPECT:
            s = self._suspicions.get(u.name)
            if m.state == State.SUSPECT and m.incarnation == u.incarnation and s is not None:
                if u.source not in s.confirmations:
                    s.confirmations.add(u.source)
                    self._enqueue(u)  # pass on the independent confirmation
                return []
            m.incarnation, m.state, m.since = u.incarnation, State.SUSPECT, now
            self._suspicions[u.name] = _Suspicion(now, u.incarnation, u.source, {u.source})
            return self._changed(u)
        # dead or left
        m.incarnation, m.state, m.since = u.incarnation, u.state, now
        self._suspicions.pop(u.name, None)
        return self._changed(u)

    def _changed(self, u: Update) -> list[Action]:
        self._enqueue(u)
        m = self.members[u.name]
        return [Changed(m.name, m.address, m.state, m.incarnation)]

    # --- dissemination --------------------------------------------------

    def _enqueue(self, update: Update) -> None:
        self._news[update.name] = _News(update)  # newer news about a member replaces older

    def _gossip(self) -> tuple[Update, ...]:
        if not self._news:
            return ()
        limit = self.config.retransmit_mult * max(1, math.ceil(math.log10(len(self.members) + 1)))
        picked = sorted(self._news.values(), key=lambda n: n.sent)[: self.config.gossip_per_message]
        for news in picked:
            news.sent += 1
            if news.sent >= limit:
                del self._news[news.update.name]
        return tuple(n.update for n in picked)

    def _accuser(self, name: str) -> str:
        s = self._suspicions.get(name)
        return s.accuser if s is not None else self.name

    def _full_state(self) -> tuple[Update, ...]:
        self.members[self.name].incarnation = self.incarnation
        return tuple(
            Update(m.name, m.address, m.incarnation, m.state, self._accuser(m.name)) for m in self.members.values()
        )
