"""Network namespaces with NAT, for tests of NAT traversal.

One "internet" segment (a bridge in its own namespace, 198.18.0.0/24) joins a
public host and three NAT routers; behind each router is one private host on
its own 198.19.N.0/24. Only 198.18.0.0/15 addresses are used, nothing is
routed anywhere else, and ``teardown`` deletes every namespace (their veths
go with them).

- full cone: MASQUERADE keeps the source port, and a DNAT rule sends every new
  inbound flow on the WAN to the private host (endpoint-independent mapping
  and filtering);
- symmetric: MASQUERADE --random picks a new port for every destination, and
  only replies come back (endpoint-dependent mapping and filtering).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

PUBLIC = "198.18.0.1"
_SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
IP = shutil.which("ip", path=_SEARCH) or "ip"
IPTABLES = shutil.which("iptables", path=_SEARCH) or "iptables"
SYSCTL = shutil.which("sysctl", path=_SEARCH) or "sysctl"


def why_not_available() -> str | None:
    """None when namespaces with NAT can be built here, else why not."""
    if os.geteuid() != 0:
        return "network namespace tests need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool, path=_SEARCH) is None:
            return f"network namespace tests need {tool} (apt-get install iproute2 iptables)"
    probe = f"tpprobe{os.getpid()}"
    made = subprocess.run([IP, "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    try:
        nat = subprocess.run([IP, "netns", "exec", probe, IPTABLES, "-t", "nat", "-L", "-n"],
                             capture_output=True, text=True)
        if nat.returncode != 0:
            return f"iptables NAT does not work in a namespace: {nat.stderr.strip()}"
    finally:
        subprocess.run([IP, "netns", "del", probe], capture_output=True)
    return None


@dataclass
class Host:
    ns: str
    ip: str


@dataclass
class Internet:
    prefix: str = field(default_factory=lambda: f"tp{os.getpid() % 100000}")
    made: list[str] = field(default_factory=list)
    hosts: dict[str, Host] = field(default_factory=dict)
    routers: dict[str, str] = field(default_factory=dict)

    def _ns(self, name: str) -> str:
        ns = f"{self.prefix}{name}"
        _run(IP, "netns", "add", ns)
        self.made.append(ns)
        _run(IP, "-n", ns, "link", "set", "lo", "up")
        return ns

    def _wire(self, ns: str, ifname: str, cidr: str) -> None:
        """A veth from ``ns`` (named ifname) to the internet bridge."""
        outer = f"{ns[-6:]}{ifname}"[-15:]
        _run(IP, "link", "add", outer, "type", "veth", "peer", "name", ifname, "netns", ns)
        _run(IP, "link", "set", outer, "netns", self.inet)
        _run(IP, "-n", self.inet, "link", "set", outer, "master", "br0", "up")
        _run(IP, "-n", ns, "addr", "add", cidr, "dev", ifname)
        _run(IP, "-n", ns, "link", "set", ifname, "up")

    def build(self, routers: dict[str, str]) -> Internet:
        """``routers``: name -> "fullcone" | "symmetric"; plus one public host "pub"."""
        self.inet = self._ns("inet")
        _run(IP, "-n", self.inet, "link", "add", "br0", "type", "bridge")
        _run(IP, "-n", self.inet, "link", "set", "br0", "up")
        pub = self._ns("pub")
        self._wire(pub, "eth0", f"{PUBLIC}/24")
        self.hosts["pub"] = Host(pub, PUBLIC)
        for i, (name, kind) in enumerate(routers.items(), start=1):
            wan, lan_net, host_ip = f"198.18.0.{i + 1}", f"198.19.{i}", f"198.19.{i}.2"
            router = self._ns(f"r{name}")
            self._wire(router, "wan", f"{wan}/24")
            inner = self._ns(name)
            _run(IP, "link", "add", "lan", "netns", router, "type", "veth", "peer", "name", "eth0", "netns", inner)
            _run(IP, "-n", router, "addr", "add", f"{lan_net}.1/24", "dev", "lan")
            _run(IP, "-n", router, "link", "set", "lan", "up")
            _run(IP, "-n", inner, "addr", "add", f"{host_ip}/24", "dev", "eth0")
            _run(IP, "-n", inner, "link", "set", "eth0", "up")
            _run(IP, "-n", inner, "route", "add", "default", "via", f"{lan_net}.1")
            _run(IP, "netns", "exec", router, SYSCTL, "-qw", "net.ipv4.ip_forward=1")
            self.hosts[name] = Host(inner, host_ip)
            self.routers[name] = router
            self.set_nat(name, kind)
        return self

    def set_nat(self, name: str, kind: str) -> None:
        """Make the NAT in front of ``name`` full cone or symmetric (flows already open keep theirs)."""
        ipt = [IP, "netns", "exec", self.routers[name], IPTABLES, "-t", "nat"]
        _run(*ipt, "-F")
        if kind == "fullcone":
            _run(*ipt, "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE")
            _run(*ipt, "-A", "PREROUTING", "-i", "wan", "-j", "DNAT", "--to-destination", self.hosts[name].ip)
        elif kind == "symmetric":
            _run(*ipt, "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE", "--random")
        else:
            raise ValueError(kind)

    def teardown(self) -> None:
        for ns in reversed(self.made):
            subprocess.run([IP, "netns", "del", ns], capture_output=True)
        self.made.clear()


def _run(*cmd: str) -> None:
    done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
