"""The one configuration object of a node, loaded from TOML with defaults.

Every option has a default, so ``NodeConfig()`` is a working single node that
keeps its data in ``./timpy-data``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from timpy.errors import ConfigError
from timpy.store.backends import BackendSpec


@dataclass(frozen=True)
class Limits:
    """Per-node limits on what clients may do; all enforced with clear errors."""

    max_frame: int = 256 * 1024  # bytes of one client frame, checked before reading it
    max_body: int = 64 * 1024  # bytes of one message body
    max_connections: int = 10_000
    rate_per_connection: float = 200.0  # frames per second, sustained
    burst_per_connection: int = 400  # frames allowed at once
    rate_violations_before_close: int = 50  # a flood past this closes the connection
    handshake_timeout: float = 10.0  # seconds to complete Hello + login
    history_page_max: int = 200
    sync_page: int = 200
    push_queue: int = 1024  # frames queued for one slow client before it is dropped
    min_password_length: int = 8
    max_group_size: int = 10_000  # members of one group
    max_terminals: int = 10  # terminals logged in at once per account
    # per device kind (the login's device_kind), e.g. {"mobile" = 1, "desktop" = 2}; kinds not named: max_terminals
    terminals_per_kind: dict[str, int] = field(default_factory=dict)
    terminal_overflow: str = "kick_oldest"  # past a terminal limit: "kick_oldest" or "refuse" the new login
    recall_window: float = 120.0  # seconds after sending during which a sender may recall a message
    user_message_rate: float = 200.0  # messages per second per user on one node, sustained (all its terminals)
    user_message_burst: int = 1000
    max_rooms_per_user: int = 20  # rooms one user is in at once, over all terminals
    room_stream_rate: float = 200.0  # stream frames per second per room
    room_stream_burst: int = 400
    receipt_push_max_members: int = 500  # above this group size, receipts are stored but not pushed

    def __post_init__(self) -> None:
        if self.terminal_overflow not in ("kick_oldest", "refuse"):
            raise ConfigError(
                f"limits.terminal_overflow must be \"kick_oldest\" or \"refuse\", got {self.terminal_overflow!r}"
            )
        if not isinstance(self.terminals_per_kind, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v > 0
            for k, v in self.terminals_per_kind.items()
        ):
            raise ConfigError(
                f"limits.terminals_per_kind maps device kinds to positive whole numbers, got {self.terminals_per_kind!r}"
            )


@dataclass(frozen=True)
class SecurityConfig:
    token_ttl: float = 7 * 24 * 3600.0  # seconds a session token lives
    # argon2id cost; the defaults are libsodium's "interactive" profile.
    password_opslimit: int = 2
    password_memlimit: int = 64 * 1024 * 1024


def _addresses_or_off(config: object, names: tuple[str, ...], prefix: str) -> None:
    """Check HOST:PORT options of a frozen config; 'off' (or empty) becomes None."""
    for name in names:
        value = getattr(config, name)
        if value in ("off", "", False):
            object.__setattr__(config, name, None)
        elif value is not None:
            parse_hostport(value, f"{prefix}{name}")


@dataclass(frozen=True)
class ClusterConfig:
    """How a node joins and serves the cluster (the ``[cluster]`` table)."""

    listen: str | None = "127.0.0.1:7072"  # peer listener (authenticated, encrypted); None = standalone
    advertise: str | None = None  # the address peers dial, when it differs from listen (0.0.0.0, NAT)
    join: tuple[str, ...] = ()  # seed peers HOST:PORT; any member will do
    replicas: int = 3  # R: copies of each user and conversation, capped by the cluster size
    write_quorum: int = 2  # W: copies stored before a send is acknowledged
    vnodes: int = 128  # points per node on the ring
    probe_interval: float = 1.0  # SWIM: seconds between probes (memberlist LAN profile)
    probe_timeout: float = 0.5
    suspicion_mult: int = 4  # suspicion timeout = mult * log10(n) * probe_interval
    push_pull_interval: float = 30.0
    anti_entropy_interval: float = 60.0  # seconds between full replica comparisons
    # NAT traversal (docs/nat.md): relay through a peer, then ICE to a direct UDP path
    nat: bool = True
    ice: bool = True  # with nat: try ICE to move a relayed peer to a direct UDP path
    stun: str | None = None  # HOST:PORT of a STUN server; default: ask a peer we reached directly
    turn: str | None = None  # HOST:PORT of a TURN server, for relayed ICE candidates
    turn_username: str | None = None
    turn_password: str | None = None
    turn_transport: str = "udp"  # udp | tcp
    ice_timeout: float = 10.0  # seconds for one ICE negotiation
    upgrade_interval: float = 60.0  # seconds between ICE attempts while a peer is relayed

    def __post_init__(self) -> None:
        _addresses_or_off(self, ("listen", "advertise"), "cluster.")
        for name in ("stun", "turn"):
            if getattr(self, name) is not None:
                parse_hostport(getattr(self, name), f"cluster.{name}")
        if self.turn_transport not in ("udp", "tcp"):
            raise ConfigError(f"cluster.turn_transport must be udp or tcp, got {self.turn_transport!r}")
        if self.ice_timeout <= 0 or self.upgrade_interval <= 0:
            raise ConfigError("cluster.ice_timeout and cluster.upgrade_interval must be positive")
        if isinstance(self.join, str):
            object.__setattr__(self, "join", (self.join,))
        object.__setattr__(self, "join", tuple(self.join))
        for seed in self.join:
            parse_hostport(seed, "cluster.join")
        if self.replicas < 1 or not 1 <= self.write_quorum <= self.replicas:
            raise ConfigError(
                f"cluster: need 1 <= write_quorum <= replicas, got write_quorum={self.write_quorum}, "
                f"replicas={self.replicas}"
            )


@dataclass(frozen=True)
class AdminConfig:
    """The admin HTTP listener (the ``[admin]`` table): API, metrics, health.

    Off public interfaces by default: binding anything but loopback needs
    ``allow_public = true`` (with TLS: ``tls_cert``/``tls_key``, or a TLS reverse proxy; docs/operations.md).
    """

    listen: str | None = "127.0.0.1:7073"  # None/'off' = no admin listener
    token_file: Path | None = None  # default DATA/admin.token, created 0600; $TIMPY_ADMIN_TOKEN wins
    allow_public: bool = False
    chat_ws_url: str | None = None  # the WebSocket URL the web chat page uses (behind a proxy: wss://...)
    tls_cert: Path | None = None  # PEM certificate (chain): serve the admin API over HTTPS
    tls_key: Path | None = None  # its private key (PEM)
    tls_client_ca: Path | None = None  # PEM CA file: require client certificates it signed (mTLS)

    def __post_init__(self) -> None:
        _addresses_or_off(self, ("listen",), "admin.")
        _tls_pair(self, "admin.")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("admin.tls_client_ca needs admin.tls_cert and admin.tls_key (client certificates need TLS)")
        if self.chat_ws_url is not None and not self.chat_ws_url.startswith(("ws://", "wss://")):
            raise ConfigError(f"admin.chat_ws_url must start with ws:// or wss://, got {self.chat_ws_url!r}")
        if self.listen and not self.allow_public:
            host, _ = parse_hostport(self.listen, "admin.listen")
            if not _is_loopback(host):
                raise ConfigError(
                    f"admin.listen {self.listen} is not a loopback address: the admin API is meant for "
                    "operators; set admin.allow_public = true and serve it with TLS (admin.tls_cert, admin.tls_key) "
                    "or behind a TLS reverse proxy"
                )


def _tls_pair(config: NodeConfig | AdminConfig, prefix: str) -> None:
    """A TLS certificate and its key come together."""
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError(f"{prefix}tls_cert and {prefix}tls_key must be set together (PEM certificate and its key)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class StorageConfig:
    """Shared-backend mode (the ``[storage]`` table): SQL backends that every
    node of the cluster shares. Empty: embedded mode (each node its own store).

    ``backends`` seeds the cluster's backend map the first time; after that
    the map stored in the backends wins, and it changes only with
    ``timpy backend add/remove``.
    """

    backends: tuple[BackendSpec, ...] = ()  # [[storage.backends]] name, url, weight
    threads: int = 8  # worker threads for storage calls

    def __post_init__(self) -> None:
        specs = []
        for raw in self.backends:
            if isinstance(raw, BackendSpec):
                specs.append(raw)
            elif isinstance(raw, dict):
                unknown = set(raw) - {"name", "url", "weight"}
                if unknown or "name" not in raw or "url" not in raw:
                    raise ConfigError(
                        f"storage.backends: each backend is {{name, url, weight?}}, got {sorted(raw)}"
                    )
                specs.append(BackendSpec(str(raw["name"]), str(raw["url"]), float(raw.get("weight", 1.0))))
            else:
                raise ConfigError("storage.backends: a list of tables with name, url and weight")
        names = [b.name for b in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"storage.backends: names must be unique, got {names}")
        if self.threads < 1:
            raise ConfigError("storage.threads must be at least 1")
        object.__setattr__(self, "backends", tuple(specs))

    @property
    def shared(self) -> bool:
        return bool(self.backends)


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path = Path("timpy-data")
    memory: bool = False  # no database file at all
    listen: str | None = "127.0.0.1:7070"  # TCP client listener, None = off
    ws: str | None = "127.0.0.1:7071"  # WebSocket client listener, None = off
    database_url: str | None = None  # overrides the embedded SQLite file
    sqlite_synchronous: str = "FULL"  # FULL survives power loss; NORMAL a process crash
    cluster_key_file: Path | None = None  # default: data_dir / "cluster.key"
    ready_file: Path | None = None  # JSON with bound addresses, written once listening
    # TLS on the TCP and WebSocket client listeners (clients use tcps:// and wss://)
    tls_cert: Path | None = None  # PEM certificate (chain)
    tls_key: Path | None = None  # its private key (PEM)
    limits: Limits = field(default_factory=Limits)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)

    def __post_init__(self) -> None:
        _addresses_or_off(self, ("listen", "ws"), "")
        _tls_pair(self, "")
        if self.storage.shared and (self.memory or self.database_url):
            raise ConfigError("[storage] backends (shared mode) cannot be combined with --memory or database_url")

    def replace(self, **changes: Any) -> NodeConfig:
        return dataclasses.replace(self, **changes)

    @property
    def key_file(self) -> Path:
        return self.cluster_key_file or self.data_dir / "cluster.key"


def parse_hostport(text: str, what: str = "address") -> tuple[str, int]:
    """'HOST:PORT' or '[V6]:PORT' -> (host, port)."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise ConfigError(f"{what}: expected HOST:PORT (or 'off'), got {text!r}")
    return host.strip("[]"), int(port)


_PATHS = ("data_dir", "cluster_key_file", "ready_file", "token_file", "tls_cert", "tls_key", "tls_client_ca")
_SECTIONS = {"limits": Limits, "security": SecurityConfig, "cluster": ClusterConfig, "storage": StorageConfig, "admin": AdminConfig}


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"unknown option '{where}{key}'; known: {', '.join(sorted(known))}")
        if name in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"[{name}] must be a table")
            value = _build(_SECTIONS[name], value, f"{name}.")
        elif name in _PATHS and value is not None:
            value = Path(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - dataclass rejects a value
        raise ConfigError(f"bad configuration: {exc}") from exc


def load_config(path: Path | str) -> NodeConfig:
    """Read a node configuration file (TOML). Relative paths are relative to the file."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from exc
    values = values.get("node", values)
    config: NodeConfig = _build(NodeConfig, values, "")
    base = path.parent
    for name in ("data_dir", "cluster_key_file", "ready_file", "tls_cert", "tls_key"):
        value = getattr(config, name)
        if value is not None and not value.is_absolute():
            config = config.replace(**{name: base / value})
    for name in ("token_file", "tls_cert", "tls_key", "tls_client_ca"):
        value = getattr(config.admin, name)
        if value is not None and not value.is_absolute():
            config = config.replace(admin=dataclasses.replace(config.admin, **{name: base / value}))
    return config
