"""The OpenAI Responses API side of the scripted model server (for the Codex CLI).

Codex speaks the Responses API (``POST /v1/responses`` with ``"stream": true``): its
request carries ``instructions`` and an ``input`` list of items (``message`` with a
role and ``input_text`` parts, the model's earlier ``message`` / ``function_call``
items, and ``function_call_output`` items with what the tools printed); the answer is
a stream of server-sent events::

    response.created, response.in_progress
    per output item:
      response.output_item.added
      message:        response.content_part.added, response.output_text.delta ...,
                      response.output_text.done, response.content_part.done
      function_call:  response.function_call_arguments.delta ...,
                      response.function_call_arguments.done
      response.output_item.done
    response.completed (the whole response, with usage)

Everything here is pure. :func:`messages_view` turns a Responses request into the
Messages-shaped request :func:`~orchestrator.testing.model_script.plan_reply` reads
(one assistant message per model turn, so the turn number is the same rule), and
:func:`stream_events` / :func:`response_object` render a
:class:`~orchestrator.testing.model_script.Reply` in the Responses shapes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any, Final

from orchestrator.testing.model_script import ApiErrorReply, Reply

__all__ = ["error_body", "messages_view", "response_object", "stream_events"]

# Text and tool arguments are streamed in pieces of this many characters.
CHUNK_CHARS: Final = 200
# Items the model produced (one run of them is one assistant turn).
MODEL_ITEMS: Final = frozenset(
    {
        "function_call",
        "custom_tool_call",
        "local_shell_call",
        "reasoning",
        "web_search_call",
    }
)
SYSTEM_ROLES: Final = frozenset({"system", "developer"})


def _chunks(text: str) -> Iterator[str]:
    for start in range(0, len(text), CHUNK_CHARS):
        yield text[start : start + CHUNK_CHARS]


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    return [
        str(part.get("text", ""))
        for part in content
        if isinstance(part, dict) and part.get("type") in ("input_text", "output_text", "text")
    ]


def _append(messages: list[dict[str, Any]], role: str, block: dict[str, Any]) -> None:
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].append(block)
    else:
        messages.append({"role": role, "content": [block]})


def messages_view(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request as ``{"system": ..., "messages": [...]}``, one message per turn.

    Consecutive user items merge into one user message (Codex sends its environment
    context and the prompt as two), each run of model items is one assistant message,
    and tool outputs are user ``tool_result`` blocks.
    """
    system = [str(body["instructions"])] if isinstance(body.get("instructions"), str) else []
    messages: list[dict[str, Any]] = []
    raw = body.get("input")
    items: list[Any] = raw if isinstance(raw, list) else []
    if isinstance(raw, str):
        items = [{"role": "user", "content": raw}]
    for item in items:
        if not isinstance(item, dict):
            continue
        kind = str(item.get("type", "message"))
        role = str(item.get("role"))
        if kind == "message" and role in SYSTEM_ROLES:
            system += _texts(item.get("content"))
        elif kind == "message" and role == "user":
            for text in _texts(item.get("content")):
                _append(messages, "user", {"type": "text", "text": text})
        elif (kind == "message" and role == "assistant") or kind in MODEL_ITEMS:
            text = "\n".join(_texts(item.get("content")))
            _append(messages, "assistant", {"type": "text", "text": text})
        elif kind.endswith("_output"):
            output = item.get("output")
            _append(messages, "user", {"type": "tool_result", "content": str(output)})
    # Consecutive user texts read as one first message (matching sees them all).
    for message in messages:
        if message["role"] == "user":
            texts = [b["text"] for b in message["content"] if b["type"] == "text"]
            others = [b for b in message["content"] if b["type"] != "text"]
            message["content"] = [{"type": "text", "text": "\n".join(texts)}, *others]
    return {"system": "\n".join(system), "messages": messages}


def _output_items(reply: Reply, number: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for index, block in enumerate(reply.content):
        if block["type"] == "text":
            items.append(
                {
                    "id": f"msg_{number:06d}_{index}",
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": block["text"], "annotations": []}],
                }
            )
        else:
            call = block["id"].removeprefix("toolu_")
            items.append(
                {
                    "id": f"fc_{call}",
                    "type": "function_call",
                    "status": "completed",
                    "call_id": f"call_{call}",
                    "name": block["name"],
                    "arguments": json.dumps(block["input"], ensure_ascii=False),
                }
            )
    return items


def response_object(reply: Reply, model: str, number: int, *, done: bool = True) -> dict[str, Any]:
    """The ``response`` object: complete with output and usage, or just started."""
    response: dict[str, Any] = {
        "id": f"resp_{number:06d}",
        "object": "response",
        "created_at": 0,
        "status": "completed" if done else "in_progress",
        "model": model,
        "output": _output_items(reply, number) if done else [],
        "usage": None,
    }
    if done:
        response["usage"] = {
            "input_tokens": reply.input_tokens,
            "input_tokens_details": {"cached_tokens": reply.cached_input_tokens},
            "output_tokens": reply.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": reply.input_tokens + reply.output_tokens,
        }
    return response


def _item_events(item: dict[str, Any], index: int) -> list[dict[str, Any]]:
    at = {"item_id": item["id"], "output_index": index}
    if item["type"] == "message":
        text = item["content"][0]["text"]
        part = {"type": "output_text", "text": "", "annotations": []}
        return [
            {
                "type": "response.output_item.added",
                "output_index": index,
                "item": {**item, "status": "in_progress", "content": []},
            },
            {"type": "response.content_part.added", **at, "content_index": 0, "part": part},
            *(
                {"type": "response.output_text.delta", **at, "content_index": 0, "delta": piece}
                for piece in _chunks(text)
            ),
            {"type": "response.output_text.done", **at, "content_index": 0, "text": text},
            {
                "type": "response.content_part.done",
                **at,
                "content_index": 0,
                "part": {**part, "text": text},
            },
            {"type": "response.output_item.done", "output_index": index, "item": item},
        ]
    arguments = item["arguments"]
    return [
        {
            "type": "response.output_item.added",
            "output_index": index,
            "item": {**item, "status": "in_progress", "arguments": ""},
        },
        *(
            {"type": "response.function_call_arguments.delta", **at, "delta": piece}
            for piece in _chunks(arguments)
        ),
        {"type": "response.function_call_arguments.done", **at, "arguments": arguments},
        {"type": "response.output_item.done", "output_index": index, "item": item},
    ]


def stream_events(reply: Reply, model: str, number: int) -> list[str]:
    """The reply as the Responses API streams it: one SSE event per string."""
    started = response_object(reply, model, number, done=False)
    done = response_object(reply, model, number)
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
    ]
    for index, item in enumerate(done["output"]):
        events += _item_events(item, index)
    events.append({"type": "response.completed", "response": done})
    return [
        f"event: {event['type']}\ndata: "
        f"{json.dumps({**event, 'sequence_number': n}, ensure_ascii=False)}\n\n"
        for n, event in enumerate(events)
    ]


def error_body(error: ApiErrorReply) -> dict[str, Any]:
    """The Responses API's error shape."""
    return {
        "error": {"message": error.message, "type": error.type, "param": None, "code": error.type}
    }
