"""The one configuration model of a node, and where its values come from.

Every option is a typed, range-checked field of the frozen classes below
(pydantic dataclasses: validated on construction, ``dataclasses.replace``
still works). The same model checks the TOML file, the ``TIMPY_*``
environment variables, the ``timpy node`` flags and the admin API's
``PUT /api/v1/limits``; a bad value is one :class:`ConfigError` naming the
option, the value and what is allowed.

Precedence, highest first: flags > environment > file > defaults.

Defaults: an embedded node (``NodeConfig()``, ``timpy.open_node``) opens only
the TCP client listener; the WebSocket, peer and admin listeners are off until
the config names them. ``timpy node`` adds :data:`CLI_DEFAULTS` below the file,
so the command line keeps ports 7070-7073.

This module sits below the store and the node: it imports neither.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import json
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import (
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass

from timpy.errors import ConfigError

_MODEL = ConfigDict(extra="forbid", allow_inf_nan=False)
ENV_PREFIX = "TIMPY_"
# TIMPY_* variables that are not options: secrets read where they are used.
ENV_NOT_OPTIONS = frozenset({"TIMPY_CLUSTER_KEY", "TIMPY_ADMIN_TOKEN"})


def option(default: Any = None, meaning: str = "", *, allowed: str = "", unit: str = "",
           factory: Callable[[], Any] | None = None, **constraints: Any) -> Any:
    """A field with its meaning, and optionally the words for what it allows."""
    extra = {"allowed": allowed, "unit": unit}
    if factory is not None:
        return Field(default_factory=factory, description=meaning, json_schema_extra=extra, **constraints)
    return Field(default, description=meaning, json_schema_extra=extra, **constraints)


class _Rule(ValueError):
    """A cross-field rule broken by ``key``."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        super().__init__(f"{key} = {value!r}: must be {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


def _not_a_boolean(cls: type, value: Any, info: ValidationInfo) -> Any:
    # true/false is not a number, though Python's bool is an int
    if isinstance(value, bool) and cls.__annotations__.get(info.field_name) in ("int", "float"):
        raise ValueError("a number, not true or false")
    return value


def _config_class(section: str) -> Callable[[type], type]:
    """A frozen pydantic dataclass whose construction errors are ConfigErrors."""

    def wrap(cls: type) -> type:
        cls._numbers_are_not_booleans = field_validator("*", mode="before")(_not_a_boolean)  # type: ignore[attr-defined]
        cls = dataclass(frozen=True, config=_MODEL)(cls)
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            except ValidationError as exc:
                raise ConfigError(describe_errors(exc, cls, section)) from None

        cls.__init__ = __init__  # type: ignore[method-assign]
        cls._section = section  # type: ignore[attr-defined]
        return cls

    return wrap


class _Replace:
    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes``, validated like any other value."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def parse_hostport(text: str, what: str = "address") -> tuple[str, int]:
    """'HOST:PORT' or '[V6]:PORT' -> (host, port)."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise ConfigError(f"{what}: expected HOST:PORT (or 'off'), got {text!r}")
    return host.strip("[]"), int(port)


def _hostport(value: str | None) -> str | None:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError("HOST:PORT")
    return value


def _off(value: Any) -> Any:
    return None if value in ("off", "") or value is False else value


HOSTPORT_OR_OFF = 'HOST:PORT (port 0 picks a free one), or "off"'


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _readable_file(path: Path | None, key: str) -> None:
    if path is not None and not path.is_file():
        raise _Rule(key, str(path), "the path of an existing file")


@_config_class("storage.backends")
class BackendSpec:
    """One SQL backend: a name, any SQLAlchemy URL, and a weight (its share of the keys)."""

    name: str = option(..., "the backend's name", allowed="1 to 40 letters, digits, '-' or '_'",
                       pattern=r"^[A-Za-z0-9_-]{1,40}$")
    url: str = option(..., "a SQLAlchemy URL", allowed="a SQLAlchemy URL (dialect://...)", pattern=r"^[A-Za-z0-9+_.-]+://")
    weight: float = option(1.0, "its share of the keys", allowed="a number > 0", gt=0)

    def pack(self) -> list[Any]:
        return [self.name, self.url, float(self.weight)]

    @classmethod
    def unpack(cls, raw: Any) -> BackendSpec:
        name, url, weight = raw
        return cls(str(name), str(url), float(weight))


@_config_class("limits")
class Limits(_Replace):
    """Per-node limits on what clients may do; all enforced with clear errors."""

    max_frame: int = option(256 * 1024, "bytes of one client frame, checked before reading it",
                            unit="bytes", ge=1024, le=64 * 1024 * 1024)
    max_body: int = option(64 * 1024, "bytes of one message body", unit="bytes", ge=1, le=64 * 1024 * 1024,
                           allowed="a whole number of bytes (e.g. 65536) no larger than max_frame")
    max_connections: int = option(10_000, "client connections at once", ge=1, le=10_000_000)
    rate_per_connection: float = option(200.0, "frames per second per connection, sustained", gt=0)
    burst_per_connection: int = option(400, "frames one connection may send at once", ge=1)
    rate_violations_before_close: int = option(50, "rate-limited frames before a flooding connection is closed", ge=1)
    handshake_timeout: float = option(10.0, "seconds to complete Hello + login", unit="seconds", gt=0, le=3600)
    history_page_max: int = option(200, "messages in one history page", ge=1, le=100_000)
    sync_page: int = option(200, "messages in one sync page", ge=1, le=100_000)
    push_queue: int = option(1024, "frames queued for one slow client before it is dropped", ge=1)
    min_password_length: int = option(8, "characters of a password", ge=1, le=1024)
    max_group_size: int = option(10_000, "members of one group", ge=1)
    max_terminals: int = option(10, "terminals logged in at once per account", ge=1)
    terminals_per_kind: dict[str, int] = option(
        None, "terminals per device kind (the login's device_kind); kinds not named: max_terminals",
        allowed='a table of device kinds to whole numbers >= 1, e.g. {mobile = 1, desktop = 2}', factory=dict)
    terminal_overflow: Literal["kick_oldest", "refuse"] = option(
        "kick_oldest", "past a terminal limit: log the oldest terminal out, or refuse the new login")
    recall_window: float = option(120.0, "seconds after sending during which a sender may recall a message",
                                  unit="seconds", gt=0)
    user_message_rate: float = option(200.0, "messages per second per user on one node, sustained", gt=0)
    user_message_burst: int = option(1000, "messages one user may send at once", ge=1)
    max_rooms_per_user: int = option(20, "rooms one user is in at once, over all terminals", ge=1)
    room_stream_rate: float = option(200.0, "stream frames per second per room", gt=0)
    room_stream_burst: int = option(400, "stream frames one room may carry at once", ge=1)
    receipt_push_max_members: int = option(500, "above this group size, receipts are stored but not pushed", ge=1)

    @field_validator("terminals_per_kind")
    @classmethod
    def _kinds(cls, value: dict[str, int]) -> dict[str, int]:
        for kind, n in value.items():
            if n < 1:
                raise ValueError(f"{kind} = {n}")
        return value

    @model_validator(mode="after")
    def _body_fits_a_frame(self) -> Limits:
        if self.max_body > self.max_frame:
            raise _Rule("max_body", self.max_body, f"no larger than max_frame ({self.max_frame})")
        return self


@_config_class("security")
class SecurityConfig(_Replace):
    token_ttl: float = option(7 * 24 * 3600.0, "seconds a session token lives", unit="seconds", gt=0)
    # argon2id cost; the defaults are libsodium's "interactive" profile.
    password_opslimit: int = option(2, "argon2id passes over memory", ge=1, le=64)
    password_memlimit: int = option(64 * 1024 * 1024, "argon2id memory", unit="bytes", ge=8192, le=4 * 1024**3)


@_config_class("cluster")
class ClusterConfig(_Replace):
    """How a node joins and serves the cluster (the ``[cluster]`` table)."""

    listen: str | None = option(None, "peer listener (authenticated, encrypted); off: standalone", allowed=HOSTPORT_OR_OFF)
    advertise: str | None = option(None, "the address peers dial, when it differs from listen (0.0.0.0, NAT)",
                                   allowed="HOST:PORT")
    join: tuple[str, ...] = option((), "seed peers to join through; any member will do",
                                   allowed="a list of HOST:PORT (in the environment: comma-separated)")
    replicas: int = option(3, "R: copies of each user and conversation, capped by the cluster size", ge=1, le=64,
                           allowed="a whole number from 1 to 64 (e.g. 3)")
    write_quorum: int = option(2, "W: copies stored before a send is acknowledged", ge=1, le=64,
                               allowed="a whole number from 1 to replicas")
    vnodes: int = option(128, "points per node on the ring", ge=1, le=4096)
    probe_interval: float = option(1.0, "SWIM: seconds between probes", unit="seconds", gt=0, le=60)
    probe_timeout: float = option(0.5, "SWIM: seconds to wait for a probe's answer", unit="seconds", gt=0, le=60)
    suspicion_mult: int = option(4, "suspicion timeout = mult * log10(n) * probe_interval", ge=1, le=100)
    push_pull_interval: float = option(30.0, "seconds between full membership exchanges", unit="seconds", gt=0)
    anti_entropy_interval: float = option(60.0, "seconds between full replica comparisons", unit="seconds", gt=0)
    nat: bool = option(True, "relay through a peer when two peers cannot dial each other (docs/nat.md)")
    ice: bool = option(True, "with nat: try ICE to move a relayed peer to a direct UDP path")
    stun: str | None = option(None, "STUN server; default: ask a peer we reached directly", allowed="HOST:PORT")
    turn: str | None = option(None, "TURN server, for relayed ICE candidates", allowed="HOST:PORT")
    turn_username: str | None = option(None, "TURN user name", allowed="a string")
    turn_password: str | None = option(None, "TURN password", allowed="a string")
    turn_transport: Literal["udp", "tcp"] = option("udp", "transport to the TURN server")
    ice_timeout: float = option(10.0, "seconds for one ICE negotiation", unit="seconds", gt=0)
    upgrade_interval: float = option(60.0, "seconds between ICE attempts while a peer is relayed", unit="seconds", gt=0)

    _off_listen = field_validator("listen", "advertise", mode="before")(_off)
    _check_addresses = field_validator("listen", "advertise", "stun", "turn")(_hostport)

    @field_validator("join", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("join")
    @classmethod
    def _seeds(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for seed in value:
            _hostport(seed)
        return value

    @model_validator(mode="after")
    def _quorum_fits(self) -> ClusterConfig:
        if self.write_quorum > self.replicas:
            raise _Rule("write_quorum", self.write_quorum, f"no larger than replicas ({self.replicas})")
        return self


@_config_class("admin")
class AdminConfig(_Replace):
    """The admin HTTP listener (the ``[admin]`` table): API, metrics, health.

    Off public interfaces by default: binding anything but loopback needs
    ``allow_public = true`` (with TLS below, or a TLS reverse proxy in front).
    """

    listen: str | None = option(None, "admin HTTP listener (API, metrics, health, dashboard)", allowed=HOSTPORT_OR_OFF)
    token_file: Path | None = option(None, "admin token file; default DATA/admin.token, created 0600; "
                                     "$TIMPY_ADMIN_TOKEN wins", allowed="a file path")
    allow_public: bool = option(False, "allow a listen address that is not loopback")
    chat_ws_url: str | None = option(None, "the WebSocket URL the web chat page uses (behind a proxy: wss://...)",
                                     allowed="a URL starting with ws:// or wss://", pattern=r"^wss?://")
    tls_cert: Path | None = option(None, "PEM certificate chain: serve the admin API over HTTPS", allowed="a file path")
    tls_key: Path | None = option(None, "PEM private key of tls_cert", allowed="a file path")
    tls_client_ca: Path | None = option(None, "PEM CA: require client certificates signed by it (mTLS)",
                                        allowed="a file path, with tls_cert and tls_key")

    _off_listen = field_validator("listen", mode="before")(_off)
    _check_listen = field_validator("listen")(_hostport)

    @model_validator(mode="after")
    def _rules(self) -> AdminConfig:
        if self.listen and not self.allow_public and not _is_loopback(self.listen.rpartition(":")[0].strip("[]")):
            raise _Rule("listen", self.listen, "a loopback address unless allow_public = true (the admin API is for "
                        "operators: set admin.allow_public = true and protect it with TLS)")
        _tls_pair(self.tls_cert, self.tls_key, "")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise _Rule("tls_client_ca", str(self.tls_client_ca), "set together with tls_cert and tls_key")
        _readable_file(self.tls_client_ca, "tls_client_ca")
        return self


def _tls_pair(cert: Path | None, key: Path | None, prefix: str) -> None:
    if (cert is None) != (key is None):
        missing = "tls_key" if key is None else "tls_cert"
        given = "tls_cert" if key is None else "tls_key"
        raise _Rule(f"{prefix}{given}", str(cert or key), f"set together with {prefix}{missing}")
    _readable_file(cert, f"{prefix}tls_cert")
    _readable_file(key, f"{prefix}tls_key")


@_config_class("storage")
class StorageConfig(_Replace):
    """Shared-backend mode (the ``[storage]`` table): SQL backends that every
    node of the cluster shares. Empty: embedded mode (each node its own store).

    ``backends`` seeds the cluster's backend map the first time; after that
    the map stored in the backends wins, and it changes only with
    ``timpy backend add/remove``.
    """

    backends: tuple[BackendSpec, ...] = option(
        (), "shared-backend mode: the SQL backends every node shares (seeds the backend map)",
        allowed="[[storage.backends]] tables of name, url, weight (in the environment: NAME=URL,NAME=URL)")
    threads: int = option(8, "worker threads for storage calls", ge=1, le=256)

    @field_validator("backends")
    @classmethod
    def _unique(cls, value: tuple[BackendSpec, ...]) -> tuple[BackendSpec, ...]:
        names = [b.name for b in value]
        if len(set(names)) != len(names):
            raise _Rule("backends", names, "backends with different names")
        return value

    @property
    def shared(self) -> bool:
        return bool(self.backends)


WEBHOOK_EVENTS = ("message.before_send", "message.stored", "group.changed", "user.registered", "user.login",
                  "user.logout")


@_config_class("webhooks.endpoints")
class WebhookEndpoint:
    """One business server's HTTP callback (docs/integrations.md)."""

    name: str = option(..., "the endpoint's name (metrics, dead letters)", allowed="1 to 40 letters, digits, '-' or '_'",
                       pattern=r"^[A-Za-z0-9_-]{1,40}$")
    url: str = option(..., "where events are POSTed", allowed="an http:// or https:// URL", pattern=r"^https?://")
    secret: str = option(..., "the HMAC-SHA256 key the receiver checks signatures with",
                         allowed="a string of at least 16 characters", min_length=16)
    events: tuple[str, ...] = option(
        ("message.stored",), "the events sent here; message.before_send makes it a check before each message is stored",
        allowed="a list of " + ", ".join(WEBHOOK_EVENTS))
    timeout: float = option(5.0, "seconds to wait for the endpoint's answer", unit="seconds", gt=0, le=300)
    fail_open: bool = option(True, "message.before_send: when the endpoint fails or times out, store the message "
                             "anyway (false: refuse it)")

    @field_validator("events", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("events")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for event in value:
            if event not in WEBHOOK_EVENTS:
                raise ValueError(f"unknown event {event!r}")
        return value


@_config_class("webhooks")
class WebhooksConfig(_Replace):
    """HTTP callbacks to business servers (the ``[webhooks]`` table; docs/integrations.md)."""

    endpoints: tuple[WebhookEndpoint, ...] = option(
        (), "HTTP callbacks: before a message is stored, and after events",
        allowed="[[webhooks.endpoints]] tables of name, url, secret, events, timeout, fail_open "
                "(in the environment: a JSON list of them)")
    max_attempts: int = option(12, "deliveries of one event before it becomes a dead letter", ge=1, le=1000)
    backoff_base: float = option(1.0, "seconds before the first retry; doubled each time", unit="seconds", gt=0)
    backoff_max: float = option(600.0, "the longest wait between retries", unit="seconds", gt=0)
    concurrency: int = option(16, "deliveries in flight per endpoint", ge=1, le=1024)
    keep_delivered: float = option(86400.0, "seconds a delivered event's id is kept (an event emitted again in that "
                                   "time is not sent again)", unit="seconds", ge=0)

    @field_validator("endpoints")
    @classmethod
    def _unique(cls, value: tuple[WebhookEndpoint, ...]) -> tuple[WebhookEndpoint, ...]:
        names = [e.name for e in value]
        if len(set(names)) != len(names):
            raise _Rule("endpoints", names, "endpoints with different names")
        return value


@_config_class("push")
class PushConfig(_Replace):
    """Notifications to offline devices through Matrix push gateways (``[push]``; docs/integrations.md)."""

    enabled: bool = option(True, "send notifications to the pushers devices register")
    content: Literal["none", "sender", "full"] = option(
        "none", "what a notification carries besides counts and ids: nothing, the sender's name, or also the body")
    coalesce: float = option(2.0, "seconds messages to one device are gathered into one notification",
                             unit="seconds", ge=0, le=3600)
    timeout: float = option(10.0, "seconds to wait for the push gateway's answer", unit="seconds", gt=0, le=300)
    max_attempts: int = option(5, "tries of one notification before it is dropped", ge=1, le=100)
    max_pushers: int = option(10, "pushers one account may register", ge=1, le=1000)
    gateways: tuple[str, ...] = option(
        (), "the push gateways pushers may name, as scheme://host[:port]; empty: any (a client then chooses "
        "where this node sends requests)", allowed="a list of http(s)://HOST[:PORT] (in the environment: comma-separated)")

    @field_validator("gateways", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return tuple(v.strip() for v in value.split(",") if v.strip()) if isinstance(value, str) else value

    @field_validator("gateways")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if not re.match(r"^https?://[^/?#]+$", origin):
                raise ValueError(f"{origin!r} is not scheme://host[:port]")
        return tuple(o.lower() for o in value)


@_config_class("")
class NodeConfig(_Replace):
    data_dir: Path = option(Path("timpy-data"), "data directory (database, keys, token; created 0700)",
                            allowed="a directory path")
    memory: bool = option(False, "keep everything in memory: no database file")
    listen: str | None = option("127.0.0.1:7070", "TCP client listener", allowed=HOSTPORT_OR_OFF)
    ws: str | None = option(None, "WebSocket client listener", allowed=HOSTPORT_OR_OFF)
    tls_cert: Path | None = option(None, "PEM certificate chain: serve the client listeners over TLS (tcps://, wss://)",
                                   allowed="a file path")
    tls_key: Path | None = option(None, "PEM private key of tls_cert", allowed="a file path")
    database_url: str | None = option(None, "a SQLAlchemy URL to use instead of the embedded SQLite file",
                                      allowed="a SQLAlchemy URL (dialect://...)", pattern=r"^[A-Za-z0-9+_.-]+://")
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = option(
        "FULL", "SQLite durability: FULL survives power loss, NORMAL a process crash")
    cluster_key_file: Path | None = option(None, "cluster key file; default DATA/cluster.key", allowed="a file path")
    ready_file: Path | None = option(None, "JSON with the bound addresses, written once listening", allowed="a file path")
    shutdown_timeout: float = option(10.0, "seconds a SIGINT/SIGTERM may take to drain before the node exits anyway",
                                     unit="seconds", gt=0, le=3600)
    limits: Limits = option(None, "", factory=Limits)
    security: SecurityConfig = option(None, "", factory=SecurityConfig)
    cluster: ClusterConfig = option(None, "", factory=ClusterConfig)
    storage: StorageConfig = option(None, "", factory=StorageConfig)
    admin: AdminConfig = option(None, "", factory=AdminConfig)
    webhooks: WebhooksConfig = option(None, "", factory=WebhooksConfig)
    push: PushConfig = option(None, "", factory=PushConfig)

    _off_listen = field_validator("listen", "ws", mode="before")(_off)
    _check_listen = field_validator("listen", "ws")(_hostport)

    @field_validator("sqlite_synchronous", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _rules(self) -> NodeConfig:
        if self.storage.shared and (self.memory or self.database_url):
            raise _Rule("memory" if self.memory else "database_url", self.memory or self.database_url,
                        "unset when [storage] backends are given (shared-backend mode)")
        _tls_pair(self.tls_cert, self.tls_key, "")
        return self

    @property
    def key_file(self) -> Path:
        return self.cluster_key_file or self.data_dir / "cluster.key"


# What `timpy node` listens on when neither flags, environment nor file say.
CLI_DEFAULTS: dict[str, Any] = {
    "ws": "127.0.0.1:7071",
    "cluster": {"listen": "127.0.0.1:7072"},
    "admin": {"listen": "127.0.0.1:7073"},
}

SECTIONS: dict[str, type] = {
    "limits": Limits, "security": SecurityConfig, "cluster": ClusterConfig, "storage": StorageConfig, "admin": AdminConfig,
    "webhooks": WebhooksConfig, "push": PushConfig,
}
_PATH_KEYS = {("data_dir",), ("cluster_key_file",), ("ready_file",), ("tls_cert",), ("tls_key",),
              ("admin", "token_file"), ("admin", "tls_cert"), ("admin", "tls_key"), ("admin", "tls_client_ca")}
_NODE = TypeAdapter(NodeConfig)


# --- errors ----------------------------------------------------------------

def _fields(cls: type) -> dict[str, Any]:
    return cls.__pydantic_fields__  # type: ignore[attr-defined, no-any-return]


def _inner_class(annotation: Any) -> type | None:
    """The config class inside ``X``, ``X | None`` or ``tuple[X, ...]``, if any."""
    if isinstance(annotation, type) and hasattr(annotation, "__pydantic_fields__"):
        return annotation
    for arg in get_args(annotation):
        found = _inner_class(arg)
        if found is not None:
            return found
    return None


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def option_name(section: str, key: str) -> str:
    """How an option is written in messages: ``[limits] max_body`` or ``listen``."""
    return f"[{section}] {key}" if section else key


def env_name(section: str, key: str) -> str:
    return ENV_PREFIX + (f"{section}_{key}" if section else key).upper().replace(".", "_")


def allowed_text(cls: type, name: str) -> str:
    """What a field allows, in words, from its type and constraints."""
    info = _fields(cls)[name]
    extra = info.json_schema_extra or {}
    if extra.get("allowed"):
        return str(extra["allowed"])
    annotation = info.annotation
    if _inner_class(annotation) is not None:
        return "a table of options"
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(_toml(a) for a in get_args(annotation))
    if annotation is bool:
        return "true or false"
    unit = f" of {extra['unit']}" if extra.get("unit") else ""
    words = {int: "a whole number", float: "a number"}.get(annotation, "a value")  # type: ignore[call-overload]
    low = high = ""
    for c in info.metadata:
        if getattr(c, "ge", None) is not None:
            low = f">= {c.ge}"
        if getattr(c, "gt", None) is not None:
            low = f"> {c.gt}"
        if getattr(c, "le", None) is not None:
            high = f"<= {c.le}"
    if low and high and low.startswith(">="):
        return f"{words}{unit} from {low[3:]} to {high[3:]}"
    return " ".join(x for x in (f"{words}{unit}", low, ("and " + high) if low and high else high) if x)


def describe_errors(exc: ValidationError, root: type, section: str = "",
                    sources: Mapping[tuple[str, ...], str] | None = None) -> str:
    """One line per bad value: the option, the value, what is allowed (and where it came from)."""
    lines = []
    for err in exc.errors():
        cls, where, key, path = root, section, "", []
        owner, last = cls, ""
        loc = list(err["loc"])
        rule = (err.get("ctx") or {}).get("error")
        if isinstance(rule, _Rule) and (not loc or loc[-1] != rule.key):
            loc.append(rule.key)
        # walk the location down the model: sections, then a field (maybe a list of tables inside)
        for part in loc:
            if isinstance(part, int) and not key and part < len(_fields(cls)):
                part = list(_fields(cls))[part]  # a positional argument
            if isinstance(part, int):
                key += f"[{part}]" if key else ""
                continue
            if not isinstance(part, str):
                continue
            annotation = _fields(cls)[part].annotation if part in _fields(cls) else None
            inner = _inner_class(annotation)
            if inner is not None and part != loc[-1] and not key and isinstance(annotation, type):
                where = f"{where}.{part}" if where else part
                path.append(part)
                cls = inner
                continue
            if not key:
                path.append(part)
            key = f"{key}.{part}" if key else part
            owner, last = cls, part
            if inner is not None and part != loc[-1]:
                cls = inner
        source = (sources or {}).get(tuple(path), "")
        suffix = f" ({source})" if source else ""
        name = option_name(where, key)
        if err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            known = ", ".join(sorted(_fields(owner)))
            lines.append(f"unknown option {name}{suffix}; known: {known}")
        elif err["type"] == "missing" or err["type"] == "missing_argument":
            lines.append(f"{name}{suffix} is missing: {allowed_text(owner, last)}")
        elif isinstance(rule, _Rule):
            lines.append(f"{name} = {_toml(rule.value)}{suffix}: must be {rule.allowed}")
        else:
            allowed = allowed_text(owner, last) if last in _fields(owner) else err["msg"]
            lines.append(f"{name} = {_toml(err['input'])}{suffix}: must be {allowed}")
    return "\n".join(lines)


# --- sources: defaults < file < environment < flags ----------------------

def _merge(into: dict[str, Any], values: Mapping[str, Any], sources: dict[tuple[str, ...], str], source: str) -> None:
    for key, value in values.items():
        name = key.replace("-", "_")
        if name in SECTIONS and isinstance(value, Mapping):
            section = into.setdefault(name, {})
            if not isinstance(section, dict):
                section = into[name] = {}
            for sub, subvalue in value.items():
                section[sub.replace("-", "_")] = subvalue
                if source:
                    sources[(name, sub.replace("-", "_"))] = source
        else:
            into[name] = value
            if source:
                sources[(name,)] = source


def read_toml(path: Path | str) -> dict[str, Any]:
    """A configuration file's values, relative paths made relative to the file."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    values = values.get("node", values) if isinstance(values.get("node"), dict) else values
    base = path.parent
    for keys in _PATH_KEYS:
        holder: Any = values
        for k in keys[:-1]:
            holder = holder.get(k) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and isinstance(holder.get(keys[-1]), str) and holder[keys[-1]] not in ("", "off"):
            value = Path(holder[keys[-1]])
            holder[keys[-1]] = value if value.is_absolute() else base / value
    return values


def _env_options() -> dict[str, tuple[str, str]]:
    names: dict[str, tuple[str, str]] = {}
    for name in _fields(NodeConfig):
        if name in SECTIONS:
            for sub in _fields(SECTIONS[name]):
                names[env_name(name, sub)] = (name, sub)
        else:
            names[env_name("", name)] = ("", name)
    return names


ENV_OPTIONS = _env_options()


def _pairs(text: str, what: str) -> list[tuple[str, str]]:
    pairs = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        k, sep, v = item.partition("=")
        if not sep:
            raise ConfigError(f"{what}: expected NAME=VALUE items separated by commas, got {text!r}")
        pairs.append((k.strip(), v.strip()))
    return pairs


def parse_text_value(section: str, key: str, text: str, what: str) -> Any:
    """An option's value given as text (environment, ``--set``): lists comma-separated."""
    if (section, key) == ("cluster", "join"):
        return tuple(p.strip() for p in text.split(",") if p.strip())
    if (section, key) == ("limits", "terminals_per_kind"):
        return dict(_pairs(text, what))
    if (section, key) == ("storage", "backends"):
        return tuple({"name": k, "url": v} for k, v in _pairs(text, what))
    if (section, key) == ("webhooks", "endpoints"):
        try:
            return tuple(json.loads(text))
        except (ValueError, TypeError):
            raise ConfigError(f"{what}: expected a JSON list of endpoint tables, got {text!r}") from None
    return text


def env_values(environ: Mapping[str, str], warn: Callable[[str], None] | None = None) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """The options set by ``TIMPY_*`` variables (unknown ones are reported to ``warn``)."""
    values: dict[str, Any] = {}
    sources: dict[tuple[str, ...], str] = {}
    for var, text in environ.items():
        if not var.startswith(ENV_PREFIX) or var in ENV_NOT_OPTIONS:
            continue
        if var not in ENV_OPTIONS:
            if warn is not None:
                warn(f"${var} is not a timpy option (see docs/quickstart.md); ignored")
            continue
        section, key = ENV_OPTIONS[var]
        value = parse_text_value(section, key, text, f"${var}")
        _merge(values, {section: {key: value}} if section else {key: value}, sources, f"from ${var}")
    return values, sources


def resolve_config(
    file: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    warn: Callable[[str], None] | None = None,
) -> NodeConfig:
    """The node configuration from every source: flags > environment > file > defaults.

    ``flags`` and ``defaults`` are nested dicts shaped like the TOML file
    (``{"listen": ..., "cluster": {"join": [...]}}``); a flag's source for
    messages is its key, e.g. ``--listen``.
    """
    merged: dict[str, Any] = {}
    sources: dict[tuple[str, ...], str] = {}
    _merge(merged, defaults or {}, sources, "")
    if file is not None:
        _merge(merged, read_toml(file), sources, "")
    env, env_sources = env_values(environ if environ is not None else {}, warn)
    _merge(merged, env, sources, "")
    sources.update(env_sources)
    for key, value in (flags or {}).items():
        if isinstance(value, Mapping):
            for sub, subvalue in value.items():
                _merge(merged, {key: {sub: subvalue}}, sources, f"from {flag_name(key, sub)}")
        else:
            _merge(merged, {key: value}, sources, f"from {flag_name('', key)}")
    return validate_config(merged, sources)


def validate_config(values: Mapping[str, Any], sources: Mapping[tuple[str, ...], str] | None = None) -> NodeConfig:
    try:
        return _NODE.validate_python(dict(values))
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, NodeConfig, "", sources)) from None


# The flags of `timpy node` that name an option directly (others: --set SECTION.KEY=VALUE).
FLAGS: dict[tuple[str, str], str] = {
    ("", "data_dir"): "--data", ("", "listen"): "--listen", ("", "ws"): "--ws", ("", "memory"): "--memory",
    ("", "database_url"): "--database-url", ("", "ready_file"): "--ready-file",
    ("", "cluster_key_file"): "--cluster-key", ("", "shutdown_timeout"): "--shutdown-timeout",
    ("cluster", "join"): "--join", ("cluster", "listen"): "--peer", ("cluster", "advertise"): "--advertise",
    ("storage", "backends"): "--backend", ("admin", "listen"): "--admin",
}


def flag_name(section: str, key: str) -> str:
    return FLAGS.get((section, key), f"--set {section + '.' if section else ''}{key}")


def load_config(path: Path | str) -> NodeConfig:
    """Read a node configuration file (TOML) over the model's defaults.

    Relative paths are relative to the file. (``timpy node`` also reads the
    environment and its flags: :func:`resolve_config`.)
    """
    return resolve_config(path)


# --- the options table of docs/quickstart.md --------------------------------

def _default_text(section: str, key: str, value: Any) -> str:
    if isinstance(value, Path):
        return f"`{value}`"
    if value is None or value == () or value == {}:
        text = "off" if key in ("listen", "ws") else "none"
    else:
        text = f"`{_toml(value)}`"
    cli = CLI_DEFAULTS.get(section, {}).get(key) if section else CLI_DEFAULTS.get(key)
    if cli is not None:
        text = f"{text} embedded; `{_toml(cli)}` in `timpy node`"
    return text


def options_table() -> str:
    """The Markdown table of every option: name, environment variable, allowed values, default, meaning."""
    rows = ["| option | environment | allowed | default | meaning |", "|---|---|---|---|---|"]

    def add(cls: type, section: str) -> None:
        for name, info in _fields(cls).items():
            if name in SECTIONS:
                continue
            default = info.default_factory() if info.default_factory is not None else info.default
            meaning = info.description or ""
            flag = FLAGS.get((section, name))
            if flag:
                meaning += f" (flag `{flag}`)"
            allowed = allowed_text(cls, name).replace("|", "\\|")
            rows.append(
                f"| `{option_name(section, name)}` | `{env_name(section, name)}` | "
                f"{allowed} | {_default_text(section, name, default)} | {meaning} |"
            )

    add(NodeConfig, "")
    for section, cls in SECTIONS.items():
        add(cls, section)
    return "\n".join(rows) + "\n"


__all__ = [
    "AdminConfig", "BackendSpec", "CLI_DEFAULTS", "ClusterConfig", "ConfigError", "Limits", "NodeConfig",
    "PushConfig", "SecurityConfig", "WebhookEndpoint", "WebhooksConfig", "StorageConfig", "load_config", "options_table", "parse_hostport", "resolve_config",
]
