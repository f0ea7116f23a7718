"""``python -m orchestrator.runners <name>``: run one deterministic runner."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Final

from orchestrator.runners.context import TOOL_ERROR_EXIT, RunnerContext
from orchestrator.runners.process import install_termination_handler

# Runner name -> module with a run(context) function; only the one asked for is
# imported, so a runner starts fast and one runner's imports cannot break another.
RUNNERS: Final = {
    "tests": "orchestrator.runners.tests",
    "staging": "orchestrator.runners.staging",
    "deploy": "orchestrator.runners.deploy",
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in RUNNERS:
        print(f"usage: python -m orchestrator.runners {{{','.join(RUNNERS)}}}", file=sys.stderr)
        return 2
    # Killed by the engine (timeout, cancel): take the commands we started with us.
    install_termination_handler()
    try:
        context = RunnerContext.from_env()
        run: Callable[[RunnerContext], int] = importlib.import_module(RUNNERS[args[0]]).run
        return run(context)
    except KeyError as exc:
        print(f"runner {args[0]}: missing environment variable {exc}", file=sys.stderr)
        return TOOL_ERROR_EXIT
    except Exception as exc:  # a runner never raises into the engine
        print(f"runner {args[0]}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return TOOL_ERROR_EXIT


if __name__ == "__main__":
    raise SystemExit(main())
