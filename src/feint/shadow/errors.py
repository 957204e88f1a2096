"""Errors of the shadow evaluation service.

Each carries the data a client needs to fix its input, and maps to HTTP through its base class in
:mod:`feint.errors`:

    ValidationFailed (422)
    ├── RuleInvalid            YAML or Sigma that pySigma rejects: message, path, line, column
    ├── RuleUnsupported        valid Sigma that Feint cannot evaluate: rule and feature
    ├── TrafficFormatInvalid   a traffic file that is not a log Feint reads: path, line, reason
    └── LabelsInvalid          a labels file without the ``id,label`` header or with no rows
    NotFound (404)
    └── RulePathMissing        a rule file or folder that does not exist
"""

from __future__ import annotations

from feint.errors import NotFound, ValidationFailed


class RuleInvalid(ValidationFailed):
    """YAML or Sigma that does not parse; ``detail`` keeps pySigma's (or PyYAML's) message."""

    slug, title = "rule-invalid", "Invalid Sigma rule"

    def __init__(self, message: str, *, path: str, line: int | None = None, column: int | None = None) -> None:
        where = path if line is None else f"{path}:{line}" + ("" if column is None else f":{column}")
        super().__init__(
            f"{where}: {message}",
            errors=[{"path": path, "line": line, "column": column, "message": message}],
        )
        self.message = message
        self.path = path
        self.line = line
        self.column = column


class RuleUnsupported(ValidationFailed):
    """A valid Sigma rule using a feature neither engine evaluates (a modifier, a field, ...)."""

    slug, title = "rule-unsupported", "Unsupported Sigma feature"

    def __init__(self, *, rule: str, feature: str, path: str = "<memory>") -> None:
        super().__init__(
            f"rule {rule!r} ({path}) uses an unsupported feature: {feature}",
            errors=[{"rule": rule, "feature": feature, "path": path}],
        )
        self.rule = rule
        self.feature = feature
        self.path = path


class TrafficFormatInvalid(ValidationFailed):
    """A traffic file that is not a log in a format Feint reads, found from its first lines."""

    slug, title = "traffic-format-invalid", "Unrecognised traffic file"

    def __init__(self, reason: str, *, path: str, line: int | None = None) -> None:
        where = path if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {reason}", errors=[{"path": path, "line": line, "reason": reason}])
        self.reason = reason
        self.path = path
        self.line = line


class LabelsInvalid(ValidationFailed):
    """A labels file Feint cannot use at all (bad header, no usable rows)."""

    slug, title = "labels-invalid", "Invalid labels file"

    def __init__(self, reason: str, *, path: str) -> None:
        super().__init__(f"{path}: {reason}", errors=[{"path": path, "reason": reason}])
        self.reason = reason
        self.path = path


class RulePathMissing(NotFound):
    """A rule file or folder named on the command line or in a request that does not exist."""

    slug, title = "rule-path-missing", "Rule path not found"

    def __init__(self, *, path: str) -> None:
        super().__init__(f"no Sigma file or folder at {path}", path=path)
        self.path = path
