"""Who may do what: API tokens with roles, the actor names of the audit trail, and the
repository allow-list. No HTTP here (:mod:`orchestrator.api.guard` applies it at the
edge); no SQL here (the store keeps tokens as hashes).

Theory of operation
-------------------
A token is ``orch_`` + 32 random bytes (URL-safe base64). Only its SHA-256 is stored;
the secret is shown once by ``orch token create``. A request presents it as
``Authorization: Bearer <token>``: the hash of what was sent is looked up and compared
in constant time on bytes. Roles are ordered, each includes the ones before it::

    viewer     reads: GET /status, /queue, /tasks, /tasks/{id}/..., /metrics, /costs
    operator   + create, approve, reject, cancel, retry, roll back tasks
    admin      + force-release a transition lease, list the API tokens (GET /tokens)

:func:`required_role` maps a request (method, path) to the role it needs: reads need
``viewer`` (none with ``public_read``) unless listed in :data:`ADMIN_READ_PATHS`
(``admin`` always), every other method ``operator`` unless listed in
:data:`ADMIN_PATHS`: a new endpoint is guarded by default. Reading ``/health`` and the
API's description (``/docs``, its assets under ``/docs/assets/``, ``/openapi.json``),
and the signed webhooks (``/webhooks/...``, authenticated by their own signatures) need
no token. ``/metrics`` is a read like the others (decision 0018). The dashboard (``/ui/...``,
decision 0020) follows the same table: its pages are reads, its form posts need an
operator; only its login form, logout, packaged assets and ``/`` need no token.

The legacy ``admin_token`` setting still works: it authenticates as an admin called
``admin_token``.

Every event names its actor: ``token:<name>`` through the API, ``cli:<os user>`` for the
CLI acting on the database, ``telegram:@name(id)``, ``github:<login>`` and so on.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from orchestrator.errors import ForbiddenError, NotAuthenticatedError, UsageError
from orchestrator.kernel.events import EventKind

if TYPE_CHECKING:  # annotations only: `orch --help` and `orch token create` stay light
    from orchestrator.settings import Settings
    from orchestrator.store import Store

__all__ = [
    "ADMIN_PATHS",
    "ADMIN_READ_PATHS",
    "JOB_ENVIRONMENT_MARKERS",
    "LEGACY_ADMIN_NAME",
    "ROLES",
    "TOKEN_FILE_NAME",
    "UI_OPEN_PATHS",
    "UI_PREFIX",
    "Principal",
    "TokenKind",
    "authenticate",
    "authorize",
    "check_repo_allowed",
    "hash_token",
    "in_job_environment",
    "issue_token",
    "local_actor",
    "refuse_inside_job",
    "required_role",
    "telegram_actor",
    "telegram_buttons_enabled",
    "telegram_user_allowed",
    "token_file",
    "validate_role",
    "write_token_file",
]

ROLES: Final = ("viewer", "operator", "admin")
_RANK: Final = {role: rank for rank, role in enumerate(ROLES)}
TOKEN_PREFIX: Final = "orch_"  # noqa: S105 - a prefix, not a secret
TOKEN_BYTES: Final = 32
# The file `orch init` writes the local operator token to, in data_dir (mode 0600).
TOKEN_FILE_NAME: Final = "api-token"  # noqa: S105 - a file name
LEGACY_ADMIN_NAME: Final = "admin_token"
# Paths whose writes need an admin, not an operator.
ADMIN_PATHS: Final = frozenset({"/transition-lease/release"})
# Reads that need an admin even with public_read: who holds which token.
ADMIN_READ_PATHS: Final = frozenset({"/tokens"})
# Reads that need no token: liveness, and the API's own description (the same for every
# install; a browser showing /docs cannot send a bearer token).
OPEN_READ_PATHS: Final = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
# Swagger UI's packaged files (orchestrator.api.docs), the same for every install.
OPEN_READ_PREFIX: Final = "/docs/assets/"
WEBHOOK_PREFIX: Final = "/webhooks/"
# The web dashboard (orchestrator.api.web): its pages are reads, its form posts writes.
UI_PREFIX: Final = "/ui/"
# Dashboard paths that need no session, for any method: the login form (its post checks
# a token of its own) and logging out (it ends only the session of its own cookie).
UI_OPEN_PATHS: Final = frozenset({"/ui/login", "/ui/logout"})
# Dashboard reads that need no session: the packaged CSS and JS, and ``/`` (a redirect).
UI_OPEN_PREFIX: Final = "/ui/static/"
UI_OPEN_READ_PATHS: Final = frozenset({"/"})
READ_METHODS: Final = frozenset({"GET", "HEAD"})
# Variables the engine sets for every job: their presence means "running as an agent".
JOB_ENVIRONMENT_MARKERS: Final = ("ORCH_WORK_ITEM", "ORCH_STAGE")
_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_ACTOR_PART_CHARS: Final = 60
HOW_TO_CREATE: Final = (
    "create one with `orch token create NAME --role operator` and send it as "
    "'Authorization: Bearer <token>'"
)


class TokenKind:
    """Event kinds of token management (the audit trail's task-less events)."""

    CREATED: Final = EventKind.TOKEN_CREATED
    REVOKED: Final = EventKind.TOKEN_REVOKED
    REFUSED: Final = EventKind.ACCESS_REFUSED


@dataclass(frozen=True)
class Principal:
    """Who a request is: the token's name, its role, and the actor the trail records."""

    name: str
    role: str

    @property
    def actor(self) -> str:
        return f"token:{self.name}"


def validate_role(role: str) -> str:
    if role not in _RANK:
        raise UsageError(f"role {role[:40]!r} is not one of {', '.join(ROLES)}")
    return role


def validate_token_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"token name {name[:80]!r} is not valid: use 1-64 letters, digits, '.', '-' or "
            "'_', starting with a letter or digit (e.g. alice or ci-bot)"
        )
    return name


def hash_token(token: str) -> str:
    """The SHA-256 (hex) of a token as sent; any text hashes, nothing raises."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def issue_token(store: Store, name: str, role: str, *, actor: str) -> str:
    """Create a token; returns the secret, which is stored only as its hash."""
    validate_token_name(name)
    validate_role(role)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    store.create_api_token(
        name=name,
        role=role,
        token_hash=hash_token(secret),
        actor=actor,
        event_kind=TokenKind.CREATED,
    )
    return secret


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def authenticate(store: Store, settings: Settings, authorization: str | None) -> Principal:
    """The principal of an ``Authorization`` header, or :class:`NotAuthenticatedError`."""
    token = _bearer(authorization)
    if token is None:
        if store.count_api_tokens() == 0 and not settings.admin_token:
            raise NotAuthenticatedError(f"no API token exists yet: {HOW_TO_CREATE}")
        raise NotAuthenticatedError(
            "missing API token: send 'Authorization: Bearer <token>' "
            "(orch token create NAME --role R makes one)"
        )
    sent = token.encode("utf-8", "surrogateescape")
    if settings.admin_token and hmac.compare_digest(
        sent, settings.admin_token.encode("utf-8", "surrogateescape")
    ):
        return Principal(LEGACY_ADMIN_NAME, "admin")
    digest = hash_token(token)
    found = store.api_token_by_hash(digest)
    if found is None or not hmac.compare_digest(found.token_hash.encode(), digest.encode()):
        raise NotAuthenticatedError(
            "unknown or revoked API token; `orch token list` shows the tokens that exist"
        )
    return Principal(found.name, found.role)


def authorize(principal: Principal, required: str) -> None:
    """Refuse (:class:`ForbiddenError`) a principal whose role is below ``required``."""
    if _RANK.get(principal.role, -1) < _RANK[required]:
        raise ForbiddenError(
            f"token {principal.name} has role {principal.role}; this needs {required} "
            f"(orch token create NAME --role {required})"
        )


def required_role(method: str, path: str, *, public_read: bool) -> str | None:
    """The role a request needs; None = no token (``/health``, signed webhooks)."""
    if path.startswith(WEBHOOK_PREFIX):
        return None
    if path in UI_OPEN_PATHS:
        return None
    if method.upper() in READ_METHODS and (
        path in UI_OPEN_READ_PATHS or path.startswith(UI_OPEN_PREFIX)
    ):
        return None
    if method.upper() in READ_METHODS:
        if path in ADMIN_READ_PATHS:
            return "admin"
        if path in OPEN_READ_PATHS or path.startswith(OPEN_READ_PREFIX):
            return None
        return None if public_read else "viewer"
    return "admin" if path in ADMIN_PATHS else "operator"


# --- the local CLI ----------------------------------------------------------------------
def local_actor() -> str:
    """``cli:<os user>``: who the CLI acts as when it writes the database itself."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER
        user = f"uid{os.getuid()}"
    return f"cli:{user[:MAX_ACTOR_PART_CHARS]}"


def in_job_environment(env: Mapping[str, str]) -> bool:
    """Whether this process runs inside an agent job (the engine's variables are set)."""
    return all(env.get(name) for name in JOB_ENVIRONMENT_MARKERS)


def refuse_inside_job(env: Mapping[str, str], what: str) -> None:
    """Defence in depth: an agent (or its children) does not steer tasks or tokens."""
    if in_job_environment(env):
        raise ForbiddenError(
            f"refused: {what} from inside an orch agent job ({env.get('ORCH_WORK_ITEM')} "
            f"{env.get('ORCH_STAGE')}); a person does this, not an agent"
        )


def token_file(settings: Settings) -> Path:
    """Where `orch init` keeps the local operator token."""
    return settings.data_dir / TOKEN_FILE_NAME


def write_token_file(path: Path, token: str) -> None:
    """Write ``token`` readable by its owner only (0600), replacing any old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)


# --- the repository allow-list -------------------------------------------------------------
def listed_repositories(settings: Settings) -> list[Path]:
    """The repositories orch.toml names with a path (``[repos.<name>] path = ...``)."""
    return [
        Path(config.path).expanduser().resolve()
        for config in settings.repos.values()
        if config.path
    ]


def check_repo_allowed(settings: Settings, repo_path: Path) -> None:
    """Refuse a repository orch.toml does not list, unless ``allow_any_repo``."""
    if settings.allow_any_repo:
        return
    shown = str(repo_path)[:200]
    try:
        resolved = repo_path.expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        resolved = None
    if resolved is None or resolved not in listed_repositories(settings):
        raise ForbiddenError(
            f"repository {shown!r} is not listed in orch.toml; add it as [repos.NAME] with "
            'path = "..." (or set allow_any_repo = true)'
        )


# --- Telegram -----------------------------------------------------------------------------
def _printable(value: object) -> str:
    text = str(value).encode("utf-8", "replace").decode("utf-8")  # lone surrogates -> ?
    return "".join(ch for ch in text if ch.isprintable() and not ch.isspace())


def telegram_actor(user: Mapping[str, object]) -> str:
    """``telegram:@name(id)`` for the sender of a callback (``telegram:(id)`` unnamed)."""
    name = _printable(user.get("username") or "")[:MAX_ACTOR_PART_CHARS]
    number = _printable(user.get("id") or "?")[:20]
    return f"telegram:@{name}({number})" if name else f"telegram:({number})"


def telegram_buttons_enabled(settings: Settings) -> bool:
    """Buttons act only once ``telegram_allowed_users`` names who may press them.

    Secure by default: being in the chat is not an authorisation (a group gains members,
    a public ``@channel`` has viewers), so with an empty list the card has no buttons and
    a press, forged or left over, is refused.
    """
    return bool(settings.telegram_allowed_users)


def telegram_user_allowed(settings: Settings, user: Mapping[str, object]) -> bool:
    """Whether the sender may press the card's buttons (see ``telegram_allowed_users``).

    An empty list lets no one act.
    """
    if not settings.telegram_allowed_users:
        return False
    number = user.get("id")
    username = user.get("username")
    for entry in settings.telegram_allowed_users:
        wanted = entry.strip()
        if wanted.lstrip("-").isdigit():
            if isinstance(number, int) and not isinstance(number, bool) and str(number) == wanted:
                return True
        elif isinstance(username, str) and username.lower() == wanted.lstrip("@").lower():
            return True
    return False
