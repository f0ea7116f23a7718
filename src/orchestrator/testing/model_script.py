"""Scripts for the scripted model server: which reply a conversation gets, turn by turn.

Theory of operation
-------------------
A script is a list of **sessions**. Each has a ``match`` string and a list of **turns**.
A Messages API request belongs to the first session whose ``match`` occurs in the text
of the conversation's first user message (our stage prompts say ``Stage: analysis.``
and so on). Which turn it gets is the number of assistant messages already in the
request: the agent CLI resends the whole conversation every time, so the server keeps no
state and any number of agents can talk to it at once. Past the last turn the reply is
the session's ``final_text``.

A Responses API request (Codex) is first turned into this shape by
:func:`orchestrator.testing.responses_api.messages_view`: one assistant message per
model turn, the leading user items as one first message.

A turn is text, a tool call (``tool`` + ``input``, optionally after some text), or an
API ``error``; ``drops`` makes the server cut its reply off mid-stream the first N
times a conversation asks for it (the server counts those, nothing else).

Strings in a turn may use ``{cwd}`` (the agent's working directory, read
from the request), ``{work_item}`` and ``{artifact_dir}`` (``docs/work-items/<ID>``,
found in the prompt); a relative ``file_path`` in a tool's input is made absolute
against ``{cwd}``. Usage is the turn's ``usage`` (``cached_input_tokens`` are part of
``input_tokens``) or an estimate from the characters read and written (4 per token), so
the agent computes a real, non-zero cost.

Everything here is pure: :func:`plan_reply` maps a script and a request body to a
:class:`Reply`; the HTTP side lives in :mod:`orchestrator.testing.model_server`.

Script files are TOML or JSON::

    [[sessions]]
    match = "Stage: analysis"
    [[sessions.turns]]
    tool = "Write"
    input = { file_path = "{artifact_dir}/01-brd.md", content = "# BRD ..." }
    usage = { input_tokens = 1200, output_tokens = 300 }
    [[sessions.turns]]
    text = "I wrote the BRD."
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestrator.errors import UsageError

__all__ = [
    "DEFAULT_SCRIPT",
    "ApiErrorReply",
    "Reply",
    "Script",
    "Session",
    "Turn",
    "TurnUsage",
    "conversation_facts",
    "first_user_text",
    "load_script",
    "parse_script",
    "plan_reply",
]

CHARS_PER_TOKEN: Final = 4
DEFAULT_MODEL: Final = "claude-sonnet-4-5"
# Claude Code says "Working directory: /path"; Codex "<cwd>/path</cwd>".
_CWD: Final = re.compile(
    r"(?:(?:Primary working directory|Working directory):[ \t]*|<cwd>)(\S[^\n<]*)"
)
_ARTIFACT_DIR: Final = re.compile(r"docs/work-items/([A-Za-z0-9][A-Za-z0-9._-]*[A-Za-z0-9])")
_PLACEHOLDER: Final = re.compile(r"\{(cwd|work_item|artifact_dir)\}")
# Tool inputs that name a file; made absolute against the working directory.
PATH_KEYS: Final = ("file_path", "notebook_path")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TurnUsage(_Strict):
    # All input tokens, the cached ones included (as OpenAI counts them).
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    cached_input_tokens: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _cached_within_input(self) -> TurnUsage:
        if self.cached_input_tokens > self.input_tokens:
            raise ValueError("cached_input_tokens are part of input_tokens: not more")
        return self


class ApiErrorReply(_Strict):
    """An error answer in the shape the real API uses."""

    status: int = Field(default=400, ge=400, le=599)
    type: str = "invalid_request_error"
    message: str = "scripted error"


class Turn(_Strict):
    """One model reply: text, a tool call (after optional text), or an API error."""

    text: str = ""
    tool: str | None = None
    input: dict[str, Any] = Field(default_factory=dict)
    usage: TurnUsage | None = None
    error: ApiErrorReply | None = None
    # Seconds to wait before answering: a slow (or hung) model.
    delay_s: float = Field(default=0.0, ge=0)
    # A dropped stream: the first ``drops`` times a conversation asks for this turn, the
    # server sends half of the reply and closes the connection.
    drops: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _one_kind(self) -> Turn:
        if self.error is not None and (self.tool or self.text or self.drops):
            raise ValueError("a turn with an error has no text, tool or drops")
        if self.input and not self.tool:
            raise ValueError("a turn with input needs a tool")
        if self.error is None and not self.tool and not self.text:
            raise ValueError("a turn needs text, a tool or an error")
        return self


class Session(_Strict):
    """The turns of one kind of conversation."""

    name: str = ""
    # Found in the first user message's text; "" = every conversation.
    match: str = ""
    turns: list[Turn] = Field(min_length=1)
    final_text: str = "Done."


class Script(_Strict):
    sessions: list[Session] = Field(min_length=1)


@dataclass(frozen=True)
class Reply:
    """What the server answers to one request."""

    session: str
    turn: int  # 0-based index of the turn played (len(turns) = the final text)
    content: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = "end_turn"
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0  # part of input_tokens
    error: ApiErrorReply | None = None
    delay_s: float = 0.0
    drops: int = 0

    @property
    def summary(self) -> str:
        if self.error is not None:
            return f"error {self.error.status} {self.error.type}"
        tools = [block["name"] for block in self.content if block.get("type") == "tool_use"]
        return f"tool_use {', '.join(tools)}" if tools else "text"


def parse_script(data: Mapping[str, Any], source: str) -> Script:
    """A validated script, or one :class:`UsageError` naming the source and the key."""
    try:
        return Script.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        raise UsageError(f"{source}: {where}: {error['msg']}") from None


def load_script(path: Path) -> Script:
    """Read a script from a ``.toml`` or ``.json`` file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the script: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: not a valid script: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a script is an object with a 'sessions' list")
    return parse_script(data, str(path))


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(block.get("text", ""))
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        )
    return ""


def first_user_text(request: Mapping[str, Any]) -> str:
    """The text of a Messages request's first user message (which session, which task)."""
    for message in request.get("messages") or ():
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def conversation_facts(request: Mapping[str, Any]) -> dict[str, str]:
    """``cwd``, ``work_item`` and ``artifact_dir`` as far as the request tells them."""
    facts: dict[str, str] = {}
    haystack = _text_of(request.get("system")) + "\n" + first_user_text(request)
    if cwd := _CWD.search(haystack):
        facts["cwd"] = cwd.group(1).strip()
    if artifact := _ARTIFACT_DIR.search(first_user_text(request)):
        facts["work_item"] = artifact.group(1)
        facts["artifact_dir"] = f"docs/work-items/{artifact.group(1)}"
    return facts


def _render(value: Any, facts: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: facts.get(m.group(1), m.group(0)), value)
    if isinstance(value, list):
        return [_render(item, facts) for item in value]
    if isinstance(value, dict):
        return {key: _render(item, facts) for key, item in value.items()}
    return value


def _absolute_paths(tool_input: dict[str, Any], cwd: str | None) -> dict[str, Any]:
    if cwd is None:
        return tool_input
    fixed = dict(tool_input)
    for key in PATH_KEYS:
        value = fixed.get(key)
        if isinstance(value, str) and value and not PurePosixPath(value).is_absolute():
            fixed[key] = str(PurePosixPath(cwd) / value)
    return fixed


def _estimate_tokens(value: Any) -> int:
    return max(1, len(json.dumps(value, ensure_ascii=False)) // CHARS_PER_TOKEN)


def _no_session(request: Mapping[str, Any], script: Script) -> Reply:
    tried = ", ".join(repr(s.match) for s in script.sessions)
    first = " ".join(first_user_text(request).split())[-200:]
    message = (
        f"model-server: no scripted session matches this conversation (matches tried: "
        f"{tried}); its first message ends: {first!r}"
    )
    return Reply(session="", turn=0, error=ApiErrorReply(message=message))


def plan_reply(script: Script, request: Mapping[str, Any], reply_id: int = 0) -> Reply:
    """The reply the script gives to a Messages API request body."""
    text = first_user_text(request)
    session = next((s for s in script.sessions if s.match in text), None)
    if session is None:
        return _no_session(request, script)
    messages = request.get("messages") or []
    index = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
    name = session.name or session.match or "default"
    facts = conversation_facts(request)
    played = session.turns[index] if index < len(session.turns) else None
    turn = played or Turn(text=session.final_text)
    if turn.error is not None:
        return Reply(session=name, turn=index, error=turn.error, delay_s=turn.delay_s)
    content: list[dict[str, Any]] = []
    if turn.text:
        content.append({"type": "text", "text": _render(turn.text, facts)})
    stop_reason = "end_turn"
    if turn.tool:
        tool_input = _absolute_paths(_render(turn.input, facts), facts.get("cwd"))
        content.append(
            {
                "type": "tool_use",
                "id": f"toolu_{reply_id:06d}",
                "name": turn.tool,
                "input": tool_input,
            }
        )
        stop_reason = "tool_use"
    cached = 0
    if turn.usage is not None:
        input_tokens, output_tokens = turn.usage.input_tokens, turn.usage.output_tokens
        cached = turn.usage.cached_input_tokens
    else:
        read = {"system": request.get("system"), "messages": messages}
        input_tokens, output_tokens = _estimate_tokens(read), _estimate_tokens(content)
    return Reply(
        session=name,
        turn=index,
        content=content,
        stop_reason=stop_reason,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=cached,
        delay_s=turn.delay_s,
        drops=turn.drops,
    )


_BRD: Final = """\
# Business requirements: {work_item}

## Problem
The task's title and description state the problem; this dry-run BRD stands in for
the analysis a model would write.

## Functional requirements
1. The change described in the task is implemented.
2. The change is covered by tests.

## Acceptance criteria
- The repository's tests pass.

## Out of scope
- Anything the task does not mention.
"""

_ADR: Final = """\
# ADR-001: Dry-run decision

## Context
A dry run of the pipeline against the scripted model server.

## Decision
Keep the change small and contained in one new module.

## Consequences
Nothing in the existing code changes behaviour.
"""

_CODE: Final = '''\
"""Written by a dry run of the orchestrator's pipeline (scripted model server)."""


def dry_run_marker() -> str:
    return "{work_item}"
'''

# Used by `orch dev model-server` when no --script is given: the analysis, architecture
# and development stages of the built-in prompts, each a Write and a closing text.
DEFAULT_SCRIPT: Final = Script(
    sessions=[
        Session(
            name="analysis",
            match="Stage: analysis",
            turns=[
                Turn(
                    tool="Write", input={"file_path": "{artifact_dir}/01-brd.md", "content": _BRD}
                ),
                Turn(text="I wrote the business requirements in {artifact_dir}/01-brd.md."),
            ],
        ),
        Session(
            name="architecture",
            match="Stage: architecture",
            turns=[
                Turn(
                    tool="Write",
                    input={
                        "file_path": "{artifact_dir}/06-adr/ADR-001-dry-run.md",
                        "content": _ADR,
                    },
                ),
                Turn(text="I recorded the decision in ADR-001."),
            ],
        ),
        Session(
            name="development",
            match="Stage: development",
            turns=[
                Turn(
                    tool="Write",
                    input={"file_path": "orch_dry_run.py", "content": _CODE},
                ),
                Turn(text="I added orch_dry_run.py."),
            ],
        ),
    ]
)
