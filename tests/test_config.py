from pathlib import Path

import pytest

from timpy.config import NodeConfig, load_config
from timpy.errors import ConfigError

NODES = Path(__file__).parent.parent / "nodes"


@pytest.mark.parametrize("path", sorted(NODES.rglob("*.toml")), ids=lambda p: str(p.relative_to(NODES)))
def test_shipped_node_files_load(path):
    config = load_config(path)
    assert config.data_dir.is_absolute() and config.listen


def test_defaults_are_a_working_node():
    c = NodeConfig()
    assert c.listen == "127.0.0.1:7070" and not c.memory and c.limits.max_body <= c.limits.max_frame


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lisen = '1:2'\n", "unknown option 'lisen'"),
        ("[limits]\nmax_bodyy = 3\n", "limits.max_bodyy"),
        ("listen = 'off'\nws = 'localhost:99999'\n", "HOST:PORT"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_errors_name_the_problem(tmp_path, text, message):
    bad = tmp_path / "c.toml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(bad)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_off_disables_a_listener(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("listen = 'off'\nws = '[::1]:7071'\n")
    c = load_config(f)
    assert c.listen is None and c.ws == "[::1]:7071"
