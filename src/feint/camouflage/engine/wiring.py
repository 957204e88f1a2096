"""Builds the engine's objects for one process from its `Platform`, once each.

``await build_book(platform, tenant_id=…, personas=…)`` is what the gateway calls: a `SessionBook`
with the bandit on PostgreSQL (through Redis when ``FEINT_REDIS_URL`` is set), the events going
to the log, Prometheus, the database and ``FEINT_ALERT_WEBHOOK_URL``, and the honeytokens under
a secret derived from the master key. `install_key_hook` makes every service of the process
recognise a honeytoken API key presented to it (called by ``platform.runtime.build``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Final

import structlog

from feint.camouflage.decoy.contract import Responder
from feint.camouflage.engine.bandit import Bandit, BanditStore
from feint.camouflage.engine.events import EventSink
from feint.camouflage.engine.honeytokens import Honeytokens, HoneytokenWatch, TokenKind
from feint.camouflage.engine.sessions import SessionBook
from feint.camouflage.store import CamouflageStore, PostgresBanditStore
from feint.platform.runtime import Platform
from feint.platform.secrets import derive

HONEYTOKEN_PURPOSE: Final = "honeytoken"
_EVENTS: Final = "camouflage.events"
_WATCH: Final = "camouflage.watch"
_BANDIT_STORE: Final = "camouflage.bandit_store"

log = structlog.get_logger(component="feint.camouflage")


def honeytokens_for(platform: Platform) -> Honeytokens:
    return Honeytokens(derive(platform.master_key, HONEYTOKEN_PURPOSE))


def events_for(platform: Platform) -> EventSink:
    """The process's one event sink (started by the first async user)."""
    sink = platform.extras.get(_EVENTS)
    if sink is None:
        sink = platform.extras[_EVENTS] = EventSink(
            store=CamouflageStore(platform.db), webhook_url=platform.settings.alert_webhook_url
        )
    if not isinstance(sink, EventSink):  # pragma: no cover - extras is keyed by this module only
        raise TypeError("platform.extras camouflage.events is not an EventSink")
    return sink


def watch_for(platform: Platform) -> HoneytokenWatch:
    watch = platform.extras.get(_WATCH)
    if watch is None:
        watch = platform.extras[_WATCH] = HoneytokenWatch(
            honeytokens=honeytokens_for(platform), store=CamouflageStore(platform.db), events=events_for(platform)
        )
    if not isinstance(watch, HoneytokenWatch):  # pragma: no cover
        raise TypeError("platform.extras camouflage.watch is not a HoneytokenWatch")
    return watch


def bandit_store_for(platform: Platform) -> BanditStore:
    store = platform.extras.get(_BANDIT_STORE)
    if store is None:
        durable = PostgresBanditStore(platform.db)
        if platform.redis is not None:
            from feint.camouflage.engine.shared import SharedBanditStore

            store = SharedBanditStore(platform.redis, durable)
        else:
            store = durable
        platform.extras[_BANDIT_STORE] = store
    return store


def build_book(platform: Platform, *, tenant_id: uuid.UUID, personas: Mapping[str, Responder]) -> SessionBook:
    """The gateway's session book for ``tenant_id``; `SessionBook.start` runs its background work."""
    settings = platform.settings
    bandit = Bandit(
        bandit_store_for(platform),
        personas=tuple(sorted(personas)),
        retire_ratio=settings.camouflage_arm_retire_ratio,
    )
    return SessionBook(
        tenant_id=tenant_id,
        bandit=bandit,
        events=events_for(platform),
        personas=personas,
        watch=watch_for(platform),
        store=CamouflageStore(platform.db),
        idle_seconds=settings.camouflage_session_idle_seconds,
    )


def install_key_hook(platform: Platform) -> None:
    """On a failed API key, any service of this process checks whether it is a honeytoken; only
    failures pay (one HMAC; a database lookup only when the tag verifies)."""
    honeytokens = honeytokens_for(platform)

    async def hook(key: str, *, service: str, path: str, src_host: str) -> None:
        if honeytokens.kind_of(key) is not TokenKind.API_KEY:
            return
        events = events_for(platform)
        events.start()
        await watch_for(platform).failed_key(key, service=service, path=path, src_host=src_host)

    platform.keys.failure_hooks.append(hook)
