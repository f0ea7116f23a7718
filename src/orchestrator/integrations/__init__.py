"""Integrations with the services people meet the product through.

* :mod:`~orchestrator.integrations.card` — the live card of a task (pure rendering);
* :mod:`~orchestrator.integrations.telegram` — the Bot API client and the outbox
  channel that keeps the card and sends alerts;
* :mod:`~orchestrator.integrations.telegram_webhook` — the card's buttons coming back.

:func:`build_notifier` and :func:`build_delivery` are the composition helpers the CLI and
``orch serve`` use: Telegram through the outbox when a bot token and a chat are set, the
console otherwise. See docs/integrations.md.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from orchestrator.integrations.telegram import TelegramChannel, TelegramClient
from orchestrator.notifier import ConsoleNotifier, FanOutNotifier, Notifier
from orchestrator.outbox import TELEGRAM, Channel, OutboxDelivery, OutboxNotifier
from orchestrator.settings import Settings
from orchestrator.store import Store

__all__ = ["build_delivery", "build_notifier"]


def build_notifier(settings: Settings, store: Store) -> Notifier:
    """The console, plus the Telegram outbox when Telegram is configured."""
    console = ConsoleNotifier(settings.language)
    if not settings.telegram_enabled:
        return console
    return FanOutNotifier(console, OutboxNotifier(store, settings))


def build_delivery(
    settings: Settings,
    store: Store,
    *,
    owner: str,
    is_alive: Callable[[str], bool] | None = None,
    http: httpx.Client | None = None,
) -> OutboxDelivery | None:
    """The outbox delivery of this process, or None when no channel is configured."""
    if not settings.telegram_enabled:
        return None
    client = http or httpx.Client()
    channels: dict[str, Channel] = {
        TELEGRAM: TelegramChannel(
            TelegramClient(
                settings.telegram_bot_token,
                http=client,
                base_url=settings.telegram_api_base_url,
            ),
            store,
            settings,
        )
    }
    return OutboxDelivery(
        store,
        settings,
        channels,
        owner=owner,
        is_alive=is_alive,
        on_close=client.close if http is None else None,
    )
