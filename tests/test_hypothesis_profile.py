"""The hypothesis profiles keep exploring, in CI too, and print a seed that reproduces a run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

PROBE = """
import os
from hypothesis import given, settings, strategies as st

def test_profile():
    with open(os.environ["OUT"], "a") as f:
        f.write(f"profile {settings.get_current_profile_name()} {settings.default.derandomize} {settings.default.database}\\n")

@settings(max_examples=5)
@given(st.integers(0, 2**60))
def test_draws(x):
    with open(os.environ["OUT"], "a") as f:
        f.write(f"{x}\\n")
"""


def run(tmp_path: Path, name: str, *args: str, ci: bool = True) -> tuple[str, list[str]]:
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    out = tmp_path / f"{name}.txt"
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(OUT=str(out), **({"CI": "true"} if ci else {}))
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
                        str(probe), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    seed = re.search(r"seed (\d+) \(rerun with --hypothesis-seed=\1\)", r.stdout)
    assert seed, r.stdout
    return seed.group(1), out.read_text().splitlines()


@pytest.fixture(scope="module")
def two_ci_runs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, list[str]]]:
    tmp = tmp_path_factory.mktemp("ci")
    return [run(tmp, "a"), run(tmp, "b")]


def test_ci_runs_randomize_and_keep_no_example_database(two_ci_runs):
    (seed1, first), (seed2, second) = two_ci_runs
    assert first[0] == "profile timpy-ci False None"
    assert seed1 != seed2 and first[1:] != second[1:]  # each CI run explores new examples


def test_the_printed_seed_reproduces_the_run(two_ci_runs, tmp_path):
    seed, first = two_ci_runs[0]
    again_seed, again = run(tmp_path, "again", f"--hypothesis-seed={seed}")
    assert again_seed == seed and again == first


def test_local_runs_randomize_too(two_ci_runs, tmp_path):
    seed, local = run(tmp_path, "local", ci=False)
    assert local[0].startswith("profile timpy False ")
    assert seed not in (two_ci_runs[0][0], two_ci_runs[1][0]) and local[1:] != two_ci_runs[0][1][1:]


def test_xdist_workers_explore_with_the_printed_seed_and_quiet_runs_print_it(two_ci_runs, tmp_path):
    # The README's test command runs `-q -n 2`: pytest drops its header under -q, and each
    # xdist worker would otherwise draw a seed of its own that no log shows.
    seed, first = two_ci_runs[0]
    again_seed, again = run(tmp_path, "workers", "-q", "-n", "2", f"--hypothesis-seed={seed}")
    assert again_seed == seed and sorted(again) == sorted(first)
