"""API models of the camouflage management API: what each route answers (and the one input, an
allow-list entry). Built from store rows by the ``of`` constructors; the OpenAPI document is
generated from them. A honeytoken is never shown whole: see `HoneytokenOut`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from feint.camouflage.engine.bands import Band

NOTE_CHARS_MAX: Final = 500
Action = Literal["allow", "divert", "refuse", "error"]


class SourceOut(BaseModel):
    """Where a persona's answers were recorded (``source`` of its persona.yaml)."""

    server: str | None = Field(None, description="The Server header of the recorded server.")
    version: str | None = None
    configuration: str | None = Field(None, description="How the recorded server was configured.")
    recorded_at: str | None = None
    recorded_with: str | None = None
    probes: int | None = Field(None, description="Probes sent while recording.")


class PersonaOut(BaseModel):
    """One decoy persona of the library, and the arms the bandit plays it in."""

    name: str
    family: str = Field(description="nginx, apache, …")
    description: str
    server: str = Field(description="The Server header it answers with.")
    version: str = Field(description="The version it announces.")
    version_configurable: bool = Field(description="Whether another version can be announced (`--version`).")
    extends: str | None = Field(None, description="The persona this one is a variant of.")
    variants: list[str] = Field(description="Personas that extend this one (other versions or settings).")
    recorded_from: SourceOut
    statuses: list[int] = Field(description="Every status code its recorded answers cover.")
    responses: int = Field(description="Distinct recorded answers.")
    rules: int = Field(description="Situations it answers by a rule.")
    site_files: int = Field(description="Files of its site tree (some carry honeytokens).")
    arms: list[str] = Field(description="The arms (`persona/profile`) the bandit plays it in, every band.")


class PersonaList(BaseModel):
    items: list[PersonaOut]


class ArmOut(BaseModel):
    """One arm of one band with its live statistics (the figures of `feint_camouflage_arm_*`)."""

    band: Band
    arm: str = Field(description="`persona/profile`.")
    persona: str
    profile: str
    pulls: int = Field(description="Ended sessions played with this arm.")
    reward_sum: float
    effectiveness: float = Field(description="Mean reward per ended session, 0-1 (0 before the first).")
    ucb: float | None = Field(
        description="UCB1 index among the band's active arms (null: retired, or untried and played first)."
    )
    active: bool
    retired_at: datetime | None
    updated_at: datetime

    @classmethod
    def of(cls, row: dict[str, Any], *, ucb: float | None) -> ArmOut:
        persona, _, profile = str(row["arm"]).partition("/")
        return cls(
            band=Band(row["band"]),
            arm=row["arm"],
            persona=persona,
            profile=profile,
            pulls=int(row["pulls"]),
            reward_sum=float(row["reward_sum"]),
            effectiveness=float(row["effectiveness"]),
            ucb=ucb,
            active=bool(row["active"]),
            retired_at=row["retired_at"],
            updated_at=row["updated_at"],
        )


class ArmList(BaseModel):
    items: list[ArmOut]


class SessionOut(BaseModel):
    """A decoy session. Engagement figures are written when the session ends (null ``ended_at``:
    still live, counts not yet recorded)."""

    id: uuid.UUID
    client_key: str
    src_host: str
    threat: int = Field(description="The threat level that started it.")
    band: Band
    arm: str
    persona: str
    profile: str
    started_at: datetime
    last_seen_at: datetime
    ended_at: datetime | None
    requests: int
    tokens_taken: int = Field(description="Honeytokens served to the client in decoy answers.")
    engaged_seconds: float
    reward: float | None = Field(description="The bandit's reward for it, 0-1 (null while live).")
    paths: list[str] = Field(description="Distinct decoy paths it asked for (the first 64).")

    @classmethod
    def of(cls, row: dict[str, Any]) -> SessionOut:
        persona, _, profile = str(row["arm"]).partition("/")
        return cls(
            id=row["id"],
            client_key=row["client_key"],
            src_host=row["src_host"],
            threat=int(row["threat"]),
            band=Band(row["band"]),
            arm=row["arm"],
            persona=persona,
            profile=profile,
            started_at=row["started_at"],
            last_seen_at=row["last_seen_at"],
            ended_at=row["ended_at"],
            requests=int(row["requests"]),
            tokens_taken=int(row["tokens_taken"]),
            engaged_seconds=float(row["engaged_seconds"]),
            reward=None if row["reward"] is None else float(row["reward"]),
            paths=list(row["paths"] or []),
        )


class SessionList(BaseModel):
    items: list[SessionOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")


class EventOut(BaseModel):
    """One event (ids in docs/camouflage.md)."""

    id: uuid.UUID
    logtype: int = Field(description="Numeric event id, e.g. 8005.")
    eventid: str = Field(description="Dotted name, e.g. `feint.honeytoken.used`.")
    at: datetime
    session_id: uuid.UUID | None
    src_host: str
    client_key: str
    threat: int | None
    details: dict[str, Any]

    @classmethod
    def of(cls, row: dict[str, Any]) -> EventOut:
        return cls(
            id=row["id"],
            logtype=int(row["logtype"]),
            eventid=row["eventid"],
            at=row["at"],
            session_id=row["session_id"],
            src_host=row["src_host"],
            client_key=row["client_key"],
            threat=row["threat"],
            details=dict(row["details"] or {}),
        )


class EventList(BaseModel):
    items: list[EventOut]
    next_cursor: str | None


class HoneytokenOut(BaseModel):
    """A fake credential planted in a session. Honeytokens are credentials: the value is never
    shown, only its kind, its first characters and the start of its SHA-256 (too little of either
    to rebuild or confirm the value)."""

    kind: str
    prefix: str = Field(description="The first characters of the value (its fixed prefix and a few more).")
    digest_prefix: str = Field(description="The first hex digits of the value's SHA-256.")
    session_id: uuid.UUID
    created_at: datetime
    uses: int = Field(description="Times it came back (to the gateway or any Feint API).")
    used: bool
    last_used_at: datetime | None


class HoneytokenList(BaseModel):
    items: list[HoneytokenOut]
    next_cursor: str | None


class SessionDetailOut(SessionOut):
    """A session with its most recent events and every honeytoken planted in it."""

    events: list[EventOut] = Field(description="Newest first; the first `events_max`.")
    events_more: bool = Field(description="More events than shown: page them with /v1/events?session_id=.")
    honeytokens: list[HoneytokenOut]


class ReasonOut(BaseModel):
    """One piece of evidence and the points it added to the threat level."""

    signal: str = Field(description="rule, response-rule, problem, user-agent, rate, errors, breadth, …")
    points: float
    detail: str


class RequestOut(BaseModel):
    """The judged request, in the Sigma webserver fields."""

    c_ip: str | None
    cs_method: str | None
    cs_uri_stem: str | None
    cs_uri_query: str | None
    cs_user_agent: str | None
    cs_host: str | None
    sc_status: int | None = Field(description="The status answered (null when no answer was sent).")


class DecisionSummaryOut(BaseModel):
    """One logged decision in a listing; its explanation is at /v1/decisions/{id}."""

    id: uuid.UUID
    decided_at: datetime
    threat: int
    action: Action
    cs_method: str | None
    cs_uri_stem: str | None
    sc_status: int | None
    client_key: str
    session_id: uuid.UUID | None
    arm: str | None

    @classmethod
    def of(cls, row: dict[str, Any]) -> DecisionSummaryOut:
        return cls(**{name: row[name] for name in cls.model_fields})


class DecisionList(BaseModel):
    items: list[DecisionSummaryOut]
    next_cursor: str | None


class DecisionOut(BaseModel):
    """The threat explanation of one logged decision."""

    id: uuid.UUID
    decided_at: datetime
    threat: int
    band: Band = Field(description="The engagement band of the threat level.")
    action: Action = Field(description="allow: forwarded; divert: a decoy answered; refuse: metering; error.")
    client_key: str
    fingerprint: str
    request: RequestOut
    rules: list[str] = Field(description="Keys of the Sigma rules that fired.")
    rule_hits: list[ReasonOut] = Field(description="Points from rules (on the request, or carried from answers).")
    request_signals: list[ReasonOut] = Field(description="Points from framing problems and the user agent.")
    behaviour: list[ReasonOut] = Field(description="Points from the client's behaviour over its window.")
    explanation: list[ReasonOut] = Field(description="Every reason, in the order it was logged.")
    ruleset_version: int | None
    rules_tag: str
    rollout_id: uuid.UUID | None
    canary: bool
    eval_latency_us: float
    session_id: uuid.UUID | None
    persona: str | None
    arm: str | None


class AllowIn(BaseModel):
    """An allow-list entry's note (why the client is known to be good)."""

    model_config = ConfigDict(extra="forbid")

    note: str = Field("", max_length=NOTE_CHARS_MAX)

    @field_validator("note")
    @classmethod
    def _storable(cls, value: str) -> str:
        # PostgreSQL text holds neither NUL nor lone UTF-16 surrogates (not valid UTF-8).
        if "\x00" in value:
            raise ValueError("text with a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text with a lone surrogate (not valid Unicode)") from None
        return value


class AllowOut(BaseModel):
    """A known-good client: a client key (32 hex) or an IP address; its decisions are labelled benign."""

    client: str
    note: str
    created_at: datetime

    @classmethod
    def of(cls, row: dict[str, Any]) -> AllowOut:
        return cls(client=row["client"], note=row["note"], created_at=row["created_at"])


class AllowList(BaseModel):
    items: list[AllowOut]
    next_cursor: str | None
