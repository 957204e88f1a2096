"""The pure parts of the repository: the state table, rollback planning, version checks, diffs, jobs' helpers.

Unit tier (no services); kept beside the integration tests of the same code.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog

from feint.errors import InvariantViolated, ValidationFailed
from feint.shadow import jobs, repository, store, versions
from feint.shadow.errors import RuleInvalid, RulePathMissing
from feint.shadow.repository import STATES, TRANSITIONS, Change, TransitionInvalid, plan_rollback, plan_transition
from feint.shadow.rules.parse import parse_rules
from feint.shadow.versions import Document, compile_version, diff_snapshots, documents_from_path, snapshot_of
from feint.shadow.views import _etag_matches
from tests.integration.shadow import sigma
from tests.integration.shadow.conftest import real_starter_documents

pytestmark = pytest.mark.unit

ALLOWED = {
    ("draft", "shadow"),
    ("draft", "retired"),
    ("shadow", "canary"),
    ("shadow", "retired"),
    ("canary", "production"),
    ("canary", "retired"),
}


@pytest.mark.parametrize("current", STATES)
@pytest.mark.parametrize("to", STATES)
def test_every_transition_is_allowed_exactly_when_the_table_says(
    current: repository.State, to: repository.State
) -> None:
    """Each (from, to) pair is allowed iff it is one of the six moves; refusals name both states."""
    assert ((current, to) in ALLOWED) == (to in TRANSITIONS[current])
    if (current, to) in ALLOWED:
        assert plan_transition(number=3, current=current, to=to, production=None) == (
            Change(3, current, to, "transition"),
        )
        return
    with pytest.raises(TransitionInvalid) as refused:
        plan_transition(number=3, current=current, to=to, production=1)
    assert refused.value.status == 409
    assert refused.value.extensions["from_state"] == current and refused.value.extensions["to_state"] == to
    assert f"from {current} to {to}" in refused.value.detail
    assert refused.value.extensions["allowed"] == sorted(TRANSITIONS[current])


def test_promotion_retires_the_production_version_first() -> None:
    """Promoting over a production version retires it before the new one arrives (one production at a time)."""
    assert plan_transition(number=5, current="canary", to="production", production=2) == (
        Change(2, "production", "retired", "retired"),
        Change(5, "canary", "production", "transition"),
    )


def test_refusals_explain_what_may_follow() -> None:
    """Production and retired versions explain how they change instead (replacement, rollback)."""
    with pytest.raises(TransitionInvalid, match="only when another version replaces it"):
        plan_transition(number=1, current="production", to="retired", production=1)
    with pytest.raises(TransitionInvalid, match="a rollback returns"):
        plan_transition(number=1, current="retired", to="production", production=2)


def test_rollback_plans() -> None:
    """Rollback retires production and restores a former production version; anything else is 409."""
    assert plan_rollback(target=1, target_state="retired", production=3, was_production=True) == (
        Change(3, "production", "retired", "retired"),
        Change(1, "retired", "production", "rollback", replaced=3),
    )
    with pytest.raises(repository.RollbackInvalid, match="no version in production"):
        plan_rollback(target=1, target_state="retired", production=None, was_production=True)
    with pytest.raises(repository.RollbackInvalid, match="already in production"):
        plan_rollback(target=3, target_state="production", production=3, was_production=True)
    with pytest.raises(repository.RollbackInvalid, match="never in production"):
        plan_rollback(target=2, target_state="draft", production=3, was_production=False)
    with pytest.raises(InvariantViolated):
        plan_rollback(target=2, target_state="canary", production=3, was_production=True)


def test_parse_ref() -> None:
    """A UUID is an id, anything else a name."""
    ident = uuid.uuid4()
    assert repository.parse_ref(str(ident)) == ident
    assert repository.parse_ref("starter") == "starter"


# --- compile_version ------------------------------------------------------------------------


def docs(*texts: str) -> list[Document]:
    return [Document(name=f"d{i}.yml", yaml=t) for i, t in enumerate(texts)]


def test_compile_version_keeps_documents_rules_and_weights() -> None:
    """Rules keep their order and document; weights default to the level's; the threshold is kept."""
    key = parse_rules(sigma.SQLI)[0].key
    compiled = compile_version(docs(sigma.SQLI, sigma.TRAVERSAL), weights={key: 1.5}, threshold=5.0, name="web")
    assert compiled.rule_documents == (0, 1)
    assert [r.weight for r in compiled.rule_rows()] == [1.5, 4.0]
    assert [d.name for d in compiled.document_rows()] == ["d0.yml", "d1.yml"]
    assert compiled.rule_set.threshold == 5.0 and compiled.rule_set.name == "web"


@pytest.mark.parametrize(
    ("documents", "options", "message"),
    [
        ([], {}, "1-1000 documents"),
        ([Document(name="", yaml=sigma.SQLI)], {}, "empty, too long or used twice"),
        ([Document(name="x" * 301, yaml=sigma.SQLI)], {}, "empty, too long or used twice"),
        (docs(sigma.SQLI, sigma.SQLI), {}, "is in both d0.yml and d1.yml"),
        (docs(sigma.SQLI), {"weights": {"ghost": 1.0}}, "not in this version"),
        (docs(sigma.SQLI), {"weights": "nan"}, "outside"),
        (docs(sigma.SQLI), {"weights": "inf"}, "outside"),
        (docs(sigma.SQLI), {"threshold": 7.5}, "not reachable"),
        (docs(sigma.SQLI), {"threshold": float("nan")}, "not reachable"),
        (docs(sigma.SQLI), {"threshold": -1.0}, "not reachable"),
    ],
)
def test_compile_version_refuses_bad_input(documents: list[Document], options: dict[str, object], message: str) -> None:
    """Each way a version can be wrong is a 422 that says which."""
    if isinstance(options.get("weights"), str):
        options = {"weights": {parse_rules(sigma.SQLI)[0].key: float(str(options["weights"]))}}
    with pytest.raises(ValidationFailed, match=message):
        compile_version(documents, **options)  # type: ignore[arg-type]


def test_compile_version_bounds_rules_and_documents(monkeypatch: pytest.MonkeyPatch) -> None:
    """More documents or rules than a version holds are refused."""
    monkeypatch.setattr(versions, "RULES_PER_SET_MAX", 1)
    with pytest.raises(ValidationFailed, match="exceed"):
        compile_version(docs(sigma.SQLI, sigma.TRAVERSAL))
    monkeypatch.setattr(versions, "DOCUMENTS_PER_VERSION_MAX", 1)
    with pytest.raises(ValidationFailed, match="1-1 documents"):
        compile_version(docs(sigma.SQLI, sigma.TRAVERSAL))


def test_threshold_at_the_total_weight_is_reachable() -> None:
    """A threshold equal to the sum of all weights can be reached."""
    assert compile_version(docs(sigma.SQLI), threshold=7.0).rule_set.threshold == 7.0


# --- files ----------------------------------------------------------------------------------


def test_documents_from_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file or a folder's *.yml/*.yaml (named relative to it); missing, empty, huge, non-UTF-8 refused."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "one.yml").write_text(sigma.SQLI)
    (tmp_path / "a" / "two.yaml").write_text(sigma.SCANNER)
    (tmp_path / "a" / "skip.txt").write_text("x")
    assert [d.name for d in documents_from_path(tmp_path / "a")] == ["b/one.yml", "two.yaml"]
    assert [d.name for d in documents_from_path(tmp_path / "a" / "two.yaml")] == ["two.yaml"]
    with pytest.raises(RulePathMissing):
        documents_from_path(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuleInvalid, match=r"no \.yml"):
        documents_from_path(tmp_path / "empty")
    (tmp_path / "latin1.yml").write_bytes(b"title: caf\xe9\n")
    with pytest.raises(RuleInvalid, match="not UTF-8"):
        documents_from_path(tmp_path / "latin1.yml")
    monkeypatch.setattr(versions, "RULE_BYTES_MAX", 10)
    with pytest.raises(RuleInvalid, match="larger than 10 bytes"):
        documents_from_path(tmp_path / "a" / "two.yaml")
    monkeypatch.setattr(versions, "RULE_FILES_MAX", 1)
    with pytest.raises(RuleInvalid, match="more than 1 rule files"):
        documents_from_path(tmp_path / "a")


def test_starter_documents_come_from_the_package_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The starter set is every Sigma file in the starter folder; an empty folder means none."""
    monkeypatch.setattr(versions, "STARTER_FOLDER", tmp_path)
    real_starter_documents.cache_clear()
    try:
        assert real_starter_documents() == ()
        real_starter_documents.cache_clear()
        (tmp_path / "probe.yml").write_text(sigma.STARTER[0])
        assert [d.name for d in real_starter_documents()] == ["probe.yml"]
    finally:
        real_starter_documents.cache_clear()


def test_shipped_starter_rules_compile() -> None:
    """Whatever starter rules this build ships compile into one valid version."""
    real_starter_documents.cache_clear()
    shipped = real_starter_documents()
    if shipped:
        assert compile_version(shipped).rules


# --- diff -----------------------------------------------------------------------------------


def test_diff_is_cut_at_its_line_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A huge YAML change is cut at DIFF_LINES_MAX lines and says so; texts without a final newline still diff."""
    monkeypatch.setattr(versions, "DIFF_LINES_MAX", 4)
    a = snapshot_of(compile_version(docs(sigma.SQLI.rstrip("\n"))), label="a")
    b = snapshot_of(
        compile_version(docs(sigma.SQLI.replace("union select", "union all select").rstrip("\n"))), label="b"
    )
    [change] = diff_snapshots(a, b).changed
    lines = change.diff.splitlines()
    assert len(lines) == 5 and lines[-1] == "… diff cut at 4 lines"


def test_rule_set_of_rebuilds_and_tolerates_hash_drift(capsys: pytest.CaptureFixture[str]) -> None:
    """A stored version becomes the same rule set again; a different stored hash only logs a warning."""
    compiled = compile_version(docs(sigma.SQLI, sigma.TRAVERSAL), threshold=3.0)
    now = datetime.now(UTC)
    ruleset = store.RuleSetRow(uuid.uuid4(), "web", "", 1, "t", now, None)

    def detail(content_hash: str) -> repository.VersionDetail:
        version = store.VersionRow(ruleset.id, 1, content_hash, "a", "m", 3.0, 2, "t", now, "draft", now)
        return repository.VersionDetail(ruleset, version, compiled.document_rows(), compiled.rule_rows())

    rebuilt = repository.rule_set_of(detail(compiled.rule_set.content_hash))
    assert rebuilt.content_hash == compiled.rule_set.content_hash and rebuilt.name == "web@1"
    with structlog.testing.capture_logs() as logs:
        repository.rule_set_of(detail("0" * 64))
    assert logs[0]["event"] == "content_hash_drift"


# --- jobs and views helpers ---------------------------------------------------------------------


def test_progress_clamps_and_cancels() -> None:
    """Progress stays within [0, 1]; once cancelled, the next report stops the evaluator."""
    progress = jobs.Progress()
    progress(1.7)
    assert progress.fraction == 1.0
    progress(-2)
    assert progress.fraction == 0.0
    progress.cancelled.set()
    with pytest.raises(jobs.EvaluationCancelled):
        progress(0.5)


def test_files_hash_and_resolve_inside_the_tenant_folder(tmp_path: Path) -> None:
    """sha256_file hashes in chunks; resolve_file refuses names that leave the folder, even by symlink."""
    root = tmp_path / "datasets" / "acme"
    root.mkdir(parents=True)
    data = b"x" * (jobs.HASH_CHUNK_BYTES + 5)
    (root / "big.log").write_bytes(data)
    assert jobs.sha256_file(root / "big.log") == hashlib.sha256(data).hexdigest()
    assert jobs.resolve_file(root, "big.log", field="f") == (root / "big.log").resolve()
    (tmp_path / "secret.log").write_text("s")
    (root / "link.log").symlink_to(tmp_path / "secret.log")
    with pytest.raises(jobs.DatasetPathInvalid):
        jobs.resolve_file(root, "link.log", field="f")
    (root / "folder").mkdir()
    with pytest.raises(jobs.DatasetNotFound):
        jobs.resolve_file(root, "folder", field="f")


def test_dead_local_runners(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runners of this host whose process is gone (or whose pid is now ours) are dead; others are left alone."""
    import os
    import socket
    import subprocess
    import sys

    host = socket.gethostname()
    finished = subprocess.run([sys.executable, "-c", "pass"], check=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    me = jobs.runner_id()
    runners = [
        me,
        f"{host}:{os.getpid()}:old",
        f"{host}:{gone.pid}:x",
        f"{host}:{os.getppid()}:x",
        f"elsewhere:{gone.pid}:x",
        "garbage",
        f"{host}:notapid:x",
    ]
    assert finished.returncode == 0
    assert jobs.dead_local_runners(runners, me=me) == [f"{host}:{os.getpid()}:old", f"{host}:{gone.pid}:x"]

    def denied(pid: int, signal: int) -> None:
        raise PermissionError

    monkeypatch.setattr(os, "kill", denied)
    assert jobs.dead_local_runners([f"{host}:{gone.pid}:x"], me=me) == []


def test_etag_matching() -> None:
    """If-None-Match matches the exact tag, its weak form, one of a list, or *; nothing else."""
    assert not _etag_matches(None, '"1.a"')
    assert _etag_matches('"1.a"', '"1.a"') and _etag_matches('W/"1.a"', '"1.a"')
    assert _etag_matches('"x", "1.a"', '"1.a"') and _etag_matches("*", '"1.a"')
    assert not _etag_matches('"1.b"', '"1.a"')
