"""Which launcher a job runs under: the native one (``launcher.c``), else the Python one.

Both take the same arguments and write the same files (``LOG TAIL EXIT MAX_BYTES GRACE_S
-- COMMAND...``, see :mod:`orchestrator.procs.launcher`), so nothing but the command
that starts a job depends on the choice (decision 0026). The native launcher costs a few
hundred kilobytes of memory per running job; the Python one an interpreter's megabytes.

``launcher.c`` ships in the package as source. :func:`native_launcher` builds it with
the host's C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``) the first time a job
starts, into a cache directory (``$XDG_CACHE_HOME/orchestrator``, else
``~/.cache/orchestrator``) under a name that holds the hash of the source and the
machine, so an upgrade builds the new source and a build never replaces a binary a
running job uses. A build goes to a temporary name and is renamed: two engines building
at once both end with a whole binary. Without a compiler, or when the build fails, the
jobs run under the Python launcher, said in one log line; the answer is kept for the
life of the process.

Standard library only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal

__all__ = [
    "LAUNCHERS",
    "PYTHON_LAUNCHER_MODULE",
    "Launcher",
    "launcher_argv",
    "native_launcher",
]

logger = logging.getLogger(__name__)

Launcher = Literal["native", "python"]
LAUNCHERS: Final[tuple[Launcher, ...]] = ("native", "python")
PYTHON_LAUNCHER_MODULE: Final = "orchestrator.procs.launcher"
SOURCE: Final = Path(__file__).with_name("launcher.c")
COMPILERS: Final = ("cc", "gcc", "clang")
COMPILE_FLAGS: Final = ("-O2", "-std=gnu11", "-Wall")
COMPILE_TIMEOUT_S: Final = 120.0

_lock = threading.Lock()
# The native launcher once looked for (None: not available), per cache directory.
_built: dict[Path | None, Path | None] = {}


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/orchestrator``, else ``~/.cache/orchestrator``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "orchestrator"


def find_compiler() -> str | None:
    """``$CC`` (its first word) if it is on PATH, else the first of cc, gcc, clang."""
    configured = os.environ.get("CC", "").split()
    for name in (*configured[:1], *COMPILERS):
        if found := shutil.which(name):
            return found
    return None


def binary_name(source: bytes) -> str:
    """The cached binary's name: the hash of its source and of the machine it runs on."""
    digest = hashlib.sha256(source)
    digest.update(f"\0{sys.platform}\0{platform.machine()}".encode())
    return f"launcher-{digest.hexdigest()[:16]}"


def _build(cache_dir: Path, compiler: str | None) -> tuple[Path | None, str]:
    """The built launcher, or None and why not."""
    try:
        source = SOURCE.read_bytes()
    except OSError as exc:
        return None, f"its source {SOURCE} cannot be read ({exc.strerror})"
    binary = cache_dir / binary_name(source)
    if os.access(binary, os.X_OK):
        return binary, ""
    if compiler is None:
        return None, "no C compiler found ($CC, cc, gcc or clang)"
    temporary = binary.with_name(f"{binary.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        done = subprocess.run(
            [compiler, *COMPILE_FLAGS, "-o", str(temporary), str(SOURCE)],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=COMPILE_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[0]
            return None, f"{compiler} failed on {SOURCE.name}: {first[:200]}"
        os.replace(temporary, binary)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"it could not be built in {cache_dir}: {exc}"
    finally:
        temporary.unlink(missing_ok=True)
    return binary, ""


def native_launcher(cache_dir: Path | None = None, compiler: str | None = "") -> Path | None:
    """The native launcher's path, built on first use; None (after one warning line) when
    it cannot be. ``cache_dir``: None is :func:`default_cache_dir`. ``compiler``: ``""``
    finds one (:func:`find_compiler`), None has none."""
    with _lock:
        if cache_dir in _built:
            return _built[cache_dir]
        binary, why = _find_or_build(cache_dir, compiler)
        if binary is None:
            logger.warning(
                "jobs run under the Python launcher (about 6 MB of memory each) because the "
                "native launcher is not available: %s",
                why,
            )
        _built[cache_dir] = binary
        return binary


def _find_or_build(cache_dir: Path | None, compiler: str | None) -> tuple[Path | None, str]:
    if cache_dir is None:
        try:
            cache_dir = default_cache_dir()
        except RuntimeError:  # no $HOME, and no home directory for this user
            return None, "no cache directory to build it in ($XDG_CACHE_HOME, $HOME)"
    return _build(cache_dir, find_compiler() if compiler == "" else compiler)


def python_launcher_argv() -> list[str]:
    return [sys.executable, "-m", PYTHON_LAUNCHER_MODULE]


def launcher_argv(launcher: Launcher = "native") -> Sequence[str]:
    """The command that starts a launcher (its arguments follow): the native one when
    asked for and available, else the Python one."""
    if launcher == "native" and (binary := native_launcher()) is not None:
        return [str(binary)]
    return python_launcher_argv()
