"""The environment a job runs in: built from an allow-list, never inherited whole.

An agent runs code on the host with whatever it finds in its environment, and orch's
own environment holds its secrets (webhook secrets, bot and forge tokens, the admin
token, the database URL). So a job's environment is built, not inherited:

1. from orch's environment, only the names of :data:`BASE_NAMES` (``PATH``, ``HOME``,
   ``USER``, ``SHELL``, ``TERM``, ``TMPDIR``, ``TZ``, locale) and the ``LC_*`` names,
   plus the names (or ``*`` patterns) the user listed in ``agent_env_passthrough``;
2. any of those whose value holds one of orch's secret values is dropped all the same
   (a proxy URL carrying orch's token, a passthrough name that happens to hold one);
3. then the adapter's variables, the agent's own ``[agents.<name>].env`` (the user's
   explicit choice, passed as written) and the ``ORCH_*`` task variables the engine
   sets for the job.

The deploy command (an effect, not a job) is the one exception: it needs the operator's
own credentials (``KUBECONFIG``, a cloud profile, an SSH agent), which no allow-list can
name in advance, so it gets orch's environment less orch's own settings (``ORCH_*``) and
any value holding one of orch's secrets (:func:`deploy_environment`).

Runners (tests, staging, deploy) are jobs too: the repository's commands they start get
this environment (less ``ORCH_*``), so they see no secret of orch's either.

Pure: the caller hands in orch's environment and its secret values.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Final

__all__ = [
    "BASE_NAMES",
    "BASE_PREFIXES",
    "MIN_SUBSTRING_SECRET",
    "ORCH_PREFIX",
    "check_passthrough",
    "deploy_environment",
    "job_environment",
    "passes",
]

# Always passed from orch's environment when set: what any program needs to run.
BASE_NAMES: Final = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "TMPDIR", "TZ", "LANG", "LANGUAGE"}
)
BASE_PREFIXES: Final = ("LC_",)
# orch's own settings (ORCH_FORGE_TOKEN, ...): never passed, whatever the passthrough.
ORCH_PREFIX: Final = "ORCH_"
# A secret this long or longer is also looked for inside other values; shorter ones
# only as a whole value (a one-character "secret" would otherwise drop everything).
MIN_SUBSTRING_SECRET: Final = 6


def passes(name: str, passthrough: Iterable[str]) -> bool:
    """Whether orch's variable ``name`` may reach a job (``ORCH_*`` never does: those
    are orch's own settings)."""
    if name.startswith(ORCH_PREFIX):
        return False
    if name in BASE_NAMES or name.startswith(BASE_PREFIXES):
        return True
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in passthrough)


def check_passthrough(pattern: str) -> str:
    """``pattern`` if it may be an ``agent_env_passthrough`` entry; else ValueError."""
    if not pattern or not pattern.replace("*", "").replace("?", ""):
        raise ValueError(f"'{pattern}' would pass every variable; name the variables")
    if pattern.upper().startswith(ORCH_PREFIX):
        raise ValueError(f"'{pattern}': ORCH_* variables are orch's own and never reach a job")
    if not all(char.isalnum() or char in "_*?" for char in pattern):
        raise ValueError(f"'{pattern}' is not a variable name (letters, digits, _, * and ?)")
    return pattern


def _holds_secret(value: str, secrets: Iterable[str]) -> bool:
    for secret in secrets:
        if value == secret or (len(secret) >= MIN_SUBSTRING_SECRET and secret in value):
            return True
    return False


def job_environment(
    parent: Mapping[str, str],
    *,
    passthrough: Iterable[str] = (),
    secrets: Iterable[str] = (),
    layers: Iterable[Mapping[str, str]] = (),
) -> dict[str, str]:
    """A job's environment: the allowed part of ``parent`` without ``secrets``, then
    each of ``layers`` (adapter variables, the agent's env, the task variables) over it.
    """
    patterns = tuple(passthrough)
    secret_list = [secret for secret in secrets if secret]
    env = {
        name: value
        for name, value in parent.items()
        if passes(name, patterns) and not _holds_secret(value, secret_list)
    }
    for layer in layers:
        env.update(layer)
    return env


def deploy_environment(
    parent: Mapping[str, str],
    *,
    secrets: Iterable[str] = (),
    layers: Iterable[Mapping[str, str]] = (),
) -> dict[str, str]:
    """The deploy command's environment: ``parent`` less orch's settings (``ORCH_*``)
    and every value holding one of ``secrets``, then ``layers`` over it.

    After a merge the deploy script may be an agent's work, so orch's webhook secrets
    and tokens must not reach it; the operator's deploy credentials must.
    """
    secret_list = [secret for secret in secrets if secret]
    env = {
        name: value
        for name, value in parent.items()
        if not name.startswith(ORCH_PREFIX) and not _holds_secret(value, secret_list)
    }
    for layer in layers:
        env.update(layer)
    return env
