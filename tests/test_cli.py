"""The timpy command's small subcommands (node, chat: tests/e2e)."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from timpy.cli.bench import COMMANDS
from timpy.cli.main import cli
from timpy.crypto.keys import decode_key


def test_keys_new(tmp_path):
    path = tmp_path / "cluster.key"
    r = CliRunner().invoke(cli, ["keys", "new", str(path)])
    assert r.exit_code == 0 and "wrote cluster key" in r.output
    assert len(decode_key(path.read_text(), "test")) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = CliRunner().invoke(cli, ["keys", "new", str(path)])
    assert again.exit_code != 0 and "refusing to overwrite" in again.output


def test_bench_codec_reports_rates():
    r = CliRunner().invoke(cli, ["bench", "codec", "--iterations", "200", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output.strip().splitlines()[-1])
    assert result["binary_bytes"] > 0 and result["decode_binary_per_s"] > 0


def test_bench_pages_names_the_pages_a_batch_dirties():
    r = CliRunner().invoke(cli, ["bench", "pages", "--history", "400", "--users", "10", "--batch", "40", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output.strip().splitlines()[-1])
    for label in ("write_batch", "search_indexing"):
        by_tree = result[f"{label}_by_tree"]
        assert sum(by_tree.values()) == result[f"{label}_pages"] > 0
        assert result[f"{label}_pages_per_message"] == round(result[f"{label}_pages"] / 40, 2)
    assert {"messages", "sqlite_autoindex_messages_1", "ix_inbox_user_conv"} <= set(result["write_batch_by_tree"])
    assert "search_postings" in result["search_indexing_by_tree"]


def test_bench_pages_refuses_a_batch_of_nothing():
    r = CliRunner().invoke(cli, ["bench", "pages", "--history", "10", "--batch", "0"])
    assert r.exit_code != 0 and "--batch must be at least 1" in r.output


def test_bench_one_node_runs_end_to_end():
    r = CliRunner().invoke(cli, ["bench", "one-node", "--clients", "2", "--messages", "5", "--memory", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output.strip().splitlines()[-1])
    assert result["messages"] == 10 and result["p99_ms"] >= result["p50_ms"] > 0
    # What bounds the figure: the node's and the bench's CPU per message, the machine's busy share.
    assert isinstance(result["node_cpu_ms_per_message"], float) and result["node_cpu_ms_per_message"] >= 0
    assert result["bench_cpu_ms_per_message"] >= 0
    assert 0 <= result["machine_busy_pct"] <= 100


def test_the_machines_busy_share_counts_every_core_and_leaves_out_idle_and_iowait():
    from timpy.cli.bench.common import busy_pct, machine_ticks

    now = machine_ticks()
    assert now is not None and 0 < now[0] <= now[1]
    assert busy_pct((100, 400), (250, 600)) == 75.0
    assert busy_pct((100, 400), (100, 400)) is None and busy_pct(None, now) is None


def test_bench_paths_measures_direct_and_relayed_channels():
    r = CliRunner().invoke(cli, ["bench", "paths", "--calls", "40", "--window", "8", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output.strip().splitlines()[-1])
    assert result["relayed round trip p99 ms"] >= result["relayed round trip p50 ms"] > 0
    assert result["direct TCP MB/s each way"] > 0 and result["relayed MB/s each way"] > 0


def test_bench_flood_delivers_every_message_to_its_recipient():
    r = CliRunner().invoke(cli, ["bench", "flood", "--clients", "4", "--messages", "10", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output.strip().splitlines()[-1])
    assert result["delivered"] == "40/40" and "errors" not in result
    assert result["p99_ms"] >= result["p50_ms"] > 0


def test_bench_flood_prefill_stores_history_first():
    r = CliRunner().invoke(
        cli, ["bench", "flood", "--clients", "3", "--messages", "5", "--prefill", "300", "--json"]
    )
    assert r.exit_code == 0, r.output
    result = json.loads(r.output.strip().splitlines()[-1])
    assert result["delivered"] == "15/15" and "300 messages stored before" in result["target"]


def test_the_prefill_indexes_what_it_stores_for_search(tmp_path):
    # A node indexes its history as it stores it: the prefilled history must not be left for the flood to index.
    import trio

    from timpy.cli.bench.flood import _prefill
    from timpy.crypto.blind import BlindIndexer
    from timpy.crypto.keys import load_or_create_cluster_key
    from timpy.crypto.seal import Sealer
    from timpy.im import ids, kinds
    from timpy.im import search_rules as rules
    from timpy.im.search import token_key
    from timpy.store.engine import sqlite_engine
    from timpy.store.repository import Repository

    (tmp_path / "data").mkdir()
    keys, _ = load_or_create_cluster_key(tmp_path / "data" / "cluster.key")

    def repository() -> Repository:
        return Repository(sqlite_engine(tmp_path / "data" / "timpy.sqlite3"), Sealer(keys.storage), kinds.effect_of)

    indexer = BlindIndexer(keys.index)
    uids = [ids.user_id(indexer, f"u{i}") for i in (1, 2, 3)]
    repo = repository()
    repo.create_schema()
    for uid in uids:  # the bench registers its users first
        repo.create_account(uid, b"secret", b"profile")
    repo.close()
    trio.run(_prefill, tmp_path, 300, 3)
    convs = sorted({ids.direct_conversation(indexer, a, b) for a in uids for b in uids if a < b})
    repo = repository()
    try:
        assert repo.search_behind(convs) == []
        hits = sum(len(repo.search_conversation(c, rules.tokens(token_key(indexer, c), rules.query_terms("history")), 1000))
                   for c in convs)
        assert hits == 300
    finally:
        repo.close()


def test_bench_flood_echo_measures_the_generator_alone():
    r = CliRunner().invoke(cli, ["bench", "flood", "--clients", "3", "--messages", "5", "--echo", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["delivered"] == "15/15"


def test_bench_repair_repairs_exactly_the_rows_it_deleted():
    r = CliRunner().invoke(cli, ["bench", "repair", "--conversations", "20", "--messages", "5", "--damage", "0.1",
                                 "--memory", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output.strip().splitlines()[-1])
    assert result["keys_per_node"] == 60 and result["rows_per_node"] == 300
    assert result["rows_deleted_on_one_replica"] == 30 and result["rows_repaired"] == 30


def test_bench_group_reaches_every_member():
    r = CliRunner().invoke(cli, ["bench", "group", "--members", "30", "--messages", "3", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output.strip().splitlines()[-1])
    assert result["messages"] == 3  # each one waited for until all 30 members had it
    assert result["p99_ms"] >= result["p50_ms"] >= result["median_member_p50_ms"] > 0


def test_bench_connections_logs_every_client_in_and_reads_the_node_memory():
    for flags in ([], ["--ws"]):
        r = CliRunner().invoke(cli, ["bench", "connections", "--clients", "20", *flags, "--json"])
        assert r.exit_code == 0, r.output
        result = json.loads(r.output.strip().splitlines()[-1])
        assert result["logins_per_s"] > 0 and result["node_rss_after_mib"] > 0
        assert result["argon2id_default_cost"] == "opslimit=2, memlimit=64 MiB"


ROOT = Path(__file__).resolve().parent.parent
BENCH_MODULES = sorted(p.stem for p in (ROOT / "timpy" / "cli" / "bench").glob("*.py") if p.stem != "__init__")


def _fresh_python(program: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)


@pytest.mark.parametrize("module", BENCH_MODULES)
def test_each_bench_module_imports_on_its_own(module):
    """In a fresh interpreter, so that an import cycle between the benches
    (which one command's import order can hide) fails here."""
    r = _fresh_python(f"import timpy.cli.bench.{module}")
    assert r.returncode == 0, r.stderr


def test_the_bench_group_imports_a_command_only_when_it_is_named():
    r = _fresh_python(
        "import sys\n"
        "from timpy.cli.bench import bench\n"
        "from timpy.cli.main import cli\n"
        "loaded = lambda: sorted(m for m in sys.modules if m.startswith('timpy.cli.bench.'))\n"
        "print(loaded())\n"
        "bench.get_command(None, 'codec')\n"
        "print(loaded())\n"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["[]", "['timpy.cli.bench.codec', 'timpy.cli.bench.common']"]


def test_every_bench_command_is_listed_and_found():
    assert sorted(COMMANDS) == sorted(cli.get_command(None, "bench").list_commands(None))  # type: ignore[union-attr]
    for name, target in COMMANDS.items():
        module = target.partition(":")[0]
        assert module.removeprefix("timpy.cli.bench.") in BENCH_MODULES
        command = cli.get_command(None, "bench").get_command(None, name)  # type: ignore[union-attr]
        assert command is not None and command.name == name


async def test_chat_tries_again_while_the_cluster_answers_unavailable(autojump_clock, capsys) -> None:
    """A one-shot `timpy chat` command right after a node started (still
    joining its cluster, or a ring change on its way) is answered
    UNAVAILABLE for a moment: it tries again, says so once on stderr, and
    gives up after READY_WAIT; any other error is raised at once."""
    import pytest
    import trio

    from timpy.cli import chat
    from timpy.errors import Code, RemoteError

    answers = [RemoteError("this node has not joined a cluster yet", Code.UNAVAILABLE)] * 3 + ["done"]
    calls: list[float] = []

    async def call() -> str:
        calls.append(trio.current_time())
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    assert await chat._when_ready(call) == "done"
    assert len(calls) == 4
    assert capsys.readouterr().err.count("trying again") == 1

    async def never() -> None:
        raise RemoteError("this node reaches 1 of 3 cluster members", Code.UNAVAILABLE)

    started = trio.current_time()
    with pytest.raises(RemoteError):
        await chat._when_ready(never)
    assert chat.READY_WAIT - 2.5 <= trio.current_time() - started <= chat.READY_WAIT

    async def refused() -> None:
        calls.append(trio.current_time())
        raise RemoteError("wrong password", Code.BAD_CREDENTIALS)

    calls.clear()
    with pytest.raises(RemoteError):
        await chat._when_ready(refused)
    assert len(calls) == 1


_GC_BURST = """
import gc, json
from timpy.cli.main import _tune_gc
{tune}
seen = [0, 0, 0]
gc.callbacks.append(lambda phase, info: phase == "start" and seen.__setitem__(info["generation"],
                                                                               seen[info["generation"]] + 1))
alive = [[i] for i in range({burst})]  # objects of messages on their way: they outlive a young collection
print(json.dumps({{"seen": seen, "frozen": gc.get_freeze_count()}}))
"""


def test_a_node_process_does_not_collect_while_a_burst_of_live_objects_is_made():
    """``timpy node`` tunes its collector once started (``_tune_gc``): what the
    start made is frozen, and 90,000 containers that stay alive (a flood's
    messages in flight) cause no collection, where Python's defaults walk
    them over a hundred times."""
    tuned = json.loads(_fresh_python(_GC_BURST.format(tune="_tune_gc()", burst=90_000)).stdout)
    default = json.loads(_fresh_python(_GC_BURST.format(tune="", burst=90_000)).stdout)
    assert tuned["seen"] == [0, 0, 0] and tuned["frozen"] > 1000
    assert default["seen"][0] > 100 and default["seen"][1] >= 5  # the burst is a real one


def test_a_long_burst_of_live_objects_makes_young_collections_only():
    """1,500,000 containers that stay alive (a long flood's messages in
    flight): young collections walk each of them once, and no middle
    collection walks them all again (one would at Python's middle threshold)."""
    tuned = json.loads(_fresh_python(_GC_BURST.format(tune="_tune_gc()", burst=1_500_000)).stdout)
    assert tuned["seen"][0] >= 10 and tuned["seen"][1:] == [0, 0]
    middle_at_ten = "import gc\n_tune_gc()\ngc.set_threshold(gc.get_threshold()[0], 10, 10)"
    again = json.loads(_fresh_python(_GC_BURST.format(tune=middle_at_ten, burst=1_500_000)).stdout)
    assert again["seen"][1] >= 1  # the same burst at Python's middle threshold
