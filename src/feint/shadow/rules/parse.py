"""Sigma YAML to :class:`~.model.Rule`: pySigma parses, this module maps and checks.

pySigma resolves the condition (``1 of``, ``all of``, ``them``, ``not``) and applies the value
modifiers (``contains``, ``startswith``, ``endswith``, ``all``, ``base64``, ``base64offset``,
``wide``, ``windash``, ``cidr``, ``re`` and its flags, ``cased``, ``exists``, comparisons), so
the values reaching :func:`_value_test` already carry their meaning; this module turns them into
the six operations of :mod:`.ir`. What neither engine evaluates (field references, placeholders,
timestamp parts, booleans, correlation rules, unknown fields or log sources) raises
:class:`~feint.shadow.errors.RuleUnsupported` naming the rule and the feature.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import yaml
from sigma.collection import SigmaCollection
from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionNOT,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.correlations import SigmaCorrelationRule
from sigma.exceptions import SigmaError, SigmaRuleLocation
from sigma.rule import SigmaRule, SigmaYAMLLoader
from sigma.types import (
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaExpansion,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaRegularExpressionFlag,
    SigmaString,
    SigmaTimestampPart,
    SpecialChars,
)

from feint.shadow.errors import RuleInvalid, RulePathMissing, RuleUnsupported
from feint.shadow.record import ascii_lower
from feint.shadow.rules import _re2
from feint.shadow.rules.fields import KEYWORD_SOURCES, Source, is_response_field, mapping_of
from feint.shadow.rules.ir import (
    FALSE,
    TRUE,
    Compare,
    Expr,
    Test,
    all_of,
    any_of,
    negate,
)
from feint.shadow.rules.model import LEVEL_DEFAULT, Rule

RULE_BYTES_MAX: Final = 256 << 10
RULE_FILES_MAX: Final = 10_000
RULE_SUFFIXES: Final = (".yml", ".yaml")
SUPPORTED_CATEGORIES: Final = frozenset({"webserver", "proxy"})

_COMPARE: Final[dict[str, Compare]] = {"LT": "lt", "LTE": "lte", "GT": "gt", "GTE": "gte"}
_REGEX_FLAGS: Final = {
    SigmaRegularExpressionFlag.IGNORECASE: "i",
    SigmaRegularExpressionFlag.MULTILINE: "m",
    SigmaRegularExpressionFlag.DOTALL: "s",
}
_QUOTED: Final = re.compile(r"'([^']{2,})'")


class _Context:
    """What the conversion of one rule needs to name it in errors and to note what it reads."""

    def __init__(self, title: str, path: str) -> None:
        self.title = title
        self.path = path
        self.response = False
        self.unrecorded: set[str] = set()

    def unsupported(self, feature: str) -> RuleUnsupported:
        return RuleUnsupported(rule=self.title, feature=feature, path=self.path)


def parse_rules(text: str, *, path: str = "<memory>") -> list[Rule]:
    """Every rule in a YAML document stream (one Sigma file), compiled."""
    if len(text.encode("utf-8", "surrogatepass")) > RULE_BYTES_MAX:
        raise RuleInvalid(f"file is larger than {RULE_BYTES_MAX} bytes", path=path)
    try:
        documents = list(yaml.load_all(text, Loader=SigmaYAMLLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        raise RuleInvalid(str(exc), path=path, line=line, column=column) from exc
    except yaml.YAMLError as exc:
        raise RuleInvalid(str(exc), path=path, line=_line_of(text, str(exc))) from exc
    for index, document in enumerate(documents, start=1):
        if document is not None and not isinstance(document, dict):
            raise RuleInvalid(f"YAML document {index} is not a mapping", path=path)
    try:
        collection = SigmaCollection.from_dicts(
            [document for document in documents if document is not None],
            source=SigmaRuleLocation(Path(path)),
        )
        rules = [_compile(rule, path) for rule in collection.rules]
    except SigmaError as exc:
        raise _invalid(exc, text, path) from exc
    if not rules:
        raise RuleInvalid("no Sigma rule in file", path=path)
    return rules


def load_rules(path: Path) -> list[Rule]:
    """Every rule of a Sigma file, or of every ``*.yml``/``*.yaml`` under a folder, in path order."""
    if not path.exists():
        raise RulePathMissing(path=str(path))
    rules: list[Rule] = []
    for file in _rule_files(path):
        size = file.stat().st_size
        if size > RULE_BYTES_MAX:
            raise RuleInvalid(f"file is larger than {RULE_BYTES_MAX} bytes", path=str(file))
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise RuleInvalid(f"not UTF-8 text: {exc.reason}", path=str(file)) from exc
        rules.extend(parse_rules(text, path=str(file)))
    return rules


def _rule_files(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
        return
    files = sorted(p for p in path.rglob("*") if p.suffix in RULE_SUFFIXES and p.is_file())
    if len(files) > RULE_FILES_MAX:
        raise RuleInvalid(f"more than {RULE_FILES_MAX} rule files", path=str(path))
    if not files:
        raise RuleInvalid("folder holds no .yml or .yaml file", path=str(path))
    yield from files


def _line_of(text: str, message: str) -> int | None:
    """Best-effort line of an error pySigma reports without one: where its quoted value sits."""
    for fragment in _QUOTED.findall(message):
        for number, line in enumerate(text.splitlines(), start=1):
            if fragment in line:
                return number
    return None


def _invalid(exc: SigmaError, text: str, path: str) -> RuleInvalid:
    message = Exception.__str__(exc)  # SigmaError.__str__ appends the location, kept apart here
    source = exc.source
    line = source.line if source is not None else None
    column = source.char if source is not None else None
    if line is None and "condition" in type(exc).__name__.lower():
        rows = enumerate(text.splitlines(), start=1)
        line = next((number for number, row in rows if row.strip().startswith("condition")), None)
    if line is None:
        line = _line_of(text, message)
    return RuleInvalid(message, path=path, line=line, column=column)


def _content_hash(rule: SigmaRule) -> str:
    try:
        plain: Any = rule.to_dict()
    except SigmaError:  # pragma: no cover - only after processing pipelines, which Feint skips
        plain = repr(rule)
    # The hash names the rule's content, not where it was read from: pySigma puts the file's
    # location into the log source, which would make one rule hash differently per path.
    if isinstance(plain, dict) and isinstance(plain.get("logsource"), dict):
        plain["logsource"].pop("source", None)
    canonical = json.dumps(plain, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def _compile(rule: SigmaRule | SigmaCorrelationRule, path: str) -> Rule:
    title = str(rule.title or "untitled")
    if isinstance(rule, SigmaCorrelationRule):
        raise RuleUnsupported(rule=title, feature="correlation rule", path=path)
    context = _Context(title, path)
    category = (rule.logsource.category or "").lower()
    if category not in SUPPORTED_CATEGORIES:
        shown = category or f"product={rule.logsource.product} service={rule.logsource.service}"
        raise context.unsupported(f"log source {shown!r} (Feint reads webserver and proxy)")
    conditions = [condition.parsed for condition in rule.detection.parsed_condition]
    expr = any_of(_convert(condition, context) for condition in conditions)
    content_hash = _content_hash(rule)
    level = str(rule.level.name).lower() if rule.level is not None else LEVEL_DEFAULT
    return Rule(
        key=str(rule.id) if rule.id is not None else f"sha256:{content_hash[:16]}",
        title=title,
        level=level,
        expr=expr,
        content_hash=content_hash,
        post_response=context.response,
        author=rule.author,
        path=path,
        unrecorded_fields=tuple(sorted(context.unrecorded)),
    )


def _convert(node: object, context: _Context) -> Expr:
    if isinstance(node, ConditionAND):
        return all_of(_convert(arg, context) for arg in node.args)
    if isinstance(node, ConditionOR):
        return any_of(_convert(arg, context) for arg in node.args)
    if isinstance(node, ConditionNOT):
        return negate(_convert(node.args[0], context))
    if isinstance(node, ConditionFieldEqualsValueExpression):
        return _field_test(node.field, node.value, context)
    if isinstance(node, ConditionValueExpression):
        return _keyword_test(node.value, context)
    raise context.unsupported(f"condition element {type(node).__name__}")  # pragma: no cover


def _field_test(field: str, value: object, context: _Context) -> Expr:
    mapping = mapping_of(field)
    if mapping is None:
        raise context.unsupported(f"field {field!r} (not in the webserver/proxy mapping)")
    context.response = context.response or is_response_field(field)
    if isinstance(value, SigmaExpansion):
        return any_of(_field_test(field, item, context) for item in value.values)
    if not mapping.values or mapping.presence is None:
        context.unrecorded.add(field.lower())
        if isinstance(value, SigmaNull) or _is_empty(value):
            return TRUE
        if isinstance(value, SigmaExists):
            return FALSE if value.exists else TRUE
        if not isinstance(value, SigmaCompareExpression):
            _value_test("c_ip", value, context)  # still reject what is unsupported anywhere
        return FALSE
    if isinstance(value, SigmaNull) or _is_empty(value):
        return Test(mapping.presence, "null")
    if _is_star(value):  # '*': the field holds something; a question for its null check
        return negate(Test(mapping.presence, "null"))
    if isinstance(value, SigmaExists):
        present = negate(Test(mapping.presence, "null"))
        return present if value.exists else negate(present)
    if isinstance(value, SigmaCompareExpression):
        if mapping.values != ("sc_status",):
            raise context.unsupported(f"comparison modifier on field {field!r} (only sc-status)")
        return Test("sc_status", "num", str(value.number.number), compare=_COMPARE[value.op.name])
    tests = [_value_test(source, value, context) for source in mapping.values]
    if len(tests) == 2 and _implied(tests[0], tests[1]):
        return tests[1]
    return any_of(tests)


def _is_empty(value: object) -> bool:
    return isinstance(value, SigmaString) and not value.s


def _is_star(value: object) -> bool:
    return (
        isinstance(value, SigmaString)
        and bool(value.s)
        and all(part is SpecialChars.WILDCARD_MULTI for part in value.s)
    )


def _implied(query: Expr, uri: Expr) -> bool:
    """Whether a test of the query implies the same test of the target (which ends with it)."""
    return (
        isinstance(query, Test)
        and isinstance(uri, Test)
        and query.op in ("contains", "suffix")
        and (query.op, query.value, query.cased) == (uri.op, uri.value, uri.cased)
    )


def _keyword_test(value: object, context: _Context) -> Expr:
    if isinstance(value, SigmaExpansion):
        return any_of(_keyword_test(item, context) for item in value.values)
    if isinstance(value, SigmaNumber) and not isinstance(value, SigmaTimestampPart):
        value = SigmaString(str(value.number))
    if isinstance(value, SigmaString):
        cased = isinstance(value, SigmaCasedString)
        surrounded = _surround(value)
        return any_of(_string_test(source, surrounded, cased=cased, context=context) for source in KEYWORD_SOURCES)
    return any_of(_value_test(source, value, context) for source in KEYWORD_SOURCES)


def _surround(value: SigmaString) -> SigmaString:
    # A keyword is searched for anywhere in the event (Sigma's full-text search).
    surrounded = SigmaString()
    surrounded.s = [SpecialChars.WILDCARD_MULTI, *value.s, SpecialChars.WILDCARD_MULTI]
    return surrounded


def _value_test(source: Source, value: object, context: _Context) -> Expr:
    if isinstance(value, SigmaString):
        return _string_test(source, value, cased=isinstance(value, SigmaCasedString), context=context)
    if isinstance(value, SigmaTimestampPart):
        raise context.unsupported("timestamp part modifiers (minute, hour, day, ...)")
    if isinstance(value, SigmaNumber):
        return _string_test(source, SigmaString(str(value.number)), cased=False, context=context)
    if isinstance(value, SigmaRegularExpression):
        flags = "".join(sorted(_REGEX_FLAGS[flag] for flag in value.flags))
        # Explicit flags so every engine reads the pattern alike: ClickHouse lets '.' match a
        # newline unless told otherwise, RE2 elsewhere does not.
        prefix = f"(?{flags})" if "s" in flags else f"(?{flags}-s)"
        pattern = prefix + str(value.regexp)
        try:
            _re2.Regex(pattern)
        except _re2.RegexError as exc:  # pragma: no cover - pySigma already compiles with RE2
            raise context.unsupported(f"regular expression {pattern!r}: {exc}") from exc
        return Test(source, "regex", pattern)
    if isinstance(value, SigmaCIDRExpression):
        # pySigma's expansion to wildcards; exact for the canonical IPv4 text Feint stores.
        return any_of(
            _string_test(source, SigmaString(pattern), cased=False, context=context) for pattern in value.expand()
        )
    if isinstance(value, SigmaNull):
        raise context.unsupported("null as a keyword")  # pragma: no cover - pySigma rejects it
    feature = {
        "SigmaBool": "boolean values",
        "SigmaFieldReference": "the fieldref modifier",
        "SigmaQueryExpression": "query expressions",
        "SigmaExists": "exists on a keyword",
        "SigmaCompareExpression": "comparison modifiers on keywords",
    }.get(type(value).__name__, f"value type {type(value).__name__}")
    raise context.unsupported(feature)


def _string_test(source: Source, value: SigmaString, *, cased: bool, context: _Context) -> Expr:
    parts: list[str | SpecialChars] = []
    for part in value.s:
        if isinstance(part, SpecialChars):
            if part is SpecialChars.WILDCARD_MULTI and parts and parts[-1] is part:
                continue  # '**' is '*'
            parts.append(part)
        elif isinstance(part, str):  # pySigma merges adjacent text, so parts alternate
            parts.append(part if cased else ascii_lower(part))
        else:
            raise context.unsupported(f"placeholder %{part.name}% (the expand modifier)")
    star = SpecialChars.WILDCARD_MULTI
    literals = [part for part in parts if isinstance(part, str)]
    if not parts:  # pragma: no cover - fields answer '' with their presence test before this
        return Test(source, "null")
    if parts == [star]:
        return negate(Test(source, "null"))
    if len(literals) == 1 and len(parts) <= 3 and SpecialChars.WILDCARD_SINGLE not in parts:
        literal = literals[0]
        starts, ends = parts[0] is star, parts[-1] is star
        if len(parts) == 1:
            return Test(source, "eq", literal, cased)
        if len(parts) == 2:
            return Test(source, "suffix" if starts else "prefix", literal, cased)
        if starts and ends:
            return Test(source, "contains", literal, cased)
    body = "".join(
        ".*" if part is star else "." if isinstance(part, SpecialChars) else _re2.escape(part) for part in parts
    )
    needle = ascii_lower(max(literals, key=len)) if literals else ""
    return Test(source, "glob", f"(?s)^{body}$", cased, needle)
