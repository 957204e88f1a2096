"""Personas as data: a directory with persona.yaml, its error pages and its site tree.

    personas/<name>/persona.yaml   who it is, where it was recorded, limits, rules, responses
    personas/<name>/pages/…        bodies of the answers that are not files (404 page, …)
    personas/<name>/site/…         the files it serves (index, login and admin panels, .env, …)

A persona may ``extends: <other>`` and override top-level keys (a variant: another version,
``server_tokens off``); its pages and site come from the persona that defines them. Templates use
``{{name}}`` placeholders, documented in docs/decoys.md; the site's honeytokens are
``{{token:KIND}}`` and are filled per session by the engine. Adding a persona needs no code.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from feint.camouflage.decoy.contract import Limits
from feint.camouflage.decoy.situation import HeaderFlag, SiteIndex
from feint.errors import FeintError

PERSONA_FILE = "persona.yaml"
DOT_PREFIX = "_dot_"  # a site path segment "_dot_git" is served as ".git"
SITE_FILES_MAX = 2_000
SITE_FILE_BYTES_MAX = 1_000_000
EXTENDS_DEPTH_MAX = 4
CONNECTION_MARKER = "@connection"
_PLACEHOLDER = re.compile(r"\{\{([a-z_]+(?::[a-z0-9_]+)?)\}\}")
_TOKEN = re.compile(rb"\{\{token:([a-z0-9_]+)\}\}")
_VERSION_TEXT = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,62}[\x21-\x7e])?")  # no CR/LF: it goes into headers

ClosePolicy = Literal["always", "by-request"]
BodyKind = Literal["none", "page", "file", "inline"]

# Filled per session by the engine (feint.camouflage): kind ("aws_access_key") -> a value.
TokenFiller = Callable[[str], str]


class PersonaError(FeintError):
    """A persona's data is missing or malformed; the message names the file and the field."""

    slug = "persona-invalid"
    status = 500


@dataclass(frozen=True, slots=True)
class Template:
    """A string with ``{{name}}`` placeholders, split once at load time."""

    parts: tuple[str, ...]  # literal, name, literal, name, …, literal

    @classmethod
    def parse(cls, text: str) -> Template:
        return cls(parts=tuple(_PLACEHOLDER.split(text)))

    @property
    def names(self) -> tuple[str, ...]:
        return self.parts[1::2]

    def render(self, values: Mapping[str, str]) -> str:
        if len(self.parts) == 1:
            return self.parts[0]
        out = list(self.parts)
        for i in range(1, len(out), 2):
            out[i] = values.get(out[i], "")
        return "".join(out)


@dataclass(frozen=True, slots=True)
class Body:
    """Where an answer's body comes from and how it is encoded and framed."""

    kind: BodyKind
    page: Template | None = None  # kind page (text of pages/…) or inline
    encoding: Literal["identity", "gzip"] = "identity"
    framing: Literal["length", "chunked"] = "length"
    send: bool = True  # False for HEAD: headers as for GET, no body


@dataclass(frozen=True, slots=True)
class Response:
    """One answer template: status line, headers in order (with the connection block), body."""

    id: str
    status: str | None  # "HTTP/1.1 404 Not Found"; None: an HTTP/0.9 answer, body only
    headers: tuple[tuple[Template, Template] | None, ...]  # None marks where the connection block goes
    body: Body
    interim: str = ""  # sent before the status line (e.g. "HTTP/1.1 100 Continue\r\n\r\n")
    # (flag, response id): answer that response instead when the request carries the persona flag
    # (Spring's error page: the Whitelabel HTML for Accept: text/html, JSON otherwise).
    alternates: tuple[tuple[HeaderFlag, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Rule:
    """What a persona answers in a situation, and whether it closes afterwards."""

    response: str
    close: ClosePolicy


@dataclass(frozen=True, slots=True)
class Gzip:
    """How the server compresses (zlib parameters, the gzip header bytes it writes)."""

    level: int
    window_bits: int
    mem_level: int
    xfl: int  # the gzip header's XFL byte (nginx writes 4, Apache 0)
    shrink_window: bool  # nginx lowers window and memLevel for small known lengths
    types: tuple[str, ...]
    min_http: str  # "HTTP/1.1": no compression for HTTP/1.0 requests (nginx gzip_http_version)


@dataclass(frozen=True, slots=True)
class Persona:
    """A loaded persona; see the module docstring and docs/decoys.md for the fields."""

    name: str
    family: str
    description: str
    source: Mapping[str, Any]
    version: str
    server_format: str
    limits: Limits
    connection_keep: tuple[tuple[Template, Template], ...]
    connection_close: tuple[tuple[Template, Template], ...]
    # HTTP/1.1 without a Connection header: Apache sends no connection headers, nginx the usual.
    connection_implied: tuple[tuple[Template, Template], ...]
    index_names: tuple[str, ...]
    mime: Mapping[str, str]
    mime_default: str
    etag_format: str
    gzip: Gzip | None
    responses: Mapping[str, Response]
    rules: Mapping[str, Rule]
    timeouts: Mapping[str, str | None]  # phase -> response id, None: close silently
    site: Mapping[str, bytes]  # path -> raw bytes (with {{token:…}} placeholders)
    site_mtime: float
    directory: Path
    extends: str | None = None
    special_paths: Mapping[str, str] = field(default_factory=dict)
    vars: Mapping[str, str] = field(default_factory=dict)
    # "any-segment" (default): a path with a dot segment anywhere is a dotfile; "last-segment":
    # only one whose last segment starts with a dot (Express's static: /.git/config is served).
    dotfiles: Literal["any-segment", "last-segment"] = "any-segment"
    flags: tuple[HeaderFlag, ...] = ()

    @property
    def server(self) -> str:
        """The Server header value (and signature) for this persona's version."""
        return self.server_format.replace("{version}", self.version)

    def with_version(self, version: str) -> Persona:
        """The same persona announcing ``version`` (Server header and signatures agree)."""
        if not _VERSION_TEXT.fullmatch(version):
            raise PersonaError(
                f'version {version!r} must be 1-64 printable ASCII characters (e.g. 1.24.0 or "2.4.71 (Debian)")'
            )
        if "{version}" not in self.server_format:
            raise PersonaError(
                f"persona {self.name} does not announce a version (server_format {self.server_format!r})"
            )
        return _replace(self, version=version)

    def site_index(self, etag_of: Callable[[str], str] | None = None) -> SiteIndex:
        """The site's paths; ``etag_of`` (a file's ETag) lets If-None-Match be compared."""
        return SiteIndex(
            files=frozenset(self.site),
            index_names=self.index_names,
            special=dict(self.special_paths),
            dot_last_segment=self.dotfiles == "last-segment",
            flags=self.flags,
            mtime=self.site_mtime,
            etag_of=etag_of,
        )

    def rendered_site(self, fill: TokenFiller) -> dict[str, bytes]:
        """The site tree with every ``{{token:KIND}}`` filled."""
        return {path: fill_tokens(data, fill) for path, data in self.site.items()}


def _replace(persona: Persona, **changes: Any) -> Persona:
    return dataclasses.replace(persona, **changes)


def fill_tokens(data: bytes, fill: TokenFiller) -> bytes:
    """``data`` with every ``{{token:KIND}}`` replaced by ``fill(KIND)``."""
    if b"{{token:" not in data:
        return data
    return _TOKEN.sub(lambda m: fill(m.group(1).decode()).encode(), data)


def builtin_root() -> Path:
    """The directory of the personas shipped with Feint."""
    return Path(str(resources.files("feint.camouflage.decoy").joinpath("personas")))


def available(root: Path | None = None) -> list[str]:
    """Names of the personas under ``root`` (default: the shipped ones), sorted."""
    base = root or builtin_root()
    return sorted(p.name for p in base.iterdir() if (p / PERSONA_FILE).is_file())


def load(name: str, *, root: Path | None = None, version: str | None = None) -> Persona:
    """The persona ``name`` from ``root`` (or a persona directory given as a path)."""
    base = root or builtin_root()
    candidate = Path(name)
    directory = candidate if (candidate / PERSONA_FILE).is_file() else base / name
    if not (directory / PERSONA_FILE).is_file():
        known = ", ".join(available(base))
        raise PersonaError(f"unknown persona {name!r}: not a persona directory, nor one of {known}")
    doc, site_dirs, page_dir = _resolve(directory, base, depth=0)
    persona = _build(doc, directory=directory, site_dirs=site_dirs, page_dir=page_dir)
    return persona.with_version(version) if version is not None else persona


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PersonaError(f"no persona at {path.parent} ({PERSONA_FILE} missing)")
    try:
        doc = yaml.safe_load(path.read_text("utf-8"))
    except yaml.YAMLError as exc:
        raise PersonaError(f"{path}: not YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise PersonaError(f"{path}: expected a mapping at the top")
    return doc


def _resolve(directory: Path, base: Path, *, depth: int) -> tuple[dict[str, Any], list[Path], Path]:
    """The merged document, the site directories (later ones laid over earlier), where its pages come from.

    A variant's own ``site/`` replaces its parent's, or with ``site_overlay: true`` is laid over
    it (upstream nginx's index.html over the Debian tree)."""
    if depth > EXTENDS_DEPTH_MAX:
        raise PersonaError(f"{directory}: 'extends' nests deeper than {EXTENDS_DEPTH_MAX}")
    doc = _read_yaml(directory / PERSONA_FILE)
    parent = doc.get("extends")
    site_dirs = [directory / "site"]
    page_dir = directory
    if parent:
        parent_doc, parent_site, parent_pages = _resolve(base / str(parent), base, depth=depth + 1)
        merged = {**parent_doc, **doc}
        if not site_dirs[0].is_dir():
            site_dirs = parent_site
        elif doc.get("site_overlay") is True:
            site_dirs = [*parent_site, *site_dirs]
        if "responses" not in doc:
            page_dir = parent_pages
        return merged, site_dirs, page_dir
    return doc, site_dirs, page_dir


def _need(doc: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind):
        raise PersonaError(f"{where}: '{key}' must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _headers(items: Any, where: str) -> tuple[tuple[Template, Template] | None, ...]:
    if not isinstance(items, list):
        raise PersonaError(f"{where}: headers must be a list of [name, value] pairs")
    out: list[tuple[Template, Template] | None] = []
    for item in items:
        if item == CONNECTION_MARKER:
            out.append(None)
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item):
            out.append((Template.parse(item[0]), Template.parse(item[1])))
        else:
            raise PersonaError(f"{where}: header {item!r} is neither [name, value] nor {CONNECTION_MARKER!r}")
    return tuple(out)


def _body(spec: Any, page_dir: Path, where: str) -> Body:
    if not isinstance(spec, dict) or spec.get("kind") not in ("none", "page", "file", "inline"):
        raise PersonaError(f"{where}: body needs kind none, page, file or inline")
    page = None
    if spec["kind"] == "page":
        path = page_dir / str(spec.get("page"))
        if not path.is_file():
            raise PersonaError(f"{where}: page {path} does not exist")
        page = Template.parse(path.read_bytes().decode("latin-1"))
    elif spec["kind"] == "inline":
        page = Template.parse(str(spec.get("text", "")))
    encoding = spec.get("encoding", "identity")
    framing = spec.get("framing", "length")
    if encoding not in ("identity", "gzip") or framing not in ("length", "chunked"):
        raise PersonaError(f"{where}: encoding must be identity or gzip, framing length or chunked")
    return Body(kind=spec["kind"], page=page, encoding=encoding, framing=framing, send=bool(spec.get("send", True)))


def _load_site(site_dirs: list[Path]) -> tuple[dict[str, bytes], float]:
    site: dict[str, bytes] = {}
    newest = 0.0
    for site_dir in site_dirs:
        if site_dir.is_dir():
            newest = max(newest, _load_site_dir(site_dir, site))
    return site, newest


def _load_site_dir(site_dir: Path, site: dict[str, bytes]) -> float:
    newest = 0.0
    for path in sorted(site_dir.rglob("*")):
        if not path.is_file():
            continue
        if len(site) >= SITE_FILES_MAX:
            raise PersonaError(f"{site_dir}: more than {SITE_FILES_MAX} files")
        size = path.stat().st_size
        if size > SITE_FILE_BYTES_MAX:
            raise PersonaError(f"{path}: {size} bytes (max {SITE_FILE_BYTES_MAX})")
        # git cannot hold a directory named .git: "_dot_git" in the data is ".git" on the site.
        parts = ["." + p[5:] if p.startswith(DOT_PREFIX) else p for p in path.relative_to(site_dir).parts]
        site["/" + "/".join(parts)] = path.read_bytes()
        newest = max(newest, path.stat().st_mtime)
    return newest


def _flags(spec: Any, where: str) -> tuple[HeaderFlag, ...]:
    """``flags: {html: {header: accept, contains: text/html}}`` -> extras flags (situation.py)."""
    if spec is None:
        return ()
    if not isinstance(spec, dict):
        raise PersonaError(f"{where}: 'flags' must be a mapping of flag -> {{header, contains}}")
    out = []
    for flag, item in spec.items():
        if not (
            isinstance(flag, str)
            and re.fullmatch(r"[a-z0-9-]+", flag)
            and isinstance(item, dict)
            and isinstance(item.get("header"), str)
            and isinstance(item.get("contains"), str)
        ):
            raise PersonaError(f"{where}: flags.{flag}: needs a lowercase name and string 'header' and 'contains'")
        out.append(HeaderFlag(flag, item["header"].lower().encode(), item["contains"].lower().encode()))
    return tuple(out)


def _dotfiles(value: Any, where: str) -> Literal["any-segment", "last-segment"]:
    if value == "any-segment":
        return "any-segment"
    if value == "last-segment":
        return "last-segment"
    raise PersonaError(f"{where}: 'dotfiles' must be any-segment or last-segment, got {value!r}")


def _limits(spec: Any, where: str) -> Limits:
    if not isinstance(spec, dict):
        raise PersonaError(f"{where}: 'limits' must be a mapping")
    try:
        return Limits(**spec)
    except TypeError as exc:
        raise PersonaError(f"{where}: limits: {exc}") from exc


def _build(doc: dict[str, Any], *, directory: Path, site_dirs: list[Path], page_dir: Path) -> Persona:
    where = str(directory / PERSONA_FILE)
    responses: dict[str, Response] = {}
    for rid, spec in _need(doc, "responses", dict, where).items():
        at = f"{where}: responses.{rid}"
        if not isinstance(spec, dict):
            raise PersonaError(f"{at}: must be a mapping")
        status = spec.get("status")
        if status is not None and not isinstance(status, str):
            raise PersonaError(f"{at}: status must be a string or null")
        responses[str(rid)] = Response(
            id=str(rid),
            status=status,
            headers=_headers(spec.get("headers", []), at),
            body=_body(spec.get("body", {"kind": "none"}), page_dir, at),
            interim=str(spec.get("interim", "")),
        )
    flags = _flags(doc.get("flags"), where)
    by_flag = {f.flag: f for f in flags}
    for rid, spec in _need(doc, "responses", dict, where).items():
        alternates = spec.get("alternates") or {}
        if not isinstance(alternates, dict) or any(
            f not in by_flag or r not in responses for f, r in alternates.items()
        ):
            raise PersonaError(f"{where}: responses.{rid}.alternates must map declared flags to responses")
        if alternates:
            pairs = tuple((by_flag[f], str(r)) for f, r in alternates.items())
            responses[str(rid)] = dataclasses.replace(responses[str(rid)], alternates=pairs)
    rules: dict[str, Rule] = {}
    for key, spec in _need(doc, "rules", dict, where).items():
        if not isinstance(spec, dict) or spec.get("response") not in responses:
            raise PersonaError(f"{where}: rule {key!r} must name one of the responses")
        close = spec.get("close", "by-request")
        if close not in ("always", "by-request"):
            raise PersonaError(f"{where}: rule {key!r}: close must be always or by-request")
        rules[str(key or "")] = Rule(response=spec["response"], close=close)
    if "" not in rules:
        raise PersonaError(f"{where}: rules need a default (the key '')")
    timeouts = doc.get("timeouts") or {}
    for phase, rid in timeouts.items():
        # head-line: the head timeout before a whole request line arrived (Apache closes silently then).
        if phase not in ("head", "head-line", "body", "idle") or (rid is not None and rid not in responses):
            raise PersonaError(f"{where}: timeouts.{phase} must name a response or be null")
    connection = _need(doc, "connection", dict, where)
    gzip_spec = doc.get("gzip")
    gzip = None
    if gzip_spec:
        try:
            gzip = Gzip(
                level=int(gzip_spec["level"]),
                window_bits=int(gzip_spec.get("window_bits", 15)),
                mem_level=int(gzip_spec.get("mem_level", 8)),
                xfl=int(gzip_spec.get("xfl", 0)),
                shrink_window=bool(gzip_spec.get("shrink_window", False)),
                types=tuple(gzip_spec.get("types", ["text/html"])),
                min_http=str(gzip_spec.get("min_http", "HTTP/1.0")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PersonaError(f"{where}: gzip: {exc}") from exc
    site, mtime = _load_site(site_dirs)
    persona = Persona(
        name=str(_need(doc, "name", str, where)),
        family=str(_need(doc, "family", str, where)),
        description=str(doc.get("description", "")),
        source=dict(doc.get("source") or {}),
        version=str(doc.get("version", "")),
        server_format=str(doc.get("server_format", "")),
        limits=_limits(doc.get("limits"), where),
        connection_keep=tuple(h for h in _headers(connection.get("keep-alive", []), where) if h),
        connection_close=tuple(h for h in _headers(connection.get("close", []), where) if h),
        connection_implied=tuple(
            h for h in _headers(connection.get("keep-alive-implied", connection.get("keep-alive", [])), where) if h
        ),
        index_names=tuple(doc.get("index", ["index.html"])),
        mime={str(k): str(v) for k, v in (doc.get("mime") or {}).items()},
        mime_default=str(doc.get("mime_default", "application/octet-stream")),
        etag_format=str(doc.get("etag", "")),
        gzip=gzip,
        responses=responses,
        rules=rules,
        timeouts={str(k): v for k, v in timeouts.items()},
        site=site,
        site_mtime=mtime,
        directory=directory,
        extends=doc.get("extends"),
        special_paths={str(k): str(v) for k, v in (doc.get("special_paths") or {}).items()},
        vars={str(k): str(v) for k, v in (doc.get("vars") or {}).items()},
        dotfiles=_dotfiles(doc.get("dotfiles", "any-segment"), where),
        flags=flags,
    )
    if doc.get("name") != directory.name:
        raise PersonaError(f"{where}: name {doc.get('name')!r} differs from its directory {directory.name!r}")
    return persona
