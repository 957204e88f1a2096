"""Versions as data: checking and compiling submitted Sigma documents, and diffing two versions.

Everything here is pure (no I/O but reading rule files from a path the caller names), so the API,
the CLI and the tests share one definition of a valid version and of what changed between two.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from feint.errors import ValidationFailed
from feint.shadow import store
from feint.shadow.errors import RuleInvalid, RulePathMissing
from feint.shadow.rules.model import RULES_PER_SET_MAX, WEIGHT_MAX, Rule, RuleSet, rule_set
from feint.shadow.rules.parse import RULE_BYTES_MAX, RULE_FILES_MAX, RULE_SUFFIXES, parse_rules

DOCUMENTS_PER_VERSION_MAX: Final = 1_000
DOCUMENT_NAME_LENGTH_MAX: Final = 300
DIFF_LINES_MAX: Final = 5_000
STARTER_FOLDER: Final = Path(__file__).parent / "starter_rules"


def _invalid(detail: str, field: str, problem: str) -> ValidationFailed:
    return ValidationFailed(detail, errors=[{"field": field, "problem": problem}])


# --- compiling a new version (pure, CPU) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Document:
    """One Sigma file as submitted: a YAML stream of one or more rules."""

    name: str
    yaml: str


@dataclass(frozen=True, slots=True)
class CompiledVersion:
    """Documents checked and compiled: the rules in order, the document of each, the rule set."""

    documents: tuple[Document, ...]
    rules: tuple[Rule, ...]
    rule_documents: tuple[int, ...]
    rule_set: RuleSet

    def document_rows(self) -> list[store.DocumentRow]:
        return [store.DocumentRow(position=i, name=d.name, yaml=d.yaml) for i, d in enumerate(self.documents)]

    def rule_rows(self) -> list[store.RuleRow]:
        return [
            store.RuleRow(
                rule_key=rule.key,
                position=i,
                document=self.rule_documents[i],
                title=rule.title,
                level=rule.level,
                weight=self.rule_set.weight_of(rule),
                content_hash=rule.content_hash,
                post_response=rule.post_response,
            )
            for i, rule in enumerate(self.rules)
        ]


def compile_version(
    documents: Sequence[Document],
    *,
    weights: Mapping[str, float] | None = None,
    threshold: float | None = None,
    name: str = "rule set",
) -> CompiledVersion:
    """Parse every document and check the whole; raises a 422 error naming what is wrong.

    Nothing is stored by this function, so a failed import stores nothing."""
    if not 1 <= len(documents) <= DOCUMENTS_PER_VERSION_MAX:
        raise _invalid(
            f"a version holds 1-{DOCUMENTS_PER_VERSION_MAX} documents, not {len(documents)}",
            "body.documents",
            f"give 1-{DOCUMENTS_PER_VERSION_MAX} Sigma documents",
        )
    seen_names: set[str] = set()
    rules: list[Rule] = []
    origins: list[int] = []
    first_document: dict[str, str] = {}
    for index, document in enumerate(documents):
        if not 1 <= len(document.name) <= DOCUMENT_NAME_LENGTH_MAX or document.name in seen_names:
            raise _invalid(
                f"document name {document.name[:80]!r} is empty, too long or used twice",
                f"body.documents.{index}.name",
                f"give each document a distinct name of 1-{DOCUMENT_NAME_LENGTH_MAX} characters",
            )
        seen_names.add(document.name)
        for rule in parse_rules(document.yaml, path=document.name):
            if rule.key in first_document:
                raise _invalid(
                    f"rule {rule.key} ({rule.title!r}) is in both {first_document[rule.key]} and {document.name}",
                    f"body.documents.{index}",
                    "each rule id may appear once in a version",
                )
            first_document[rule.key] = document.name
            rules.append(rule)
            origins.append(index)
    if len(rules) > RULES_PER_SET_MAX:
        raise _invalid(
            f"{len(rules)} rules exceed the {RULES_PER_SET_MAX} a version may hold",
            "body.documents",
            f"at most {RULES_PER_SET_MAX} rules",
        )
    chosen = dict(weights or {})
    unknown = sorted(set(chosen) - set(first_document))
    if unknown:
        raise _invalid(f"weights name rules not in this version: {unknown[:10]}", "body.weights", "unknown rule id")
    for key, weight in chosen.items():
        if not (math.isfinite(weight) and 0 <= weight <= WEIGHT_MAX):
            raise _invalid(f"weight {weight!r} of rule {key} is outside [0, {WEIGHT_MAX:g}]", "body.weights", "range")
    built = rule_set(rules, name=name, weights=chosen)
    if threshold is not None:
        total = sum(built.weight_of(rule) for rule in rules)
        if not (math.isfinite(threshold) and 0 < threshold <= total):
            raise _invalid(
                f"threshold {threshold!r} is not reachable: the weights of all rules sum to {total:g}",
                "body.threshold",
                f"a positive score up to {total:g}, or null to flag on any match",
            )
        built = rule_set(rules, name=name, weights=chosen, threshold=threshold)
    return CompiledVersion(tuple(documents), tuple(rules), tuple(origins), built)


def documents_from_path(path: Path) -> list[Document]:
    """The Sigma files at a path (one file, or every ``*.yml``/``*.yaml`` under a folder), named
    by their path relative to the folder."""
    if not path.exists():
        raise RulePathMissing(path=str(path))
    if path.is_file():
        files, root = [path], path.parent
    else:
        files, root = sorted(p for p in path.rglob("*") if p.suffix in RULE_SUFFIXES and p.is_file()), path
    if not files:
        raise RuleInvalid("folder holds no .yml or .yaml file", path=str(path))
    if len(files) > RULE_FILES_MAX:
        raise RuleInvalid(f"more than {RULE_FILES_MAX} rule files", path=str(path))
    documents = []
    for file in files:
        if file.stat().st_size > RULE_BYTES_MAX:
            raise RuleInvalid(f"file is larger than {RULE_BYTES_MAX} bytes", path=str(file))
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise RuleInvalid(f"not UTF-8 text: {exc.reason}", path=str(file)) from exc
        documents.append(Document(name=file.relative_to(root).as_posix(), yaml=text))
    return documents


@functools.cache
def starter_documents() -> tuple[Document, ...]:
    """The rule set shipped with Feint (``shadow/starter_rules``); empty when none is packaged."""
    if not any(p.suffix in RULE_SUFFIXES for p in STARTER_FOLDER.glob("*")):
        return ()
    return tuple(documents_from_path(STARTER_FOLDER))


# --- diff (pure) --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a diff compares: a stored version or files on disk."""

    label: str
    documents: Sequence[store.DocumentRow]
    rules: Sequence[store.RuleRow]
    threshold: float | None
    content_hash: str


@dataclass(frozen=True, slots=True)
class RuleRef:
    key: str
    title: str


@dataclass(frozen=True, slots=True)
class RuleChange:
    key: str
    title: str
    content_changed: bool
    weight: tuple[float, float] | None
    diff: str


@dataclass(frozen=True, slots=True)
class VersionDiff:
    from_label: str
    to_label: str
    from_hash: str
    to_hash: str
    added: tuple[RuleRef, ...]
    removed: tuple[RuleRef, ...]
    changed: tuple[RuleChange, ...]
    unchanged: int
    threshold: tuple[float | None, float | None] | None


def snapshot_of(compiled: CompiledVersion, *, label: str) -> Snapshot:
    return Snapshot(
        label=label,
        documents=compiled.document_rows(),
        rules=compiled.rule_rows(),
        threshold=compiled.rule_set.threshold,
        content_hash=compiled.rule_set.content_hash,
    )


def _unified(a: Snapshot, a_rule: store.RuleRow, b: Snapshot, b_rule: store.RuleRow) -> str:
    before, after = a.documents[a_rule.document], b.documents[b_rule.document]
    lines = difflib.unified_diff(
        before.yaml.splitlines(keepends=True),
        after.yaml.splitlines(keepends=True),
        fromfile=f"{a.label}/{before.name}",
        tofile=f"{b.label}/{after.name}",
    )
    kept: list[str] = []
    for count, line in enumerate(lines):
        if count == DIFF_LINES_MAX:
            kept.append(f"… diff cut at {DIFF_LINES_MAX} lines\n")
            break
        kept.append(line if line.endswith("\n") else line + "\n")
    return "".join(kept)


def diff_snapshots(a: Snapshot, b: Snapshot) -> VersionDiff:
    """Rules added, removed and changed (content or weight) from ``a`` to ``b``, by rule id, with
    a unified diff of the Sigma text of each rule whose content changed."""
    before = {r.rule_key: r for r in a.rules}
    after = {r.rule_key: r for r in b.rules}
    changed: list[RuleChange] = []
    unchanged = 0
    for key, new in after.items():
        old = before.get(key)
        if old is None:
            continue
        content = old.content_hash != new.content_hash
        weight = (old.weight, new.weight) if old.weight != new.weight else None
        if not content and weight is None:
            unchanged += 1
            continue
        changed.append(RuleChange(key, new.title, content, weight, _unified(a, old, b, new) if content else ""))
    return VersionDiff(
        from_label=a.label,
        to_label=b.label,
        from_hash=a.content_hash,
        to_hash=b.content_hash,
        added=tuple(RuleRef(k, r.title) for k, r in after.items() if k not in before),
        removed=tuple(RuleRef(k, r.title) for k, r in before.items() if k not in after),
        changed=tuple(changed),
        unchanged=unchanged,
        threshold=(a.threshold, b.threshold) if a.threshold != b.threshold else None,
    )
