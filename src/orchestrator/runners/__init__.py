"""Deterministic stage runners: jobs that decide by exit codes, never by a model.

A runner is spawned like an agent (``python -m orchestrator.runners <name>`` in the
task worktree, in its own process group, with a log) and finishes by writing the same
artifact an agent would, so the same gate judges it. Its repository's settings arrive
as one JSON variable (:mod:`~orchestrator.runners.config`, built by
:mod:`~orchestrator.runners.environment` in the engine). A runner never raises into the
engine: an error of its own is printed as one line and exits with
:data:`TOOL_ERROR_EXIT`, a DEFER, which the engine retries with backoff (bounded).

Runners:

* ``tests`` (testing, :mod:`~orchestrator.runners.tests`): setup and test commands in
  their own sessions with a timeout, pytest's exit codes through
  :func:`map_exit_code_to_status`, JUnit counts, an optional read-only smoke, a serial
  gate, a coverage ratchet, the hybrid hand-off of a persistent DEFER to a tester agent
  that explains but never decides; writes ``13-test-report.md``;
* ``staging`` (deploy-staging, :mod:`~orchestrator.runners.staging`): starts the
  repository's staging command on a free port, waits for its health URL, smoke-checks
  it, stops it and writes ``14-staging-report.md`` (SKIPPED when nothing is configured);
* ``deploy`` (deploy): merges the task branch into the default branch (checking first
  whether it already is) and writes ``15-deploy-report.md``.

Modules: ``process`` (commands in their own sessions, tree-kill), ``verdict`` (pure exit
code mapping), ``report``, ``junit``, ``smoke``, ``serial_gate``, ``coverage_ratchet``,
``explain`` (the hybrid hand-off).
"""

from orchestrator.runners.context import TOOL_ERROR_EXIT, RunnerContext
from orchestrator.runners.verdict import map_exit_code_to_status

__all__ = ["TOOL_ERROR_EXIT", "RunnerContext", "map_exit_code_to_status"]
