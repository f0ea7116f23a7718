"""The card's Reject button: ask for the reason with a force-reply prompt, take the reply.

Theory of operation
-------------------
A callback query can be answered with one Bot API method only, and a rejection needs
its reason in words, so Reject takes two steps:

1. **Press.** The webhook checks the task can be rejected now (the service's own rule),
   writes a ``reject_prompt`` outbox row (:func:`enqueue_reject_prompt`) and answers the
   query. The outbox sends the prompt (:func:`prompt_message`): a message that replies
   to the card (so it quotes the task) and carries ``ForceReply``, so Telegram opens the
   reply field; the Bot API's answer, its ``message_id``, is kept on the row
   (``payload.result``) when it is marked sent.
2. **Reply.** A message whose ``reply_to_message`` is one of those prompts in the
   configured chat (:func:`find_prompt`, by chat and message id, never by its text) is
   the feedback: the webhook calls ``TaskService.reject`` as ``telegram:<user>``. A reply
   to any other message, or a message that replies to nothing, is not ours and is left
   alone.

A prompt is good for the gate visit it was asked in: the row keeps the id of the event
that brought the task to the gate (:func:`gate_visit`); a reply that arrives after the
task left the gate, or came back to it with a new BRD, is refused with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from orchestrator.kernel.gates import HUMAN_GATE_ARTIFACTS
from orchestrator.kernel.stages import REJECT_TARGET
from orchestrator.outbox.delivery import TELEGRAM, enqueue
from orchestrator.store import Event, Store, Task, Tx

__all__ = [
    "PROMPT_LOOKBACK_ROWS",
    "REJECT_PROMPT",
    "Prompt",
    "enqueue_reject_prompt",
    "find_prompt",
    "gate_visit",
    "prompt_message",
]

REJECT_PROMPT: Final = "reject_prompt"
# Sent prompts looked at to match a reply, newest first: far more than are ever open.
PROMPT_LOOKBACK_ROWS: Final = 500
PLACEHOLDER: Final = "What must change?"  # ForceReply's input_field_placeholder: 1-64 chars


@dataclass(frozen=True)
class Prompt:
    """A sent reject prompt: which task and gate visit it asks about."""

    task_id: int
    work_item: str
    gate_visit: int | None


def gate_visit(task: Task, events: Sequence[Event]) -> int | None:
    """The id of the event that brought the task to the stage it is in now."""
    for event in reversed(events):
        if event.to_stage == task.stage and event.from_stage not in (None, task.stage):
            return event.id
    return None


def enqueue_reject_prompt(
    tx: Tx,
    *,
    chat_id: str,
    task: Task,
    visit: int | None,
    card_message_id: int | None,
    username: str | None,
) -> int:
    """Ask, through the outbox in ``tx``, for the reason of rejecting ``task``."""
    return enqueue(
        tx,
        channel=TELEGRAM,
        kind=REJECT_PROMPT,
        task_id=task.id,
        payload={
            "chat_id": chat_id,
            "work_item": task.work_item,
            "title": task.title,
            "stage": task.stage,
            "gate_visit": visit,
            "card_message_id": card_message_id,
            "username": username,
        },
    )


def prompt_message(payload: Mapping[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """The prompt's text, its ``ForceReply`` markup and its ``reply_parameters``."""
    stage = str(payload.get("stage") or "")
    document = HUMAN_GATE_ARTIFACTS.get(stage, "the document")
    redo = REJECT_TARGET.get(stage, "the previous stage")
    username = payload.get("username")
    mention = f"@{username}, " if isinstance(username, str) and username else ""
    title = " ".join(str(payload.get("title") or "").split())[:200]
    text = (
        f"↩️ {mention}why is the {document} of {payload.get('work_item')} · {title} rejected?\n"
        f"Reply to this message with what must change; {redo} starts again with your words."
    )
    # Selective: with a mention, only that person gets the reply field in a group.
    markup = {
        "force_reply": True,
        "input_field_placeholder": PLACEHOLDER,
        "selective": bool(mention),
    }
    card = payload.get("card_message_id")
    quote = (
        {"message_id": card, "allow_sending_without_reply": True}
        if isinstance(card, int) and not isinstance(card, bool)
        else None
    )
    return text, markup, quote


def find_prompt(store: Store, chat_id: str, message_id: int) -> Prompt | None:
    """The reject prompt we sent as ``message_id`` in ``chat_id``, if it is one."""
    for task_id, payload in store.sent_outbox(TELEGRAM, REJECT_PROMPT, PROMPT_LOOKBACK_ROWS):
        data = payload if isinstance(payload, dict) else {}
        result = data.get("result")
        sent_as = result.get("message_id") if isinstance(result, dict) else None
        if task_id is not None and str(data.get("chat_id")) == chat_id and sent_as == message_id:
            visit = data.get("gate_visit")
            return Prompt(
                int(task_id),
                str(data.get("work_item") or ""),
                visit if isinstance(visit, int) else None,
            )
    return None
