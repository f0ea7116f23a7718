"""``python -m orchestrator.launcher``: the small supervisor between the engine and a job.

The engine starts the launcher in a new session; the launcher starts the job's command
in the same process group, copies its output into the run's log (capped), keeps the last
bytes in a tail file, and writes the exit code into an exit file when the command ends.
Because the job never writes into a pipe held by the engine, it survives an engine crash;
the next engine adopts it and, when it ends, reads its exit code and tail from the files.

The launcher ignores SIGTERM so that a tree-kill's SIGTERM reaches the command and the
launcher can still record how it ended; a SIGKILL ends both and leaves no exit file.

Standard library only: it starts fast and cannot fail on an import of ours.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import deque
from pathlib import Path

TAIL_BYTES = 256 * 1024
READ_CHUNK_BYTES = 64 * 1024
USAGE = "usage: python -m orchestrator.launcher LOG TAIL EXIT MAX_BYTES -- COMMAND..."


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def run(log: Path, tail_path: Path, exit_path: Path, max_bytes: int, argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        child = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # The command must react to SIGTERM even though we ignore it.
            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL),  # noqa: PLW1509
        )
    except OSError as exc:
        message = f"[orch: cannot start {argv[0]!r}: {exc.strerror}]\n".encode()
        log.write_bytes(message)
        _write_atomic(tail_path, message)
        _write_atomic(exit_path, b"127")
        return 127
    tail: deque[bytes] = deque()
    tail_size = 0
    written = 0
    assert child.stdout is not None
    with log.open("ab") as sink:
        while chunk := child.stdout.read1(READ_CHUNK_BYTES):  # type: ignore[attr-defined]
            tail.append(chunk)
            tail_size += len(chunk)
            while tail_size - len(tail[0]) >= TAIL_BYTES:
                tail_size -= len(tail.popleft())
            if written < max_bytes:
                room = max_bytes - written
                sink.write(chunk[:room])
                written += min(room, len(chunk))
                if written >= max_bytes:
                    sink.write(f"\n[orch: log capped at {max_bytes} bytes]\n".encode())
                sink.flush()
    code = child.wait()
    if code < 0:
        code = 128 - code  # killed by a signal: the shell's convention
    _write_atomic(tail_path, b"".join(tail))
    _write_atomic(exit_path, str(code).encode())
    return code


def main(args: list[str] | None = None) -> int:
    args = sys.argv[1:] if args is None else args
    if len(args) < 6 or args[4] != "--":
        print(USAGE, file=sys.stderr)
        return 2
    log, tail, exit_file, max_bytes = Path(args[0]), Path(args[1]), Path(args[2]), int(args[3])
    return run(log, tail, exit_file, max_bytes, args[5:])


if __name__ == "__main__":
    raise SystemExit(main())
