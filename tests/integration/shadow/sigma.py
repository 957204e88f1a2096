"""Small Sigma rules the shadow tests build versions from."""

from __future__ import annotations

import uuid


def rule(
    title: str,
    *,
    rule_id: str | None = None,
    field: str = "cs-uri-query|contains",
    value: str = "union select",
    level: str = "high",
) -> str:
    """One webserver rule as YAML text."""
    return f"""title: '{title}'
id: {rule_id or uuid.uuid5(uuid.NAMESPACE_URL, title)}
status: experimental
description: A rule written for Feint's tests.
author: Feint tests
logsource:
    category: webserver
detection:
    selection:
        {field}: '{value}'
    condition: selection
level: {level}
"""


SQLI = rule("SQL injection in the query", value="union select")
TRAVERSAL = rule("Path traversal", field="cs-uri-stem|contains", value="../", level="medium")
SCANNER = rule("Scanner user agent", field="cs-user-agent|contains", value="sqlmap", level="critical")
SQLI_V2 = rule("SQL injection in the query", value="union all select")
STARTER = (rule("Starter: admin probe", field="cs-uri-stem|startswith", value="/wp-admin", level="low"),)
