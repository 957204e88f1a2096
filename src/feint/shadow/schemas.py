"""The shadow API's input and output models (apart from the domain rows in store and repository)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from feint.shadow import store
from feint.shadow.repository import (
    AUTHOR_LENGTH_MAX,
    DESCRIPTION_LENGTH_MAX,
    MESSAGE_LENGTH_MAX,
    REASON_LENGTH_MAX,
    State,
    VersionDetail,
)
from feint.shadow.rules.model import WEIGHT_MAX
from feint.shadow.rules.parse import RULE_BYTES_MAX
from feint.shadow.versions import DOCUMENT_NAME_LENGTH_MAX, DOCUMENTS_PER_VERSION_MAX, Document, VersionDiff

RULESET_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


# --- rule sets and versions ---------------------------------------------------------------


class RuleSetIn(_In):
    name: str = Field(pattern=RULESET_NAME_PATTERN, description="1-63 of a-z, 0-9, '.', '_', '-'; not a UUID.")
    description: str = Field("", max_length=DESCRIPTION_LENGTH_MAX)


class RuleSetOut(_Out):
    id: uuid.UUID
    name: str
    description: str
    versions: int = Field(description="How many versions the rule set has.")
    production: int | None = Field(description="The version in production, if any.")
    created_by: str
    created_at: datetime

    @classmethod
    def of(cls, row: store.RuleSetRow) -> RuleSetOut:
        return cls(
            id=row.id,
            name=row.name,
            description=row.description,
            versions=row.versions,
            production=row.production,
            created_by=row.created_by,
            created_at=row.created_at,
        )


class RuleSetList(_Out):
    items: list[RuleSetOut]


class DocumentIn(_In):
    name: str = Field(min_length=1, max_length=DOCUMENT_NAME_LENGTH_MAX, description="A file name, e.g. sqli.yml.")
    yaml: str = Field(max_length=RULE_BYTES_MAX, description="The Sigma YAML (one or more documents).")


Weight = Annotated[float, Field(ge=0, le=WEIGHT_MAX, allow_inf_nan=False)]


class VersionIn(_In):
    message: str = Field(min_length=1, max_length=MESSAGE_LENGTH_MAX, description="What changed and why.")
    documents: list[Annotated[str, Field(max_length=RULE_BYTES_MAX)] | DocumentIn] = Field(
        min_length=1,
        max_length=DOCUMENTS_PER_VERSION_MAX,
        description="Sigma YAML texts; a bare string is named document-N.yml.",
    )
    weights: dict[str, Weight] = Field(
        default_factory=dict, description="Rule id → weight; a rule not named weighs what its level does."
    )
    threshold: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Flag when the weighted score reaches this; null: any match."
    )
    author: str | None = Field(
        None, min_length=1, max_length=AUTHOR_LENGTH_MAX, description="Who wrote it; default: the API key's id."
    )

    def to_documents(self) -> list[Document]:
        return [
            Document(name=f"document-{i}.yml", yaml=d) if isinstance(d, str) else Document(name=d.name, yaml=d.yaml)
            for i, d in enumerate(self.documents, start=1)
        ]


class VersionOut(_Out):
    ruleset_id: uuid.UUID
    version: int
    state: str
    content_hash: str
    author: str
    message: str
    threshold: float | None
    rule_count: int
    created_by: str
    created_at: datetime
    state_changed_at: datetime

    @classmethod
    def of(cls, row: store.VersionRow) -> VersionOut:
        return cls(
            ruleset_id=row.ruleset_id,
            version=row.number,
            state=row.state,
            content_hash=row.content_hash,
            author=row.author,
            message=row.message,
            threshold=row.threshold,
            rule_count=row.rule_count,
            created_by=row.created_by,
            created_at=row.created_at,
            state_changed_at=row.state_changed_at,
        )


class VersionList(_Out):
    items: list[VersionOut]


class RuleOut(_Out):
    key: str = Field(description="The Sigma id (or sha256:… of the content when the rule has none).")
    title: str
    level: str
    weight: float
    content_hash: str
    post_response: bool = Field(description="Reads response fields: evaluated after the upstream answers.")
    document: str


class DocumentOut(_Out):
    name: str
    yaml: str


class VersionDetailOut(VersionOut):
    ruleset: str
    rules: list[RuleOut]
    documents: list[DocumentOut]

    @classmethod
    def of_detail(cls, detail: VersionDetail) -> VersionDetailOut:
        names = {d.position: d.name for d in detail.documents}
        return cls(
            **VersionOut.of(detail.version).model_dump(),
            ruleset=detail.ruleset.name,
            rules=[
                RuleOut(
                    key=r.rule_key,
                    title=r.title,
                    level=r.level,
                    weight=r.weight,
                    content_hash=r.content_hash,
                    post_response=r.post_response,
                    document=names[r.document],
                )
                for r in detail.rules
            ],
            documents=[DocumentOut(name=d.name, yaml=d.yaml) for d in detail.documents],
        )


class ProductionOut(VersionDetailOut):
    etag: str = Field(description="The ETag of this answer; send it as If-None-Match to poll cheaply.")

    @staticmethod
    def etag_of(version: store.VersionRow) -> str:
        return f'"{version.number}.{version.content_hash}"'

    @classmethod
    def of_production(cls, detail: VersionDetail, *, etag: str) -> ProductionOut:
        return cls(**VersionDetailOut.of_detail(detail).model_dump(), etag=etag)


class TransitionIn(_In):
    to: State
    reason: str = Field("", max_length=REASON_LENGTH_MAX)


class RollbackIn(_In):
    version: int = Field(ge=1, description="A version that was in production before.")
    reason: str = Field(min_length=1, max_length=REASON_LENGTH_MAX, description="Why: kept in the history.")


class HistoryOut(_Out):
    seq: int
    event: str
    version: int
    from_state: str | None
    to_state: str
    replaced: int | None = Field(description="For a rollback: the production version it replaced.")
    actor: str = Field(description="Who: key:<API key id>, cli:<user>, or feint for the starter set.")
    reason: str
    at: datetime
    details: dict[str, Any] | None = Field(
        None, description="For a canary event: the rollout, its weight and the guard results behind the change."
    )

    @classmethod
    def of(cls, row: store.HistoryRow) -> HistoryOut:
        return cls(
            seq=row.seq,
            event=row.event,
            version=row.number,
            from_state=row.from_state,
            to_state=row.to_state,
            replaced=row.replaced,
            actor=row.actor,
            reason=row.reason,
            at=row.recorded_at,
            details=row.details,
        )


class HistoryList(_Out):
    items: list[HistoryOut]


class RuleRefOut(_Out):
    key: str
    title: str


class Pair(_Out):
    before: float | None = Field(serialization_alias="from")
    after: float | None = Field(serialization_alias="to")


class RuleChangeOut(_Out):
    key: str
    title: str
    content_changed: bool
    weight: Pair | None
    diff: str = Field(description="Unified diff of the Sigma text; empty when only the weight changed.")


class DiffOut(_Out):
    from_: str = Field(serialization_alias="from")
    to: str
    from_hash: str
    to_hash: str
    added: list[RuleRefOut]
    removed: list[RuleRefOut]
    changed: list[RuleChangeOut]
    unchanged: int
    threshold: Pair | None

    @classmethod
    def of(cls, d: VersionDiff) -> DiffOut:
        return cls(
            from_=d.from_label,
            to=d.to_label,
            from_hash=d.from_hash,
            to_hash=d.to_hash,
            added=[RuleRefOut(key=r.key, title=r.title) for r in d.added],
            removed=[RuleRefOut(key=r.key, title=r.title) for r in d.removed],
            changed=[
                RuleChangeOut(
                    key=c.key,
                    title=c.title,
                    content_changed=c.content_changed,
                    weight=Pair(before=c.weight[0], after=c.weight[1]) if c.weight else None,
                    diff=c.diff,
                )
                for c in d.changed
            ],
            unchanged=d.unchanged,
            threshold=Pair(before=d.threshold[0], after=d.threshold[1]) if d.threshold else None,
        )


# --- evaluations --------------------------------------------------------------------------


class StoredVersionIn(_In):
    ruleset: str = Field(min_length=1, max_length=64, description="Rule set id or name.")
    version: int | None = Field(None, ge=1, description="Version number; default: the one in production.")


class InlineRulesIn(_In):
    documents: list[Annotated[str, Field(max_length=RULE_BYTES_MAX)] | DocumentIn] = Field(
        min_length=1, max_length=DOCUMENTS_PER_VERSION_MAX
    )
    weights: dict[str, Weight] = Field(default_factory=dict)
    threshold: float | None = Field(None, gt=0, allow_inf_nan=False)

    def to_documents(self) -> list[Document]:
        return VersionIn(message="inline", documents=self.documents).to_documents()


RulesIn = StoredVersionIn | InlineRulesIn


class SourceIn(_In):
    """A file on the server under FEINT_HOME/datasets (relative path), or an uploaded dataset."""

    path: str | None = Field(None, min_length=1, max_length=1024)
    dataset_id: uuid.UUID | None = None

    @model_validator(mode="after")
    def _one_of(self) -> SourceIn:
        if (self.path is None) == (self.dataset_id is None):
            raise ValueError("give exactly one of path and dataset_id")
        return self


class LabelsIn(_In):
    path: str = Field(min_length=1, max_length=1024, description="CSV `id,label` under FEINT_HOME/datasets.")


class EvaluationIn(_In):
    production: RulesIn = Field(description="A stored version (default: the rule set's production) or inline rules.")
    candidate: RulesIn
    traffic: SourceIn
    labels: LabelsIn | None = Field(None, description="Without labels the report compares verdicts only.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Decision thresholds and sampling (see docs/shadow.md)."
    )


class EvaluationOut(_Out):
    id: uuid.UUID
    status: Literal["queued", "running", "succeeded", "failed"]
    progress: float
    error: str | None
    inputs: dict[str, Any] = Field(description="The SHA-256 of every input, so the run can be reproduced.")
    request: dict[str, Any]
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, row: store.EvaluationRow) -> EvaluationOut:
        return cls(
            id=row.id,
            status=row.status,
            progress=row.progress,
            error=row.error,
            inputs=row.inputs,
            request=row.request,
            created_by=row.created_by,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
        )


class EvaluationList(_Out):
    items: list[EvaluationOut]


class DatasetOut(_Out):
    id: uuid.UUID
    name: str
    rows: int
    sha256: str
    created_by: str
    created_at: datetime

    @classmethod
    def of(cls, row: store.DatasetRow) -> DatasetOut:
        return cls(
            id=row.id,
            name=row.name,
            rows=row.row_count,
            sha256=row.sha256,
            created_by=row.created_by,
            created_at=row.created_at,
        )


class DatasetCreatedOut(DatasetOut):
    malformed: int = Field(description="Lines that were not a request: counted, never silently dropped.")
    examples: list[dict[str, Any]] = Field(description="The first malformed lines, with line numbers and reasons.")
    formats: list[str] = Field(description="The log format recognised.")


class DatasetList(_Out):
    items: list[DatasetOut]
