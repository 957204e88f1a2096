"""Labels for the rule service from what the gateway saw: ``GET /v1/labels`` and
``feint camouflage labels``.

Both write exactly the file ``feint shadow evaluate --labels`` reads (``feint.shadow.labels``): a
header ``id,label`` then one line per decision id (the JSON-lines ``id`` of the decision log, so
the file joins with ``FEINT_GATEWAY_DECISION_LOG`` or a dataset ingested from it), 1 for a bot and
0 for a known-good client. The evidence (engagement with the decoys, honeytokens, the allow-list
of ``camouflage_allowlist`` and ``FEINT_CAMOUFLAGE_ALLOW_CLIENTS``, analyst verdicts) is in
``evidence.py``, the definition the canary guards read too. A window is ``[since, until)``;
``since`` is an instant (ISO 8601) or a duration back from now (``90s``, ``30m``, ``24h``, ``7d``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel

from feint.camouflage import store
from feint.camouflage.evidence import allowed_clients
from feint.errors import BadRequest, ValidationFailed
from feint.platform.db import Database
from feint.platform.web import RequestContext, scope
from feint.settings import Settings

WINDOW_DAYS_MAX: Final = 366
HEADER: Final = "id,label\n"
CSV_MEDIA_TYPE: Final = "text/csv; charset=utf-8"
_DURATION: Final = re.compile(r"^(\d{1,7})([smhd])$")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}


class LabelsTooMany(BadRequest):
    slug, status, title = "labels-too-many", 422, "Too many labels"

    def __init__(self, *, limit: int) -> None:
        super().__init__(
            f"the window holds more than {limit} labelled decisions; narrow it with since/until",
            errors=[{"field": "query.since", "problem": f"window with more than {limit} labels"}],
        )


def instant(text: str, *, field: str, now: datetime) -> datetime:
    """``text`` as an aware instant: ISO 8601 (UTC when it names no offset) or a duration before ``now``."""
    value = text.strip()
    if match := _DURATION.match(value):
        return now - timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationFailed(
            f"{field} must be an ISO 8601 instant or a duration such as 30m, 24h or 7d, not {value[:64]!r}",
            errors=[{"field": field, "problem": "not an instant or a duration"}],
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Window:
    since: datetime
    until: datetime


def window(since: str, until: str | None, *, now: datetime, field_prefix: str = "") -> Window:
    """The window ``[since, until)`` (``until`` defaults to now); 422 naming the field when it is empty or too long."""
    start = instant(since, field=f"{field_prefix}since", now=now)
    end = now if until is None else instant(until, field=f"{field_prefix}until", now=now)
    if end <= start:
        raise ValidationFailed(
            f"until ({end.isoformat()}) must be after since ({start.isoformat()})",
            errors=[{"field": f"{field_prefix}until", "problem": "not after since"}],
        )
    if end - start > timedelta(days=WINDOW_DAYS_MAX):
        raise ValidationFailed(
            f"a window is at most {WINDOW_DAYS_MAX} days",
            errors=[{"field": f"{field_prefix}since", "problem": f"window longer than {WINDOW_DAYS_MAX} days"}],
        )
    return Window(start, end)


async def collect(
    db: Database, *, tenant_id: uuid.UUID, span: Window, settings: Settings, limit: int = store.LABELS_ROWS_MAX
) -> list[tuple[str, int]]:
    """The labels of the tenant's decisions in ``span``; `LabelsTooMany` beyond ``limit``."""
    async with db.connection() as conn:
        rows = await store.labels(
            conn,
            tenant_id=tenant_id,
            since=span.since,
            until=span.until,
            allowed=allowed_clients(settings),
            probes_min=settings.camouflage_probe_requests,
            limit=limit + 1,
        )
    if len(rows) > limit:
        raise LabelsTooMany(limit=limit)
    return rows


def to_csv(rows: Sequence[tuple[str, int]]) -> str:
    """The labels file: ``id,label`` then one line per id (ids are UUIDs: nothing to quote)."""
    return HEADER + "".join(f"{request_id},{label}\n" for request_id, label in rows)


# --- the API ------------------------------------------------------------------------------

router = APIRouter(prefix="/v1", tags=["camouflage"])


class LabelOut(BaseModel):
    id: str
    label: Literal[0, 1]


class LabelsOut(BaseModel):
    since: datetime
    until: datetime
    bots: int
    benign: int
    items: list[LabelOut]


@router.get(
    "/labels",
    summary="Labels (id,label) of the gateway's decisions in a window, for `feint shadow evaluate --labels`.",
    response_model=LabelsOut,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
async def get_labels(
    since: Annotated[
        str, Query(min_length=1, max_length=64, description="ISO 8601 instant, or a duration back from now: 24h, 7d.")
    ],
    until: Annotated[str | None, Query(min_length=1, max_length=64, description="End (excluded); default now.")] = None,
    format: Annotated[
        Literal["csv", "json"], Query(description="csv: the labels file itself; json: the same with counts.")
    ] = "csv",
    ctx: RequestContext = Depends(scope("read")),
) -> Any:
    if ctx.tenant_id is None:
        raise BadRequest("an operator key names the tenant it acts for in the Feint-Tenant header")
    span = window(since, until, now=datetime.now(UTC), field_prefix="query.")
    rows = await collect(ctx.platform.db, tenant_id=ctx.tenant_id, span=span, settings=ctx.platform.settings)
    if format == "csv":
        return Response(content=to_csv(rows), media_type=CSV_MEDIA_TYPE)
    bots = sum(label for _, label in rows)
    return LabelsOut(
        since=span.since,
        until=span.until,
        bots=bots,
        benign=len(rows) - bots,
        items=[LabelOut(id=request_id, label=1 if label else 0) for request_id, label in rows],
    )
