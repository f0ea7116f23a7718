"""Building the native launcher (``orchestrator.procs.native``) with the host's compiler.

Each test builds into a cache directory of its own under ``tmp_path`` with a compiler it
names (the one on this machine, none, or one that fails), so none depends on what an
earlier run left in the user's cache.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from orchestrator.procs import native

USAGE_EXIT = 2


@pytest.fixture
def compiler() -> str:
    found = native.find_compiler()
    if found is None:
        pytest.skip("no C compiler on this machine: the fallback tests below still run")
    return found


def test_the_launcher_is_built_once_into_the_cache_and_runs(tmp_path: Path, compiler: str) -> None:
    binary = native.native_launcher(tmp_path / "cache", compiler)

    assert binary is not None
    assert binary.parent == tmp_path / "cache"
    assert binary.name == native.binary_name(native.SOURCE.read_bytes())
    assert os.access(binary, os.X_OK)
    assert [path.name for path in binary.parent.iterdir()] == [binary.name]  # no .tmp left
    done = subprocess.run([binary], capture_output=True, text=True, check=False)
    assert done.returncode == USAGE_EXIT
    assert done.stderr.startswith("usage: launcher LOG TAIL EXIT MAX_BYTES")


def test_a_built_launcher_is_found_again_without_a_compiler(tmp_path: Path, compiler: str) -> None:
    built = native.native_launcher(tmp_path / "cache", compiler)
    # A new process (the memo is per process) on a host whose compiler went away.
    native._built.clear()

    assert native.native_launcher(tmp_path / "cache", None) == built


def test_without_a_compiler_jobs_fall_back_to_the_python_launcher_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert native.native_launcher(tmp_path / "cache", None) is None
        assert native.native_launcher(tmp_path / "cache", None) is None  # said once

    [record] = caplog.records
    assert record.getMessage() == (
        "jobs run under the Python launcher (about 6 MB of memory each) because the native "
        "launcher is not available: no C compiler found ($CC, cc, gcc or clang)"
    )


def test_a_failed_build_falls_back_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    failing = tmp_path / "cc"
    failing.write_text("#!/bin/sh\necho 'cc: error: the build broke' >&2\nexit 1\n")
    failing.chmod(0o755)

    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert native.native_launcher(tmp_path / "cache", str(failing)) is None

    [record] = caplog.records
    assert record.getMessage().endswith(
        f"{failing} failed on launcher.c: cc: error: the build broke"
    )
    assert list((tmp_path / "cache").iterdir()) == []


def test_the_python_launcher_is_the_fallback_command() -> None:
    argv = native.python_launcher_argv()

    assert argv[1:] == ["-m", "orchestrator.procs.launcher"]
    assert native.launcher_argv("python") == argv


def test_the_binary_name_changes_with_the_source() -> None:
    source = native.SOURCE.read_bytes()

    assert native.binary_name(source) == native.binary_name(source)
    assert native.binary_name(source) != native.binary_name(source + b"\n")
