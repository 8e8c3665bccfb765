"""The configuration model: one set of rules for the file, the environment, the flags and the admin API."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import node_config
from timpy.cli.main import cli
from timpy.config import (
    CLI_DEFAULTS,
    ENV_OPTIONS,
    SECTIONS,
    AdminConfig,
    BackendSpec,
    ClusterConfig,
    Limits,
    NodeConfig,
    load_config,
    options_table,
    resolve_config,
)
from timpy.errors import ConfigError

ROOT = Path(__file__).parent.parent
NODES = ROOT / "nodes"


@pytest.mark.parametrize("path", sorted(NODES.rglob("*.toml")), ids=lambda p: str(p.relative_to(NODES)))
def test_shipped_node_files_load(path):
    config = load_config(path)
    assert config.data_dir.is_absolute() and config.listen


def test_an_embedded_node_opens_only_what_its_config_names():
    c = NodeConfig()
    assert c.listen == "127.0.0.1:7070" and not c.memory and c.limits.max_body <= c.limits.max_frame
    assert c.ws is None and c.cluster.listen is None and c.admin.listen is None
    named = NodeConfig(memory=True, listen="127.0.0.1:0")
    assert (named.listen, named.ws, named.cluster.listen, named.admin.listen) == ("127.0.0.1:0", None, None, None)


def test_the_cli_keeps_its_default_ports():
    c = resolve_config(defaults=CLI_DEFAULTS)
    assert (c.listen, c.ws, c.cluster.listen, c.admin.listen) == (
        "127.0.0.1:7070", "127.0.0.1:7071", "127.0.0.1:7072", "127.0.0.1:7073"
    )


BAD_FILES = [
    ("lisen = '1:2'\n", "unknown option lisen; known: "),
    ("[limits]\nmax_bodyy = 3\n", r"unknown option \[limits\] max_bodyy"),
    ("listen = 'off'\nws = 'localhost:99999'\n", r'ws = "localhost:99999": must be HOST:PORT'),
    ("not toml [", "not valid TOML"),
    ('[limits]\nmax_body = "big"\n',
     r'^\[limits\] max_body = "big": must be a whole number of bytes \(e.g. 65536\) no larger than max_frame$'),
    ('[cluster]\nreplicas = "three"\n', r'^\[cluster\] replicas = "three": must be a whole number from 1 to 64'),
    ("[limits]\nmax_frame = 4096\nmax_body = 8192\n", r"max_body = 8192: must be no larger than max_frame \(4096\)"),
    ("[cluster]\nreplicas = 2\nwrite_quorum = 3\n", r"write_quorum = 3: must be no larger than replicas \(2\)"),
    ("[cluster]\nprobe_interval = -1\n", r"probe_interval = -1: must be a number of seconds > 0"),
    ("[limits]\nmax_connections = true\n", "max_connections = true: must be a whole number"),
    ("[limits]\nterminal_overflow = 'drop'\n", 'must be one of "kick_oldest", "refuse"'),
    ("[admin]\nlisten = '0.0.0.0:7073'\n", "allow_public"),
    ("[admin]\ntls_cert = 'nowhere.pem'\n", r"\[admin\] tls_cert = .*: must be set together with tls_key"),
    ("[[storage.backends]]\nname = 'a b'\nurl = 'sqlite://'\n", r"\[storage\] backends\[0\]\.name = \"a b\""),
    ("limits = 3\n", "limits = 3: must be a table of options"),
    ("shutdown_timeout = 0\n", "shutdown_timeout = 0: must be a number of seconds > 0"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_file_errors_name_the_option_the_value_and_what_is_allowed(tmp_path, text, message):
    bad = tmp_path / "c.toml"
    bad.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(bad)
    assert re.search(message, error.value.text, re.M), error.value.text


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_off_disables_a_listener(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("listen = 'off'\nws = '[::1]:7071'\n")
    c = load_config(f)
    assert c.listen is None and c.ws == "[::1]:7071"


def test_the_python_api_validates_the_same_way():
    with pytest.raises(ConfigError, match=r'^\[limits\] max_body = "big": must be a whole number of bytes'):
        Limits(max_body="big")
    with pytest.raises(ConfigError, match=r"^\[cluster\] write_quorum = 4: must be no larger than replicas \(3\)"):
        ClusterConfig(write_quorum=4)
    with pytest.raises(ConfigError, match="allow_public"):
        dataclasses.replace(AdminConfig(), listen="0.0.0.0:1")
    with pytest.raises(ConfigError, match=r"\[limits\] max_body = 1000000"):
        NodeConfig().limits.replace(max_body=1_000_000)
    with pytest.raises(ConfigError, match="weight = 0"):
        BackendSpec("a", "sqlite://", 0)
    c = NodeConfig(memory=True, listen="127.0.0.1:0").replace(limits=Limits(max_body=16))
    assert c.limits.max_body == 16 and c.memory
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.memory = False  # type: ignore[misc]


# --- sources and precedence --------------------------------------------------------


def test_every_option_has_one_environment_variable():
    options = [(s, k) for s, cls in SECTIONS.items() for k in cls.__pydantic_fields__]
    options += [("", k) for k in NodeConfig.__pydantic_fields__ if k not in SECTIONS]
    assert sorted(ENV_OPTIONS.values()) == sorted(options)  # one each, no two names for one option


def test_environment_values_are_read_and_checked(tmp_path):
    env = {
        "TIMPY_LISTEN": "127.0.0.1:0", "TIMPY_LIMITS_MAX_BODY": "1000", "TIMPY_CLUSTER_REPLICAS": "5",
        "TIMPY_CLUSTER_JOIN": "127.0.0.1:1, 127.0.0.1:2", "TIMPY_ADMIN_LISTEN": "off", "TIMPY_MEMORY": "true",
        "TIMPY_LIMITS_TERMINALS_PER_KIND": "mobile=1,desktop=2",
        "TIMPY_CLUSTER_KEY": "not an option: the key itself", "TIMPY_DATA_DIR": str(tmp_path),
    }
    c = resolve_config(environ=env, defaults=CLI_DEFAULTS)
    assert (c.listen, c.limits.max_body, c.cluster.replicas, c.admin.listen) == ("127.0.0.1:0", 1000, 5, None)
    assert c.cluster.join == ("127.0.0.1:1", "127.0.0.1:2") and c.limits.terminals_per_kind == {"mobile": 1, "desktop": 2}
    assert c.memory is True and c.data_dir == tmp_path
    shared = resolve_config(environ={"TIMPY_STORAGE_BACKENDS": "a=sqlite:///a.db, b=sqlite:///b.db"})
    assert shared.storage.backends == (BackendSpec("a", "sqlite:///a.db"), BackendSpec("b", "sqlite:///b.db"))
    for var, value, message in [
        ("TIMPY_LIMITS_MAX_BODY", "big", r'\[limits\] max_body = "big" \(from \$TIMPY_LIMITS_MAX_BODY\): must be'),
        ("TIMPY_CLUSTER_REPLICAS", "three", r'\[cluster\] replicas = "three" \(from \$TIMPY_CLUSTER_REPLICAS\)'),
        ("TIMPY_WS", "nowhere", r'ws = "nowhere" \(from \$TIMPY_WS\): must be HOST:PORT'),
    ]:
        with pytest.raises(ConfigError, match=message):
            resolve_config(environ={var: value})
    warnings: list[str] = []
    resolve_config(environ={"TIMPY_LIMITS_MAX_BODDY": "1"}, warn=warnings.append)
    assert warnings and "TIMPY_LIMITS_MAX_BODDY" in warnings[0]


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("listen = '127.0.0.1:1'\nws = '127.0.0.1:2'\n[limits]\nmax_body = 100\nsync_page = 7\n")
    env = {"TIMPY_WS": "127.0.0.1:3", "TIMPY_LIMITS_MAX_BODY": "200"}
    flags = {"limits": {"max_body": "300"}}
    c = resolve_config(f, environ=env, flags=flags, defaults=CLI_DEFAULTS)
    assert (c.listen, c.ws, c.limits.max_body, c.limits.sync_page) == ("127.0.0.1:1", "127.0.0.1:3", 300, 7)
    assert c.admin.listen == CLI_DEFAULTS["admin"]["listen"]
    with pytest.raises(ConfigError, match=r'max_body = "x" \(from --set limits.max_body\)'):
        resolve_config(f, environ=env, flags={"limits": {"max_body": "x"}})


def test_relative_paths_in_a_file_are_relative_to_it(tmp_path):
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "c.toml"
    f.write_text("data_dir = 'd'\n[admin]\ntoken_file = 't'\n")
    c = load_config(f)
    assert c.data_dir == tmp_path / "sub" / "d" and c.admin.token_file == tmp_path / "sub" / "t"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--set", "limits.max_body=big"], {}, '[limits] max_body = "big" (from --set limits.max_body): must be'),
        ([], {"TIMPY_CLUSTER_REPLICAS": "three"}, '[cluster] replicas = "three" (from $TIMPY_CLUSTER_REPLICAS)'),
        (["--listen", "7070"], {}, 'listen = "7070" (from --listen): must be HOST:PORT'),
        (["--shutdown-timeout", "soon"], {}, 'shutdown_timeout = "soon" (from --shutdown-timeout)'),
        (["--set", "nonsense"], {}, "--set: expected [SECTION.]KEY=VALUE"),
    ],
)
def test_bad_flags_and_environment_stop_the_node_before_it_starts(tmp_path, args, env, message):
    r = CliRunner().invoke(cli, ["node", "--data", str(tmp_path / "d"), *args], env=env)
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "d").exists()  # nothing was created: the node did not start


def test_a_bad_file_stops_a_real_node_process_with_the_one_error(tmp_path):
    f = tmp_path / "node.toml"
    f.write_text('data_dir = "d"\n[limits]\nmax_body = "big"\n')
    r = subprocess.run([sys.executable, "-m", "timpy", "node", "--config", str(f)], capture_output=True, text=True,
                       timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith("TIMPY_")})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        'Error: [limits] max_body = "big": must be a whole number of bytes (e.g. 65536) no larger than max_frame'
    )
    assert not (tmp_path / "d").exists()


async def test_the_admin_api_checks_limits_with_the_same_model():
    import timpy
    from tests.support.admin_http import http

    async with timpy.open_node(node_config()) as node:
        before = (await http(node, "GET", "/api/v1/limits"))[1]
        status, body = await http(node, "PUT", "/api/v1/limits", {"max_body": "big"})
        assert status == 400 and body["code"] == "BAD_REQUEST"
        assert body["error"].startswith('[limits] max_body = "big": must be a whole number of bytes'), body
        status, body = await http(node, "PUT", "/api/v1/limits", {"max_body": 10**6})
        assert status == 400 and "no larger than max_frame" in body["error"]
        status, body = await http(node, "PUT", "/api/v1/limits", [1])
        assert status == 400
        assert (await http(node, "GET", "/api/v1/limits"))[1] == before  # nothing changed
        status, body = await http(node, "PUT", "/api/v1/limits", {"max_body": "1000", "max_frame": 2048})
        assert status == 200 and (body["max_body"], body["max_frame"]) == (1000, 2048)


# --- any file of scalars: valid, or the one config error ----------------------------

_KEYS = [k for k in NodeConfig.__pydantic_fields__ if k not in SECTIONS]
_SECTION_KEYS = {s: list(cls.__pydantic_fields__) for s, cls in SECTIONS.items()}
_scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(allow_nan=False), st.booleans(),
    st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=20), st.sampled_from(["127.0.0.1:0", "off", "[::1]:0", "kick_oldest", "udp", "FULL", "ws://x"]),
    st.integers(min_value=0, max_value=70_000),
)
_name = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if v == v and abs(v) != float("inf") else ("inf" if v > 0 else "-inf")
    if isinstance(v, int):
        return str(v)
    return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\U{ord(c):08x}" for c in str(v)) + '"'


@st.composite
def scalar_tomls(draw: st.DrawFn) -> str:
    # mostly known options (so many files are valid), sometimes an unknown one
    top = draw(st.lists(st.sampled_from(_KEYS) if draw(st.integers(0, 4)) else _name, unique=True, max_size=6))
    lines = [f"{k} = {_toml_value(draw(_scalars))}" for k in top]
    sections = st.sampled_from(list(SECTIONS)) if draw(st.integers(0, 4)) else _name
    for section in draw(st.lists(sections, unique=True, max_size=3)):
        known = st.sampled_from(_SECTION_KEYS.get(section, ["x"]))
        keys = draw(st.lists(known if draw(st.integers(0, 4)) else _name, unique=True, max_size=6))
        if section not in top:  # a top-level key and a table of the same name is not TOML
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(draw(_scalars))}" for k in keys]
    return "\n".join(lines) + "\n"


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=scalar_tomls())
def test_any_file_of_scalars_is_valid_or_the_config_error(tmp_path, text):
    tomllib.loads(text)  # the strategy writes TOML
    f = tmp_path / "c.toml"
    f.write_text(text)
    try:
        config = load_config(f)
    except ConfigError as exc:
        assert exc.text and "Traceback" not in exc.text and "\n" not in exc.text.split("\n")[0]
        assert re.match(r"^(unknown option |\S+ = |\[\w+\] )", exc.text), exc.text
    else:
        assert isinstance(config, NodeConfig) and config.limits.max_body <= config.limits.max_frame


# --- the options reference in docs/quickstart.md --------------------------------------


def test_the_quickstart_options_table_is_the_one_the_model_produces():
    doc = (ROOT / "docs" / "quickstart.md").read_text()
    begin, end = "<!-- options-table: begin (generated by timpy.config.options_table) -->", "<!-- options-table: end -->"
    assert begin in doc and end in doc, "docs/quickstart.md lost its options table markers"
    table = doc.split(begin, 1)[1].split(end, 1)[0].strip() + "\n"
    assert table == options_table(), (
        "docs/quickstart.md's options table differs from the config model; regenerate it with\n"
        "  python -c 'from timpy.config import options_table; print(options_table())'"
    )

