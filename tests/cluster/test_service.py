"""Membership over real transports, in-process under trio."""

import logging

import nacl.signing
import trio

from timpy.cluster.membership import MembershipConfig, State
from timpy.cluster.service import ClusterService
from timpy.cluster.transport import MemoryNetwork, MemoryTransport, TcpPeerTransport
from timpy.crypto.keys import ClusterKeys

FAST = MembershipConfig(probe_interval=0.2, probe_timeout=0.1, push_pull_interval=2.0)


async def converged(services, timeout=20.0):
    names = {s.name for s in services}
    with trio.fail_after(timeout):
        while not all(s.membership and s.membership.alive_members() == names for s in services):
            await trio.sleep(0.05)


async def test_ten_nodes_over_the_memory_transport_converge_and_see_a_death():
    net = MemoryNetwork(loss=0.02, seed=4)
    async with trio.open_nursery() as nursery:
        services = []
        for i in range(10):
            s = ClusterService(f"m{i}", MemoryTransport(net, f"m{i}"), FAST, seeds=["m0"] if i else [])
            await nursery.start(s.run)
            services.append(s)
        await converged(services)
        net.down.add("m3")
        with trio.fail_after(30):
            while not all(s.membership.state_of("m3") == State.DEAD for s in services if s.name != "m3"):
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()


async def test_three_nodes_over_tcp_converge_and_a_node_without_the_key_is_refused(caplog):
    caplog.set_level(logging.WARNING, logger="timpy.cluster")
    keys = ClusterKeys.generate()
    async with trio.open_nursery() as nursery:
        services = []
        for i in range(3):
            transport = TcpPeerTransport(keys, nacl.signing.SigningKey.generate())
            seeds = [services[0].transport.address] if services else []
            s = ClusterService(f"t{i}", transport, FAST, seeds=seeds)
            await nursery.start(s.run)
            services.append(s)
        await converged(services)
        assert all(len(s.transport.connected_peers()) >= 1 for s in services)

        stranger = ClusterService(
            "stranger", TcpPeerTransport(ClusterKeys.generate(), nacl.signing.SigningKey.generate()), FAST,
            seeds=[services[0].transport.address],
        )
        await nursery.start(stranger.run)
        with trio.fail_after(10):
            while not (stranger.transport.stats.refused and services[0].transport.stats.refused):
                await trio.sleep(0.05)
        await trio.sleep(FAST.probe_interval * 5)
        assert all("stranger" not in s.membership.members for s in services)
        assert stranger.membership.alive_members() == {"stranger"}
        messages = [r.getMessage() for r in caplog.records]
        assert any("refused a peer connecting from" in m and "cluster key" in m for m in messages)  # the member's side
        assert any("refused us: cluster key mismatch" in m for m in messages)  # the stranger's side

        await services[2].leave()
        with trio.fail_after(10):
            while services[0].membership.state_of("t2") != State.LEFT:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
