"""The camouflage management API under /v1: personas, arms, sessions, events, honeytokens, the
threat explanation of a logged decision, and the allow-list of known-good clients. Each view
parses, calls the store or one service function, and shapes the answer.

Scopes: reads need ``read``; changing the allow-list needs ``write`` (like shadow's feedback, it
is an analyst's verdict on clients: it changes the labels, not what the gateway does). Every
query names the caller's tenant: another tenant's session or decision is 404.

Listings are newest first and paged by an opaque ``cursor`` (``next_cursor`` of the previous
page). Personas, arms and decisions carry an ETag; ``If-None-Match`` with it answers 304.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from feint.camouflage import schemas, service, store
from feint.camouflage.engine.bands import Band
from feint.errors import ValidationFailed
from feint.platform.reads import (
    NOT_MODIFIED_RESPONSE,
    Instant,
    conditional,
    decode_cursor,
    decode_keyset,
    encode_cursor,
    encode_keyset,
)
from feint.platform.web import RequestContext, scope

router = APIRouter(prefix="/v1", tags=["camouflage"])
PAGE_LIMIT_DEFAULT: Final = 100
NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9._-]{0,62}$"
ARM_PATTERN: Final = r"^[a-z0-9._-]{1,63}/[a-z0-9._-]{1,63}$"
CLIENT_CHARS_MAX: Final = 45  # the longest IPv6 text (with an embedded IPv4 address)
CLIENT_PATTERN: Final = r"^(?:[0-9a-f]{32}|[0-9A-Fa-f:.]{2,45})$"  # then checked as an address
CURSOR_CHARS_MAX: Final = 512

Reader = Annotated[RequestContext, Depends(scope("read"))]
Writer = Annotated[RequestContext, Depends(scope("write"))]
Limit = Annotated[int, Query(ge=1, le=store.LIST_LIMIT_MAX, description="Rows per page.")]
Cursor = Annotated[str | None, Query(max_length=CURSOR_CHARS_MAX, description="`next_cursor` of the previous page.")]
Since = Annotated[Instant | None, Query(description="From this instant (RFC 3339, inclusive).")]
Until = Annotated[Instant | None, Query(description="Before this instant (RFC 3339, exclusive).")]
Client = Annotated[
    str,
    Path(
        min_length=2,
        max_length=CLIENT_CHARS_MAX,
        pattern=CLIENT_PATTERN,
        description="A client key (32 hex digits) or an IP address.",
    ),
]
_NOT_FOUND: Final[dict[int | str, dict[str, Any]]] = {404: {"description": "No such id for this tenant."}}


def _json(model: Any) -> bytes:
    return bytes(model.model_dump_json().encode())


def _uuid_keyset(cursor: str | None) -> tuple[Any, uuid.UUID] | None:
    found = decode_keyset(cursor)
    if found is None:
        return None
    try:
        return found[0], uuid.UUID(found[1])
    except ValueError:
        raise _bad_cursor() from None


def _bad_cursor() -> ValidationFailed:
    return ValidationFailed("cursor is not one this API gave", errors=[{"field": "query.cursor", "problem": "invalid"}])


def _page(rows: list[dict[str, Any]], limit: int, cursor_of: Any) -> tuple[list[dict[str, Any]], str | None]:
    """The rows of one page and the cursor of the next (the store reads one row more than asked)."""
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], cursor_of(rows[limit - 1])


# --- personas and arms ------------------------------------------------------------------------


@router.get(
    "/personas",
    response_model=schemas.PersonaList,
    responses=NOT_MODIFIED_RESPONSE,
    summary="The decoy persona library: server, version, where it was recorded, statuses covered, arms.",
)
async def list_personas(request: Request, ctx: Reader) -> Response:
    # The library ships with Feint: the same for every tenant, so an operator needs no Feint-Tenant.
    return conditional(request, _json(schemas.PersonaList(items=list(service.personas()))))


@router.get(
    "/personas/{name}",
    response_model=schemas.PersonaOut,
    responses={**NOT_MODIFIED_RESPONSE, **_NOT_FOUND},
    summary="One persona of the library.",
)
async def get_persona(
    request: Request, ctx: Reader, name: Annotated[str, Path(pattern=NAME_PATTERN, description="Persona name.")]
) -> Response:
    return conditional(request, _json(service.persona(name)))


@router.get(
    "/arms",
    response_model=schemas.ArmList,
    responses=NOT_MODIFIED_RESPONSE,
    summary="Arms (persona x profile) per band with live statistics: pulls, effectiveness, UCB1 index, active.",
)
async def list_arms(
    request: Request, ctx: Reader, band: Annotated[Band | None, Query(description="Only this band.")] = None
) -> Response:
    tenant_id = service.tenant_of(ctx)
    async with ctx.platform.db.connection() as conn:
        rows = await store.list_arms(conn, tenant_id=tenant_id, band=None if band is None else band.value)
    return conditional(request, _json(schemas.ArmList(items=service.arms(rows, tenant_id=tenant_id))))


# --- sessions, events, honeytokens ------------------------------------------------------------


@router.get("/sessions", summary="Decoy sessions, newest first, by band, persona, arm, state and start time.")
async def list_sessions(
    ctx: Reader,
    band: Annotated[Band | None, Query(description="Only sessions of this band.")] = None,
    persona: Annotated[str | None, Query(pattern=NAME_PATTERN, description="Only this persona's sessions.")] = None,
    arm: Annotated[str | None, Query(pattern=ARM_PATTERN, description="Only this arm (`persona/profile`).")] = None,
    ended: Annotated[bool | None, Query(description="true: ended sessions; false: live ones.")] = None,
    since: Since = None,
    until: Until = None,
    cursor: Cursor = None,
    limit: Limit = PAGE_LIMIT_DEFAULT,
) -> schemas.SessionList:
    service.check_window(since, until)
    tenant_id = service.tenant_of(ctx)
    async with ctx.platform.db.connection() as conn:
        rows = await store.list_sessions(
            conn,
            tenant_id=tenant_id,
            band=None if band is None else band.value,
            persona=persona,
            arm=arm,
            ended=ended,
            since=since,
            until=until,
            after=_uuid_keyset(cursor),
            limit=limit,
        )
    page, next_cursor = _page(rows, limit, lambda r: encode_keyset(r["started_at"], str(r["id"])))
    return schemas.SessionList(items=[schemas.SessionOut.of(r) for r in page], next_cursor=next_cursor)


@router.get(
    "/sessions/{session_id}",
    responses=_NOT_FOUND,
    summary="One session with its most recent events and the honeytokens planted in it.",
)
async def get_session(session_id: uuid.UUID, ctx: Reader) -> schemas.SessionDetailOut:
    tenant_id = service.tenant_of(ctx)
    async with ctx.platform.db.connection() as conn:
        row = await store.get_session(conn, tenant_id=tenant_id, session_id=session_id)
        if row is None:
            raise service.SessionNotFound(session_id=session_id)
        events = await store.list_events(
            conn, tenant_id=tenant_id, session_id=session_id, limit=service.SESSION_EVENTS_MAX
        )
        tokens = await store.list_honeytokens(
            conn, tenant_id=tenant_id, session_id=session_id, limit=service.SESSION_TOKENS_MAX
        )
    return schemas.SessionDetailOut(
        **schemas.SessionOut.of(row).model_dump(),
        events=[schemas.EventOut.of(e) for e in events[: service.SESSION_EVENTS_MAX]],
        events_more=len(events) > service.SESSION_EVENTS_MAX,
        honeytokens=[service.honeytoken(t) for t in tokens[: service.SESSION_TOKENS_MAX]],
    )


@router.get("/events", summary="Events (ids in docs/camouflage.md), newest first, by event, session and time.")
async def list_events(
    ctx: Reader,
    event: Annotated[
        str | None, Query(max_length=64, description="An event id (`8005`) or its name (`feint.honeytoken.used`).")
    ] = None,
    session_id: Annotated[uuid.UUID | None, Query(description="Only this session's events.")] = None,
    since: Since = None,
    until: Until = None,
    cursor: Cursor = None,
    limit: Limit = PAGE_LIMIT_DEFAULT,
) -> schemas.EventList:
    logtype = service.event_number(event)
    service.check_window(since, until)
    tenant_id = service.tenant_of(ctx)
    async with ctx.platform.db.connection() as conn:
        rows = await store.list_events(
            conn,
            tenant_id=tenant_id,
            session_id=session_id,
            logtype=logtype,
            since=since,
            until=until,
            after=_uuid_keyset(cursor),
            limit=limit,
        )
    page, next_cursor = _page(rows, limit, lambda r: encode_keyset(r["at"], str(r["id"])))
    return schemas.EventList(items=[schemas.EventOut.of(r) for r in page], next_cursor=next_cursor)


def _token_keyset(cursor: str | None) -> tuple[Any, uuid.UUID, str] | None:
    found = decode_keyset(cursor)
    if found is None:
        return None
    session, _, kind = found[1].partition("/")
    try:
        return found[0], uuid.UUID(session), kind
    except ValueError:
        raise _bad_cursor() from None


@router.get(
    "/honeytokens",
    summary="Honeytokens planted, newest first, used or not; never the value (a prefix and a digest prefix).",
)
async def list_honeytokens(
    ctx: Reader,
    session_id: Annotated[uuid.UUID | None, Query(description="Only this session's tokens.")] = None,
    used: Annotated[bool | None, Query(description="true: tokens that came back; false: never used.")] = None,
    cursor: Cursor = None,
    limit: Limit = PAGE_LIMIT_DEFAULT,
) -> schemas.HoneytokenList:
    tenant_id = service.tenant_of(ctx)
    async with ctx.platform.db.connection() as conn:
        rows = await store.list_honeytokens(
            conn, tenant_id=tenant_id, session_id=session_id, used=used, after=_token_keyset(cursor), limit=limit
        )
    page, next_cursor = _page(rows, limit, lambda r: encode_keyset(r["created_at"], f"{r['session_id']}/{r['kind']}"))
    return schemas.HoneytokenList(items=[service.honeytoken(r) for r in page], next_cursor=next_cursor)


# --- decisions --------------------------------------------------------------------------------


@router.get("/decisions", summary="Logged decisions, newest first, by session, action, threat and time.")
async def list_decisions(
    ctx: Reader,
    session_id: Annotated[uuid.UUID | None, Query(description="Only this session's decisions.")] = None,
    action: Annotated[schemas.Action | None, Query(description="Only this action.")] = None,
    threat_min: Annotated[int | None, Query(ge=0, le=10, description="Only at this threat level or above.")] = None,
    since: Since = None,
    until: Until = None,
    cursor: Cursor = None,
    limit: Limit = PAGE_LIMIT_DEFAULT,
) -> schemas.DecisionList:
    service.check_window(since, until)
    tenant_id = service.tenant_of(ctx)
    async with ctx.platform.db.connection() as conn:
        rows = await store.list_decisions(
            conn,
            tenant_id=tenant_id,
            session_id=session_id,
            action=action,
            threat_min=threat_min,
            since=since,
            until=until,
            after=_uuid_keyset(cursor),
            limit=limit,
        )
    page, next_cursor = _page(rows, limit, lambda r: encode_keyset(r["decided_at"], str(r["id"])))
    return schemas.DecisionList(items=[schemas.DecisionSummaryOut.of(r) for r in page], next_cursor=next_cursor)


@router.get(
    "/decisions/{decision_id}",
    response_model=schemas.DecisionOut,
    responses={**NOT_MODIFIED_RESPONSE, **_NOT_FOUND},
    summary="The threat explanation of a logged decision: level, rule hits, behaviour, persona, arm, session.",
)
async def get_decision(request: Request, decision_id: uuid.UUID, ctx: Reader) -> Response:
    tenant_id = service.tenant_of(ctx)
    async with ctx.platform.db.connection() as conn:
        row = await store.get_decision(conn, tenant_id=tenant_id, decision_id=decision_id)
    if row is None:
        raise service.DecisionNotFound(decision_id=decision_id)
    return conditional(request, _json(service.decision(row)))


# --- the allow-list -----------------------------------------------------------------------------


@router.get("/allowlist", summary="Known-good clients (their decisions are labelled benign), by client.")
async def list_allowlist(ctx: Reader, cursor: Cursor = None, limit: Limit = PAGE_LIMIT_DEFAULT) -> schemas.AllowList:
    tenant_id = service.tenant_of(ctx)
    after = None if cursor is None else decode_cursor(cursor)
    async with ctx.platform.db.connection() as conn:
        rows = await store.list_allowed(conn, tenant_id=tenant_id, after=after, limit=limit)
    page, next_cursor = _page(rows, limit, lambda r: encode_cursor(r["client"]))
    return schemas.AllowList(items=[schemas.AllowOut.of(r) for r in page], next_cursor=next_cursor)


@router.get("/allowlist/{client}", responses=_NOT_FOUND, summary="One allow-list entry.")
async def get_allowed(client: Client, ctx: Reader) -> schemas.AllowOut:
    tenant_id = service.tenant_of(ctx)
    name = service.allow_client(client)
    async with ctx.platform.db.connection() as conn:
        row = await store.allowed(conn, tenant_id=tenant_id, client=name)
    if row is None:
        raise service.ClientNotAllowed(client=name)
    return schemas.AllowOut.of(row)


@router.put(
    "/allowlist/{client}",
    status_code=201,
    response_model=schemas.AllowOut,
    responses={200: {"model": schemas.AllowOut, "description": "The client was listed already: its note replaced."}},
    summary="Put a client (client key or IP address) on the allow-list, or replace its note.",
)
async def put_allowed(client: Client, body: schemas.AllowIn, ctx: Writer) -> Response:
    tenant_id = service.tenant_of(ctx)
    name = service.allow_client(client)
    async with ctx.platform.db.transaction() as conn:
        row = await store.allow(conn, tenant_id=tenant_id, client=name, note=body.note)
    return Response(
        content=_json(schemas.AllowOut.of(row)),
        status_code=201 if row["created"] else 200,
        media_type="application/json",
    )


@router.delete(
    "/allowlist/{client}",
    status_code=204,
    response_class=Response,
    responses=_NOT_FOUND,
    summary="Take a client off the allow-list.",
)
async def delete_allowed(client: Client, ctx: Writer) -> Response:
    tenant_id = service.tenant_of(ctx)
    name = service.allow_client(client)
    async with ctx.platform.db.connection() as conn:
        removed = await store.disallow(conn, tenant_id=tenant_id, client=name)
    if not removed:
        raise service.ClientNotAllowed(client=name)
    return Response(status_code=204)
