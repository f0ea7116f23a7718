"""Integrations with the services people meet the product through.

* :mod:`~orchestrator.integrations.card` — the live card of a task (pure rendering);
* :mod:`~orchestrator.integrations.telegram` — the Bot API client and the outbox
  channel that keeps the card and sends alerts;
* :mod:`~orchestrator.integrations.telegram_webhook` — the card's buttons coming back.

:func:`build_notifier`, :func:`build_outbox_notifier` and :func:`build_delivery` are the
composition helpers the CLI and ``orch serve`` use: the console, plus through the outbox
the Telegram card (a bot token and a chat set), tracker write-back (a tracker set) and
the pull request and its commit status (a remote forge set).
See docs/integrations.md.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import httpx

from orchestrator.integrations.telegram import TelegramChannel, TelegramClient
from orchestrator.outbox.delivery import TELEGRAM, Channel, OutboxDelivery, OutboxNotifier
from orchestrator.outbox.forge_sync import FORGE, ForgeChannel, ForgeNotifier
from orchestrator.outbox.notifier import ConsoleNotifier, FanOutNotifier, Notifier
from orchestrator.settings import Settings
from orchestrator.store import Store
from orchestrator.trackers.writeback import TRACKER, TrackerChannel, TrackerNotifier

__all__ = ["build_delivery", "build_notifier", "build_outbox_notifier"]


def _any_remote_forge(settings: Settings) -> bool:
    """Whether some repository merges on Gitea or GitHub (pull requests, statuses)."""
    return settings.forge != "local" or any(
        config.forge not in (None, "local") for config in settings.repos.values()
    )


def build_outbox_notifier(settings: Settings, store: Store) -> Notifier | None:
    """What writes to the outbox: the Telegram card and alerts, tracker write-back (None
    when neither is configured)."""
    from orchestrator.wiring import Integrations  # noqa: PLC0415 - the composition root

    notifiers: list[Notifier] = []
    if settings.telegram_enabled:
        notifiers.append(OutboxNotifier(store, settings))
    if Integrations(store, settings).writeback_enabled():
        notifiers.append(TrackerNotifier(store, language=settings.language))
    if _any_remote_forge(settings):
        notifiers.append(ForgeNotifier(store, settings))
    if not notifiers:
        return None
    return notifiers[0] if len(notifiers) == 1 else FanOutNotifier(*notifiers)


def build_notifier(settings: Settings, store: Store) -> Notifier:
    """The console, plus the outbox (Telegram, tracker write-back) when configured."""
    console = ConsoleNotifier(settings.language)
    outboxed = build_outbox_notifier(settings, store)
    return console if outboxed is None else FanOutNotifier(console, outboxed)


def build_delivery(
    settings: Settings,
    store: Store,
    *,
    owner: str,
    is_alive: Callable[[str], bool] | None = None,
    http: httpx.Client | None = None,
) -> OutboxDelivery | None:
    """The outbox delivery of this process, or None when no channel is configured."""
    from orchestrator.wiring import Integrations, open_forge  # noqa: PLC0415 - the root

    channels: dict[str, Channel] = {}
    closers: list[Callable[[], None]] = []
    if settings.telegram_enabled:
        client = http or httpx.Client()
        if http is None:
            closers.append(client.close)
        channels[TELEGRAM] = TelegramChannel(
            TelegramClient(
                settings.telegram_bot_token,
                http=client,
                base_url=settings.telegram_api_base_url,
            ),
            store,
            settings,
        )
    integrations = Integrations(store, settings)
    if integrations.writeback_enabled():
        channels[TRACKER] = TrackerChannel(integrations.writeback_trackers())
        closers.append(integrations.close)
    if _any_remote_forge(settings):
        channels[FORGE] = ForgeChannel(
            store, partial(open_forge, settings), language=settings.language, settings=settings
        )
    if not channels:
        return None

    def close() -> None:
        for closer in closers:
            closer()

    return OutboxDelivery(store, settings, channels, owner=owner, is_alive=is_alive, on_close=close)
