"""The rules behind the camouflage management API, as plain functions over store rows.

* the persona catalogue, read once per process from the persona library;
* the arms of a band with the UCB1 index every replica agrees on (without pending pulls);
* a honeytoken as shown: its kind, a short prefix and the start of its digest, never the value;
* a decision's explanation, split into rule hits, request signals and behaviour;
* event filters by number or dotted name, allow-list clients as a client key or an IP address.

Every read names the caller's tenant (``feint.camouflage.store``), so another tenant's id is 404.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from feint.camouflage import schemas
from feint.camouflage.engine.bandit import ArmStats, publish, ucb1_indices
from feint.camouflage.engine.bands import PROFILES, Band, band_of
from feint.camouflage.engine.events import EVENT_NAMES, EventId
from feint.camouflage.engine.honeytokens import TokenKind
from feint.errors import BadRequest, NotFound, ValidationFailed
from feint.platform.web import RequestContext

# What of a honeytoken the API shows: its fixed prefix (``feint_``, ``AKIA``, ``ft``,
# ``postgresql``) and this many characters more, and this many hex digits of its SHA-256. With
# so little of the random part shown, the digest prefix matches thousands of values: it tells
# tokens apart, it cannot confirm a guess.
TOKEN_PUBLIC_PREFIX: Final[dict[str, str]] = {
    TokenKind.API_KEY.value: "feint_",
    TokenKind.AWS_ACCESS_KEY_ID.value: "AKIA",
    TokenKind.AWS_SECRET_ACCESS_KEY.value: "",
    TokenKind.DATABASE_URL.value: "postgresql",
    TokenKind.DATABASE_PASSWORD.value: "ft",
}
TOKEN_RANDOM_CHARS_SHOWN: Final = 4
TOKEN_DIGEST_HEX_SHOWN: Final = 12
SESSION_EVENTS_MAX: Final = 100
SESSION_TOKENS_MAX: Final = 50
RULE_SIGNALS: Final = frozenset({"rule", "response-rule"})
REQUEST_SIGNALS: Final = frozenset({"problem", "user-agent"})
CLIENT_KEY: Final = re.compile(r"^[0-9a-f]{32}$")
_STATUS: Final = re.compile(r"^HTTP/\d\.\d (\d{3})")
EVENT_NUMBERS: Final = {name: int(event) for event, name in EVENT_NAMES.items()}


def tenant_of(ctx: RequestContext) -> uuid.UUID:
    """The caller's tenant; an operator key names one with the Feint-Tenant header."""
    if ctx.tenant_id is None:
        raise BadRequest("an operator key names the tenant it acts for in the Feint-Tenant header")
    return ctx.tenant_id


# --- personas -------------------------------------------------------------------------------


class PersonaNotFound(NotFound):
    slug, title = "persona-not-found", "Persona not found"

    def __init__(self, *, name: str, known: Sequence[str]) -> None:
        super().__init__(f"no persona {name!r}; the library has {', '.join(known)}", known=list(known))


def _statuses(persona: Any) -> list[int]:
    found = {int(m.group(1)) for r in persona.responses.values() if r.status and (m := _STATUS.match(r.status))}
    return sorted(found)


def _source(source: Mapping[str, Any]) -> schemas.SourceOut:
    def text(key: str) -> str | None:
        value = source.get(key)
        return None if value is None else str(value)

    probes = source.get("probes")
    return schemas.SourceOut(
        server=text("server"),
        version=text("version"),
        configuration=text("configuration"),
        recorded_at=text("recorded_at"),
        recorded_with=text("recorded_with"),
        probes=probes if isinstance(probes, int) else None,
    )


@functools.cache
def personas() -> tuple[schemas.PersonaOut, ...]:
    """The persona library as the gateway plays it (read once: the library ships with the package)."""
    from feint.camouflage.decoy import persona as library

    loaded = [library.load(name) for name in library.available()]
    return tuple(
        schemas.PersonaOut(
            name=p.name,
            family=p.family,
            description=p.description,
            server=p.server,
            version=p.version,
            version_configurable="{version}" in p.server_format,
            extends=p.extends,
            variants=sorted(q.name for q in loaded if q.extends == p.name),
            recorded_from=_source(p.source),
            statuses=_statuses(p),
            responses=len(p.responses),
            rules=len(p.rules),
            site_files=len(p.site),
            arms=[f"{p.name}/{profile.name}" for profile in PROFILES],
        )
        for p in loaded
    )


def persona(name: str) -> schemas.PersonaOut:
    for found in personas():
        if found.name == name:
            return found
    raise PersonaNotFound(name=name, known=[p.name for p in personas()])


# --- arms -----------------------------------------------------------------------------------


def arms(rows: Sequence[dict[str, Any]], *, tenant_id: uuid.UUID) -> list[schemas.ArmOut]:
    """The arms with their UCB1 index among their band's active arms; the Prometheus gauges are
    set from the same rows, so /metrics and the API agree."""
    scores: dict[tuple[str, str], float | None] = {}
    for band in Band:
        active = [r for r in rows if r["band"] == band.value and r["active"]]
        indices = ucb1_indices([int(r["pulls"]) for r in active], [float(r["reward_sum"]) for r in active])
        scores.update({(band.value, r["arm"]): index for r, index in zip(active, indices, strict=True)})
    publish(
        tenant_id,
        [ArmStats(r["arm"], Band(r["band"]), int(r["pulls"]), float(r["reward_sum"]), bool(r["active"])) for r in rows],
    )
    return [schemas.ArmOut.of(r, ucb=scores.get((r["band"], r["arm"]))) for r in rows]


# --- honeytokens ----------------------------------------------------------------------------


def token_prefix(kind: str, hint: str) -> str:
    """What of a token the API shows: its fixed prefix and `TOKEN_RANDOM_CHARS_SHOWN` more."""
    return hint[: len(TOKEN_PUBLIC_PREFIX.get(kind, "")) + TOKEN_RANDOM_CHARS_SHOWN]


def honeytoken(row: dict[str, Any]) -> schemas.HoneytokenOut:
    return schemas.HoneytokenOut(
        kind=row["kind"],
        prefix=token_prefix(row["kind"], row["hint"]),
        digest_prefix=str(row["digest"])[:TOKEN_DIGEST_HEX_SHOWN],
        session_id=row["session_id"],
        created_at=row["created_at"],
        uses=int(row["uses"]),
        used=int(row["uses"]) > 0,
        last_used_at=row["last_used_at"],
    )


# --- decisions ------------------------------------------------------------------------------


def decision(row: dict[str, Any]) -> schemas.DecisionOut:
    """A logged decision's explanation, its reasons grouped by kind of evidence."""
    reasons = [schemas.ReasonOut(**r) for r in (row["explanation"] or [])]
    return schemas.DecisionOut(
        id=row["id"],
        decided_at=row["decided_at"],
        threat=int(row["threat"]),
        band=band_of(int(row["threat"])),
        action=row["action"],
        client_key=row["client_key"],
        fingerprint=row["fingerprint"],
        request=schemas.RequestOut(
            c_ip=row["c_ip"],
            cs_method=row["cs_method"],
            cs_uri_stem=row["cs_uri_stem"],
            cs_uri_query=row["cs_uri_query"],
            cs_user_agent=row["cs_user_agent"],
            cs_host=row["cs_host"],
            sc_status=row["sc_status"],
        ),
        rules=list(row["rules"] or []),
        rule_hits=[r for r in reasons if r.signal in RULE_SIGNALS],
        request_signals=[r for r in reasons if r.signal in REQUEST_SIGNALS],
        behaviour=[r for r in reasons if r.signal not in RULE_SIGNALS | REQUEST_SIGNALS],
        explanation=reasons,
        ruleset_version=row["ruleset_version"],
        rules_tag=row["rules_tag"],
        rollout_id=row["rollout_id"],
        canary=bool(row["canary"]),
        eval_latency_us=float(row["eval_latency_us"]),
        session_id=row["session_id"],
        persona=row["persona"],
        arm=row["arm"],
    )


# --- filters --------------------------------------------------------------------------------


def event_number(value: str | None) -> int | None:
    """An event filter, ``8005`` or ``feint.honeytoken.used``, as its number; 422 naming ``query.event``."""
    if value is None:
        return None
    if value.isdigit() and int(value) in {int(e) for e in EventId}:
        return int(value)
    if value in EVENT_NUMBERS:
        return EVENT_NUMBERS[value]
    raise ValidationFailed(
        f"no event {value[:64]!r}",
        errors=[{"field": "query.event", "problem": "an event id (8001-8011) or its dotted name, see docs"}],
    )


def check_window(since: datetime | None, until: datetime | None) -> None:
    """A time filter [since, until) that is not empty by construction; 422 naming ``query.until``."""
    if since is not None and until is not None and since >= until:
        raise ValidationFailed(
            "since must be before until", errors=[{"field": "query.until", "problem": "after since"}]
        )


def allow_client(value: str) -> str:
    """An allow-list client as stored: a client key (32 lower-case hex) or a normalised IP address
    (as PostgreSQL's ``host()`` prints it, which the labels compare with)."""
    if CLIENT_KEY.match(value):
        return value
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValidationFailed(
            f"{value[:64]!r} is neither a client key nor an IP address",
            errors=[{"field": "path.client", "problem": "a client key (32 hex digits) or an IP address"}],
        ) from None


class ClientNotAllowed(NotFound):
    slug, title = "client-not-allowed", "Client not on the allow-list"

    def __init__(self, *, client: str) -> None:
        super().__init__(f"{client} is not on the allow-list")


class SessionNotFound(NotFound):
    slug, title = "session-not-found", "Session not found"

    def __init__(self, *, session_id: uuid.UUID) -> None:
        super().__init__(f"no session {session_id}")


class DecisionNotFound(NotFound):
    slug, title = "decision-not-found", "Decision not found"

    def __init__(self, *, decision_id: uuid.UUID) -> None:
        super().__init__(f"no decision {decision_id}")
