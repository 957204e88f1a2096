"""`feint rules …` in-process on a real database: list, show, import, diff, promote, rollback, history."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from feint.cli import app
from feint.settings import get_settings
from feint.shadow import rules_cli, versions
from feint.shadow.rules.parse import parse_rules
from tests.conftest import TEST_MASTER_KEY
from tests.integration.shadow import sigma

pytestmark = pytest.mark.integration

Rules = Callable[..., "Result"]


class Result:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr


@pytest.fixture
def rules(
    clean_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api_key: Callable[..., str]
) -> Iterator[Rules]:
    """Run `feint rules ARGS` for tenant acme against the test database."""
    api_key(tenant="acme", scope="read")
    for name in [n for n in os.environ if n.startswith("FEINT_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FEINT_DATABASE_URL", clean_db)
    monkeypatch.setenv("FEINT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FEINT_MASTER_KEY", TEST_MASTER_KEY)
    monkeypatch.setenv("FEINT_LOG_FORMAT", "json")
    monkeypatch.setenv("FEINT_TENANT", "acme")
    monkeypatch.setenv("USER", "ada")
    monkeypatch.setattr(rules_cli, "out", Console(width=250))
    monkeypatch.setattr(rules_cli, "err", Console(width=250, stderr=True))
    get_settings.cache_clear()
    runner = CliRunner()

    def run(*args: str) -> Result:
        result = runner.invoke(app, ["rules", *args], catch_exceptions=False)
        return Result(result.exit_code, result.stdout, result.stderr)

    yield run
    get_settings.cache_clear()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rules_dir = tmp_path / "rules"
    (rules_dir / "web").mkdir(parents=True)
    (rules_dir / "web" / "sqli.yml").write_text(sigma.SQLI)
    (rules_dir / "traversal.yaml").write_text(sigma.TRAVERSAL)
    (rules_dir / "notes.txt").write_text("not a rule")
    return rules_dir


def test_import_list_show(rules: Rules, folder: Path) -> None:
    """Import makes a draft from a folder; list and show print it; the starter set is there from the start."""
    imported = rules("import", str(folder), "--ruleset", "web", "--message", "first cut")
    assert imported.code == 0, imported.stderr
    assert "web@1 (draft, 2 rules" in imported.stdout
    listed = rules("list")
    assert "starter" in listed.stdout and "web" in listed.stdout
    versions_out = rules("list", "web")
    assert "draft" in versions_out.stdout and "first cut" in versions_out.stdout and "cli:ada" in versions_out.stdout
    shown = rules("show", "web@1", "--yaml")
    assert shown.code == 0 and "SQL injection in the query" in shown.stdout
    assert "union select" in shown.stdout and "web/sqli.yml" in shown.stdout
    production = rules("show", "starter")
    assert "starter@1  production" in production.stdout and "Starter: admin probe" in production.stdout
    again = rules("import", str(folder / "web" / "sqli.yml"), "--ruleset", "web", "-m", "one file", "--threshold", "5")
    assert again.code == 0 and "web@2" in again.stdout
    assert "flags when the weighted score reaches 5" in rules("show", "web@2").stdout


def test_bad_import_stores_nothing(rules: Rules, tmp_path: Path) -> None:
    """An invalid rule is one error line naming file and line, exit 1, and no version is stored."""
    bad = tmp_path / "bad.yml"
    bad.write_text(sigma.SQLI + "\n---\ntitle: [\n")
    result = rules("import", str(bad), "--ruleset", "web", "-m", "broken")
    assert result.code == 1 and "bad.yml" in result.stderr and "Traceback" not in result.stderr
    assert "web" not in rules("list").stdout
    missing = rules("import", str(tmp_path / "nope"), "--ruleset", "web", "-m", "x")
    assert missing.code == 1 and "no Sigma file or folder" in missing.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no .yml or .yaml" in rules("import", str(empty), "--ruleset", "web", "-m", "x").stderr


def test_promote_rollback_history(rules: Rules, folder: Path, tmp_path: Path) -> None:
    """Promote walks one state at a time; rollback returns production and history shows who and why."""
    rules("import", str(folder), "--ruleset", "web", "-m", "v1")
    for expected in ("draft → shadow", "shadow → canary", "canary → production"):
        step = rules("promote", "web@1", "--reason", "proven")
        assert step.code == 0 and expected in step.stdout, step.stderr
    done = rules("promote", "web@1")
    assert done.code == 1 and "no state follows" in done.stderr
    v2 = tmp_path / "v2.yml"
    v2.write_text(sigma.SQLI_V2)
    rules("import", str(v2), "--ruleset", "web", "-m", "v2")
    skip = rules("promote", "web@2", "--to", "production")
    assert skip.code == 1 and "from draft to production" in skip.stderr
    for _ in range(3):
        assert rules("promote", "web@2").code == 0
    rolled = rules("rollback", "web", "--to", "1", "--reason", "v2 blocks customers")
    assert rolled.code == 0 and "production 2 → 1" in rolled.stdout
    history = rules("history", "web")
    assert "rollback" in history.stdout and "v2 blocks customers" in history.stdout and "cli:ada" in history.stdout
    assert rules("rollback", "web", "--to", "1", "--reason", " ").code == 2
    assert rules("promote", "web").code == 2
    assert rules("promote", "web@1", "--to", "live").code == 2
    assert rules("promote", "web@x").code == 2
    retired = rules("promote", "web@2", "--to", "retired")
    assert retired.code == 1 and "from retired to retired" in retired.stderr


def test_diff_versions_and_files(rules: Rules, folder: Path, tmp_path: Path) -> None:
    """diff compares stored versions, production, and files on disk, with the YAML's unified diff."""
    rules("import", str(folder), "--ruleset", "web", "-m", "v1")
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "sqli.yml").write_text(sigma.SQLI_V2)
    (changed / "scanner.yml").write_text(sigma.SCANNER)
    result = rules("diff", "web@1", str(changed))
    assert result.code == 0, result.stderr
    assert "+ " in result.stdout and "Scanner user agent" in result.stdout
    assert "- " in result.stdout and "Path traversal" in result.stdout
    assert "~ " in result.stdout and "+        cs-uri-query|contains: 'union all select'" in result.stdout
    assert "1 added, 1 removed, 1 changed, 0 unchanged" in result.stdout
    stored = rules("diff", "starter", "web@1")
    assert stored.code == 0 and "2 added, 1 removed" in stored.stdout
    rules("import", str(folder), "--ruleset", "web", "-m", "v2", "--threshold", "3")
    threshold = rules("diff", "web@1", "web@2")
    assert "threshold None → 3.0" in threshold.stdout and "0 changed, 2 unchanged" in threshold.stdout
    key = parse_rules(sigma.TRAVERSAL)[0].key
    weighted = rules("import", str(folder), "--ruleset", "web", "-m", "v3", "--weight", f"{key}=9")
    assert weighted.code == 0, weighted.stderr
    reweighted = rules("diff", "web@1", "web@3")
    assert "weight 4 → 9" in reweighted.stdout and "---" not in reweighted.stdout
    for bad in ("nonsense", f"{key}=heavy", "=3"):
        assert rules("import", str(folder), "--ruleset", "web", "-m", "x", "--weight", bad).code == 2
    assert rules("diff", "web@9", "web@1").code == 1


def test_install_starter_and_unknown_tenant(rules: Rules, monkeypatch: pytest.MonkeyPatch) -> None:
    """install-starter reports an up-to-date starter, imports a newer one as a draft; unknown tenants fail."""
    same = rules("install-starter")
    assert same.code == 0 and "already holds" in same.stdout
    newer = (versions.Document(name="starter.yml", yaml=sigma.SCANNER),)
    monkeypatch.setattr(versions, "starter_documents", lambda: newer)
    imported = rules("install-starter")
    assert imported.code == 0 and "starter@2 (draft)" in imported.stdout
    monkeypatch.setattr(versions, "starter_documents", lambda: ())
    assert "ships no starter rules" in rules("install-starter").stderr
    ghost = rules("list", "--tenant", "ghost")
    assert ghost.code == 1 and "feint keys create --tenant ghost" in ghost.stderr


def test_actor_without_login_name(rules: Rules, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no login name to find, the history says cli:unknown."""
    import getpass

    def no_user() -> str:
        raise OSError("no user")

    monkeypatch.setattr(getpass, "getuser", no_user)
    rules("import", str(folder), "--ruleset", "web", "-m", "v1")
    assert "cli:unknown" in rules("history", "web").stdout


def test_stored_rule_set_for_other_commands(rules: Rules, folder: Path) -> None:
    """Other commands load a stored version as a rule set by NAME@N, or NAME for production."""
    rules("import", str(folder), "--ruleset", "web", "-m", "v1", "--threshold", "3")
    web = rules_cli.stored_rule_set(tenant="acme", ref="web@1")
    assert len(web.rules) == 2 and web.threshold == 3.0 and web.name == "web@1"
    assert [r.title for r in rules_cli.stored_rule_set(tenant="acme", ref="starter").rules] == ["Starter: admin probe"]
    with pytest.raises(typer.Exit):
        rules_cli.stored_rule_set(tenant="acme", ref="web")  # no production version yet
