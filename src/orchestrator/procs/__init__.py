"""The process toolkit: every child process of ours is started, watched and stopped here.

* :mod:`~orchestrator.procs.proc`: the one ``/proc`` reader (a process's state, parent,
  group and start time; the living members of a group; the descendants of a process).
* :mod:`~orchestrator.procs.spawn`: the one spawner (a new session, cwd, env, output to a
  file, a prompt fed on a thread).
* :mod:`~orchestrator.procs.kill`: the one tree-kill (SIGTERM, :data:`KILL_GRACE_S`,
  SIGKILL, on a whole group and on every descendant that left it).
* :mod:`~orchestrator.procs.job`: an agent or runner job under the launcher (its capped
  log, tail and exit files; stop without waiting, SIGKILL at the deadline).
* :mod:`~orchestrator.procs.launcher`: ``python -m orchestrator.procs.launcher``, the
  per-job supervisor that outlives the engine; ``launcher.c`` is the same in C (a tenth
  of a megabyte per job instead of six), which :mod:`~orchestrator.procs.native` builds
  on first use and chooses when it can (decision 0026).

Standard library only, and this ``__init__`` imports nothing: the launcher and the
workspace hooks run in every job and import :mod:`~orchestrator.procs.proc` and
:mod:`~orchestrator.procs.kill` alone, so they start fast and cannot fail on an import
of ours.
"""
