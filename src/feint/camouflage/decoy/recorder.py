"""Learn a persona from a running server: send the probe corpus, turn each answer into a template.

For every request of every probe the recorder knows the situation key (situation.py) and sees
the real answer. The answer becomes a response template: values that vary per request or per
moment become placeholders (Date, Content-Length, the Server string, the host and port echoed,
the path), the connection headers become the persona's keep-alive and close blocks, a body equal
to the served file becomes ``file``, other bodies become pages. Rules are then learned by key:
for each backoff level (situation.Situation.lookup_keys), a key gets a rule when every probe sharing it
got the same answer and the coarser rules would not already give it.

The target must serve the persona's site tree (``site/``, tokens filled by
``responder.default_filler``) as its document root, so that files compare equal.
"""

from __future__ import annotations

import re
import zlib
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from feint.camouflage.decoy.contract import Request
from feint.camouflage.decoy.exchange import Answer
from feint.camouflage.decoy.http import RequestParser
from feint.camouflage.decoy.persona import CONNECTION_MARKER, PERSONA_FILE, Persona, fill_tokens
from feint.camouflage.decoy.probes import Probe
from feint.camouflage.decoy.responder import (
    default_filler,
    encode_path,
    listing_mtime,
    site_index,
    wants_keepalive,
)
from feint.camouflage.decoy.situation import Situation, situation, split_target

RESPONSES_PER_ANSWER_MAX = 16
_COMMON_WORDS = frozenset({"GET", "HEAD", "POST", "OPTIONS"})
_KEEPALIVE_MAX = re.compile(r"max=\d+")
Close = str  # always, by-request, ambiguous (closed, but the client did not ask to keep it)


@dataclass(frozen=True, slots=True)
class Raw:
    """One response cut out of an answer."""

    status: str | None
    headers: tuple[tuple[str, str], ...]
    body: bytes
    chunked: bool
    interim: str = ""


@dataclass(frozen=True, slots=True)
class Observation:
    """One request, what the server answered, and the template it abstracts to."""

    probe: str
    situation: Situation
    template: dict[str, Any]
    close: Close


def split_answer(data: bytes, *, heads: list[bool]) -> list[Raw]:
    """The responses in ``data``; ``heads[i]`` says whether request i was HEAD (no body)."""
    if not data.startswith(b"HTTP/"):
        return [Raw(status=None, headers=(), body=data, chunked=False)] if data else []
    out: list[Raw] = []
    interim = ""
    rest = data
    index = 0
    while rest.startswith(b"HTTP/") and len(out) < RESPONSES_PER_ANSWER_MAX:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0]
        headers = tuple((n, v.lstrip(" ")) for n, _, v in (line.partition(":") for line in lines[1:]))
        code = status.split(" ", 2)[1] if " " in status else ""
        if code.startswith("1"):
            interim += head.decode("latin-1") + "\r\n\r\n"
            continue
        lower = {n.lower(): v for n, v in headers}
        body = b""
        chunked = False
        is_head = heads[index] if index < len(heads) else False
        if is_head or code in ("204", "304"):
            pass
        elif lower.get("transfer-encoding", "").lower() == "chunked":
            chunked = True
            body, rest = _dechunk(rest)
        elif "content-length" in lower and lower["content-length"].isdigit():
            n = int(lower["content-length"])
            body, rest = rest[:n], rest[n:]
        else:
            body, rest = rest, b""
        out.append(Raw(status=status, headers=headers, body=body, chunked=chunked, interim=interim))
        interim = ""
        index += 1
    return out


def _dechunk(data: bytes) -> tuple[bytes, bytes]:
    body = b""
    while True:
        line, sep, data = data.partition(b"\r\n")
        if not sep:
            return body, b""
        try:
            size = int(line.split(b";")[0], 16)
        except ValueError:
            return body, data
        if size == 0:
            _, _, data = data.partition(b"\r\n")
            return body, data
        body += data[:size]
        data = data[size + 2 :]


def requests_of(payload: bytes, persona: Persona) -> list[Request]:
    """The requests the decoy's parser frames out of ``payload``, within the persona's limits."""
    parser = RequestParser(persona.limits)
    parser.feed(payload)
    out: list[Request] = []
    while len(out) < RESPONSES_PER_ANSWER_MAX:
        request = parser.next_request()
        if request is None:
            break
        out.append(request)
    return out


class Abstractor:
    """Turns raw responses into templates, collecting pages and connection blocks."""

    def __init__(self, persona: Persona, *, server: str, host: str, port: int) -> None:
        self.persona = persona
        self.server = server
        self.host = host
        self.port = str(port)
        self.site = persona.rendered_site(default_filler)
        self.index = site_index(persona, self.site)
        self.pages: dict[str, str] = {}  # page text -> file name
        self.keep_block: list[list[str]] | None = None
        self.close_block: list[list[str]] | None = None
        self.implied_block: list[list[str]] | None = None
        self.listing_mtime = listing_mtime(persona.site_mtime)

    def _text(self, text: str, request: Request) -> str:
        # A directory listing prints the files' mtime (the persona's): a placeholder, so that the
        # page stays true wherever the persona's files were checked out.
        text = text.replace(f">{self.listing_mtime}  <", ">{{listing_mtime}}  <")
        _, raw_path = split_target(request.target)
        path = raw_path.decode("latin-1")
        if self.server:
            text = text.replace(self.server, "{{server}}")
        text = text.replace(f"{self.host}:{self.port}", "{{hostport}}")
        text = text.replace(f"Port {self.port}", "Port {{port}}")
        if len(path) > 1:
            encoded = encode_path(raw_path)
            if encoded != path:
                text = text.replace(encoded, "{{path_encoded}}")
            text = text.replace(path, "{{path}}")
            method = request.method.decode("latin-1")
            text = text.replace(f"{method} {{{{path", "{{method}} {{path")
        method = request.method.decode("latin-1")
        if method not in _COMMON_WORDS and len(method) >= 3:
            # Apache: "<p>FOO not supported for current URL.<br />"
            text = re.sub(rf"(?<![A-Za-z]){re.escape(method)}(?= not supported)", "{{method}}", text)
        if len(method) >= 3:
            # Apache 405: "The requested method PUT is not allowed for this URL."
            text = text.replace(f"method {method} is not allowed", "method {{method}} is not allowed")
        return text.replace(self.host, "{{host}}")

    def _page(self, text: str, status: str) -> str:
        if text not in self.pages:
            code = status.split(" ", 2)[1] if status and " " in status else "09"
            n = sum(1 for name in self.pages.values() if name.startswith(f"pages/{code}"))
            self.pages[text] = f"pages/{code}{'-' + str(n + 1) if n else ''}.html"
        return self.pages[text]

    def template(self, raw: Raw, request: Request, sit: Situation, *, closed: bool) -> dict[str, Any]:
        """The response template of ``raw`` (a dict as persona.yaml holds it)."""
        body = raw.body
        encoding = "identity"
        lower = {n.lower(): v for n, v in raw.headers}
        if lower.get("content-encoding") == "gzip" and body:
            try:
                body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
                encoding = "gzip"
            except zlib.error:
                pass
        file = self.site.get(sit.resolved.path)
        is_head = request.method == b"HEAD"
        if file is not None and (body == file or (is_head and lower.get("content-length") == str(len(file)))):
            spec: dict[str, Any] = {"kind": "file"}
        elif file is not None and body and lower.get("content-range"):
            spec = {"kind": "file"}
        elif body:
            spec = {"kind": "page", "page": self._page(self._text(body.decode("latin-1"), request), raw.status or "")}
        else:
            spec = {"kind": "none"}
        if encoding == "gzip":
            spec["encoding"] = "gzip"
        if raw.chunked:
            spec["framing"] = "chunked"
        if is_head:
            spec["send"] = False
        headers: list[Any] = []
        block: list[list[str]] = []
        for name, value in raw.headers:
            low = name.lower()
            if low in ("connection", "keep-alive"):
                if not block:
                    headers.append(CONNECTION_MARKER)
                block.append([name, _KEEPALIVE_MAX.sub("max={{keepalive_max}}", value)])
                continue
            headers.append([name, self._value(low, value, request, spec)])
        implied = request.version not in (b"HTTP/1.0", None) and request.header(b"connection") is None
        if not closed and implied and self.implied_block is None:
            self.implied_block = block
        elif block:
            if closed and self.close_block is None and any(v.lower() == "close" for _, v in block):
                self.close_block = block
            if not closed and self.keep_block is None:
                self.keep_block = block
        out: dict[str, Any] = {"status": raw.status, "headers": headers, "body": spec}
        if raw.interim:
            out["interim"] = raw.interim
        return out

    def _value(self, low: str, value: str, request: Request, body: dict[str, Any]) -> str:
        if low in ("date", "last-modified"):
            return "{{date}}" if low == "date" else "{{last_modified}}"
        if low == "etag":
            if value.startswith("W/"):
                return "W/{{etag}}"
            return "{{etag_gzip}}" if value.endswith('-gzip"') else "{{etag}}"
        if low == "content-length" and (body["kind"] != "none" or value != "0"):
            return "{{content_length}}"
        if low == "content-range":
            return "{{content_range}}"
        if low == "content-type" and body["kind"] == "file":
            return "{{content_type}}"
        return self._text(value, request)


def _agree(group: list[tuple[str, Close]]) -> tuple[str, str]:
    """The answer most observations sharing a key got (a lone outlier, such as Apache's
    /server-status seen from loopback, must not erase the rule for every other path)."""
    counts: dict[str, int] = defaultdict(int)
    for rid, _ in group:
        counts[rid] += 1
    best = max(counts, key=lambda rid: (counts[rid], rid))
    closes = [c for rid, c in group if rid == best]
    always, by_request = closes.count("always"), closes.count("by-request")
    return best, ("always" if always > by_request else "by-request")


def learn_rules(observations: list[tuple[Situation, str, Close]]) -> dict[str, dict[str, str]]:
    """Rules from (situation, response id, close) triples; coarse keys first, redundant ones dropped."""
    by_key: dict[str, list[tuple[str, Close]]] = defaultdict(list)
    for sit, rid, close in observations:
        for key in sit.learning_keys():
            by_key[key].append((rid, close))
    rules: dict[str, dict[str, str]] = {}

    def lookup(sit_keys: list[str]) -> tuple[str, str] | None:
        for key in sit_keys:
            if key in rules:
                return rules[key]["response"], rules[key]["close"]
        return None

    # The default: the most common answer overall (a persona always has one).
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for sit, rid, close in observations:
        if sit.conditional:
            continue
        counts[(rid, "by-request" if close == "ambiguous" else close)] += 1
    best = max(counts, key=lambda k: counts[k])
    rules[""] = {"response": best[0], "close": best[1]}
    levels: dict[int, list[str]] = defaultdict(list)
    for sit, _, _ in observations:
        learnable = set(sit.learning_keys())
        for depth, key in enumerate(reversed(sit.lookup_keys())):
            if key and key in learnable and key not in levels[depth]:
                levels[depth].append(key)
    for depth in sorted(levels):
        for key in levels[depth]:
            agreed = _agree(by_key[key])
            coarser = list(_coarser(key))
            if lookup(coarser) != agreed:
                rules[key] = {"response": agreed[0], "close": agreed[1]}
    return rules


def _coarser(key: str) -> list[str]:
    parts = key.split("|")
    out = ["|".join(parts[:n]) for n in range(len(parts) - 1, 0, -1)]
    weightiest = parts[0].split("+", 1)[0]
    if weightiest != parts[0]:
        out.append(weightiest)
    out.append("")
    return out


def observe(
    probes: list[Probe], answers: dict[str, Answer], persona: Persona, abstractor: Abstractor
) -> list[Observation]:
    """An observation per request of each probe that the server answered."""
    out: list[Observation] = []
    hostport = f"{abstractor.host}:{abstractor.port}"
    for probe in probes:
        answer = answers.get(probe.name)
        if answer is None or answer.error:
            continue
        requests = requests_of(probe.render(hostport=hostport, mtime=persona.site_mtime), persona)
        raws = split_answer(answer.data, heads=[r.method == b"HEAD" for r in requests])
        if not raws and answer.closed and requests:
            # Hung up without a byte (Node on CONNECT with no 'connect' listener): a silent close.
            raws = [Raw(status=None, headers=(), body=b"", chunked=False)]
        for i, (request, raw) in enumerate(zip(requests, raws, strict=False)):
            last = i == len(raws) - 1
            closed = answer.closed and last
            sit = situation(request, abstractor.index)
            if not closed:
                close = "by-request"
            elif (wants_keepalive(request) and request.framing_intact) or _close_delimited(raw, request):
                close = "always"
            else:
                close = "ambiguous"
            out.append(Observation(probe.name, sit, abstractor.template(raw, request, sit, closed=closed), close))
    return out


def _close_delimited(raw: Raw, request: Request) -> bool:
    """Whether only closing the connection can end this response (no length, not chunked, a
    body allowed): the server closes whatever the client asked (Node's prewritten 400)."""
    if raw.status is None:
        return True
    code = raw.status.split(" ", 2)[1] if " " in raw.status else ""
    if raw.chunked or request.method == b"HEAD" or code.startswith("1") or code in ("204", "304"):
        return False
    return not any(name.lower() == "content-length" for name, _ in raw.headers)


def _shape(template: dict[str, Any]) -> tuple[Any, ...]:
    names = tuple(h if isinstance(h, str) else h[0] for h in template["headers"])
    return template["status"], names


def _heads_like_gets(observations: list[Observation]) -> None:
    """A HEAD answer has no body to learn from: take the body of a GET answer of the same shape."""
    bodies = {
        _shape(o.template): o.template["body"]
        for o in observations
        if o.template["body"].get("send", True) and o.template["body"]["kind"] != "none"
    }
    for obs in observations:
        body = obs.template["body"]
        if body.get("send", True) or body["kind"] != "none":
            continue
        like = bodies.get(_shape(obs.template))
        if like is not None:
            obs.template["body"] = {**like, "send": False}


def _connection_markers(observations: list[Observation]) -> None:
    """An answer without connection headers (Apache to an HTTP/1.1 client that sent no
    Connection header) takes the marker position of an answer of the same shape that had them."""
    marked: dict[tuple[Any, ...], list[Any]] = {}
    for obs in observations:
        headers = obs.template["headers"]
        if CONNECTION_MARKER in headers:
            bare = tuple(tuple(h) for h in headers if h != CONNECTION_MARKER)
            marked.setdefault((obs.template["status"], bare), headers)
    for obs in observations:
        headers = obs.template["headers"]
        if CONNECTION_MARKER not in headers:
            like = marked.get((obs.template["status"], tuple(tuple(h) for h in headers)))
            if like is not None:
                obs.template["headers"] = list(like)


def _encoded_paths(observations: list[Observation], abstractor: Abstractor) -> None:
    """A page that echoes the path as sent (``{{path}}``) is the page that echoes it encoded
    (``{{path_encoded}}``, Express's "Cannot GET …") when that one was seen too: the two differ
    only for the paths that encoding changes, and the encoded page answered those."""
    names = {name: text for text, name in abstractor.pages.items()}
    for obs in observations:
        body = obs.template["body"]
        text = names.get(body.get("page", ""))
        if text is None or "{{path}}" not in text:
            continue
        encoded = abstractor.pages.get(text.replace("{{path}}", "{{path_encoded}}"))
        if encoded is not None:
            body["page"] = encoded
    used = {obs.template["body"].get("page") for obs in observations}
    for text, name in list(abstractor.pages.items()):
        if name not in used:
            del abstractor.pages[text]


def build(
    observations: list[Observation], abstractor: Abstractor
) -> tuple[dict[str, Any], dict[str, dict[str, str]], list[str]]:
    """Response templates by id, rules, and the conflicts (keys whose probes disagreed at full precision)."""
    _encoded_paths(observations, abstractor)
    _heads_like_gets(observations)
    _connection_markers(observations)
    ids: dict[str, str] = {}
    responses: dict[str, Any] = {}
    triples: list[tuple[Situation, str, Close]] = []
    for obs in observations:
        text = yaml.safe_dump(obs.template, sort_keys=True)
        if text not in ids:
            silent = obs.template["body"]["kind"] == "none"
            code = (obs.template["status"] or ("- silent" if silent else "HTTP/0.9 body")).split(" ", 2)[1]
            n = sum(1 for rid in responses if rid.startswith(f"r{code}"))
            ids[text] = f"r{code}" + (f"-{n + 1}" if n else "")
            responses[ids[text]] = obs.template
        triples.append((obs.situation, ids[text], obs.close))
    rules = learn_rules(triples)
    conflicts = []
    full: dict[str, set[str]] = defaultdict(set)
    for sit, rid, _ in triples:
        full[sit.lookup_keys()[0]].add(rid)
    conflicts = sorted(k for k, v in full.items() if len(v) > 1)
    return responses, rules, conflicts


def write(
    out_dir: Path,
    *,
    base: dict[str, Any],
    responses: dict[str, Any],
    rules: dict[str, dict[str, str]],
    abstractor: Abstractor,
    source: dict[str, Any],
) -> Path:
    """Write persona.yaml and pages/ into ``out_dir`` (the site tree is left as it is)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # A timeout's answer cannot be probed in a recording's time (Node's 408 comes after 60 s):
    # the hand-written response a timeout names is kept, and with it its page.
    kept = dict(base.get("responses") or {})
    kept_ids = [rid for rid in (base.get("timeouts") or {}).values() if rid in kept and rid not in responses]
    kept_pages = {str((kept[rid].get("body") or {}).get("page")) for rid in kept_ids}
    pages = out_dir / "pages"
    if pages.is_dir():
        for old in pages.glob("*.html"):
            if f"pages/{old.name}" not in kept_pages or f"pages/{old.name}" in abstractor.pages.values():
                old.unlink()
    pages.mkdir(exist_ok=True)
    for text, name in abstractor.pages.items():
        (out_dir / name).write_bytes(text.encode("latin-1"))
    doc = dict(base)
    doc["name"] = out_dir.name
    doc["source"] = source
    connection = dict(doc.get("connection") or {})
    if abstractor.keep_block:
        connection["keep-alive"] = abstractor.keep_block
    if abstractor.close_block:
        connection["close"] = abstractor.close_block
    if abstractor.implied_block is not None:
        connection["keep-alive-implied"] = abstractor.implied_block
    doc["connection"] = connection
    doc["responses"] = {**{rid: kept[rid] for rid in kept_ids}, **responses}
    doc["rules"] = rules
    if "extends" not in doc:  # a variant inherits its parent's timeouts unless it names its own
        doc.setdefault("timeouts", {})
    path = out_dir / PERSONA_FILE
    header = (
        "# Recorded by `feint camouflage record`; see docs/decoys.md for every field.\n"
        "# Hand-written fields (limits, gzip, etag, mime, index, timeouts, server_format) are kept on re-recording.\n"
    )
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=False, width=200), "utf-8")
    return path


def recorded_at() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_site(persona: Persona, dest: Path) -> None:
    """Write the persona's site tree, tokens filled with the default filler, under ``dest`` (a docroot)."""
    for path, data in persona.site.items():
        target = dest / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(fill_tokens(data, default_filler))


def write_docroot(persona: Persona, dest: Path) -> int:
    """The persona's site tree under ``dest`` as a real server must serve it for ``record``: tokens
    filled by the default filler, every mtime the persona's (so Last-Modified and ETag agree).
    Returns the number of files written."""
    import os

    render_site(persona, dest)
    for path in [dest, *dest.rglob("*")]:
        os.utime(path, (persona.site_mtime, persona.site_mtime))
    return len(persona.site)


@dataclass(frozen=True, slots=True)
class Recording:
    """What one recording run produced."""

    path: Path
    probes: int
    observations: int
    responses: int
    rules: int
    conflicts: list[str]
    server: str


def record(
    *,
    host: str,
    port: int,
    out_dir: Path,
    start_from: Path,
    version: str | None,
    configuration: str,
    progress: Any = None,
    probe_list: list[Probe] | None = None,
) -> Recording:
    """Send the corpus to ``host:port`` and write the persona learned from its answers into ``out_dir``.

    ``start_from`` is the persona directory whose hand-written fields (limits, gzip, mime, …) and
    site tree the recording keeps: ``out_dir`` itself when it already holds a persona.
    """
    import asyncio
    import shutil

    from feint.camouflage.decoy import persona as persona_mod
    from feint.camouflage.decoy import probes as probes_mod
    from feint.camouflage.decoy.exchange import exchange_all

    base_persona = persona_mod.load(str(start_from))
    base_doc = yaml.safe_load((start_from / PERSONA_FILE).read_text("utf-8"))
    if start_from.resolve() != out_dir.resolve():
        out_dir.mkdir(parents=True, exist_ok=True)
        if (start_from / "site").is_dir() and not (out_dir / "site").exists():
            shutil.copytree(start_from / "site", out_dir / "site")
    probes = probe_list if probe_list is not None else list(probes_mod.load())
    answers = asyncio.run(exchange_all(host, port, probes, mtime=base_persona.site_mtime, progress=progress))
    server = ""
    for answer in answers.values():
        for raw in split_answer(answer.data, heads=[False]):
            found = {n.lower(): v for n, v in raw.headers}.get("server")
            if found:
                server = found
                break
        if server:
            break
    announced = version
    if announced is None and "/" in server:
        announced = server.split("/", 1)[1]
    if announced and server:
        base_doc["server_format"] = server.replace(announced, "{version}")
        base_doc["version"] = announced
    elif not server:
        base_doc["server_format"] = ""
    abstractor = Abstractor(base_persona, server=server, host=host, port=port)
    observations = observe(probes, answers, base_persona, abstractor)
    responses, rules, conflicts = build(observations, abstractor)
    source = {
        "server": server or "(no Server header)",
        "version": announced or "",
        "configuration": configuration,
        "target": f"http://{host}:{port}",
        "recorded_at": recorded_at(),
        "recorded_with": "feint camouflage record",
        "probes": len(probes),
        "conflicts": conflicts,
    }
    # A variant (``extends``) stays one: its hand-written fields and site tree come from its parent.
    path = write(out_dir, base=base_doc, responses=responses, rules=rules, abstractor=abstractor, source=source)
    return Recording(
        path=path,
        probes=len(probes),
        observations=len(observations),
        responses=len(responses),
        rules=len(rules),
        conflicts=conflicts,
        server=server,
    )
