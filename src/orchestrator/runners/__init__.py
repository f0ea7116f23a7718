"""Deterministic stage runners: jobs that decide by exit codes, never by a model.

A runner is spawned like an agent (``python -m orchestrator.runners <name>`` in the
task worktree, in its own process group, with a log) and finishes by writing the same
artifact an agent would, so the same gate judges it. A runner never raises into the
engine: an error of its own is printed as one line and exits with
:data:`TOOL_ERROR_EXIT`, which the engine treats like any failed job (retry, bounded).

Runners:

* ``tests`` (testing): runs the repository's test command, maps the exit code with
  :func:`map_exit_code_to_status`, writes ``13-test-report.md``;
* ``staging`` (deploy-staging): nothing configured yet, so it writes a report that says
  the stage was skipped;
* ``deploy`` (deploy): merges the task branch into the default branch (checking first
  whether it already is) and writes ``15-deploy-report.md``.
"""

from orchestrator.runners.context import TOOL_ERROR_EXIT, RunnerContext
from orchestrator.runners.tests import map_exit_code_to_status

__all__ = ["TOOL_ERROR_EXIT", "RunnerContext", "map_exit_code_to_status"]
