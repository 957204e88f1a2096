"""The probe corpus (probes.yaml): raw requests that fingerprinting tools and scanners send.

The recorder sends it to a real server to learn the persona; the fidelity harness sends it to
the real server and the decoy side by side. Probes are data; this module only loads and expands them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import formatdate
from importlib import resources
from pathlib import Path

import yaml

from feint.errors import FeintError

PROBE_BYTES_MAX = 1_000_000  # an expanded probe larger than this is a typo in the corpus
REPEAT_COUNT_MAX = 100_000
_REPEAT = re.compile(r"\{\{rep (\d+)\}\}((?:(?!\{\{rep ).)*?)\{\{/rep\}\}", re.DOTALL)


class CorpusError(FeintError):
    """The probe corpus file is malformed."""

    slug = "probe-corpus"
    status = 500


@dataclass(frozen=True, slots=True)
class Probe:
    """One raw request: ``template`` before expansion, and where it comes from."""

    name: str
    source: str
    template: str

    def render(self, *, hostport: str, mtime: float = 0.0) -> bytes:
        """The bytes to send to a server reachable as ``hostport`` ("127.0.0.1:8080") whose
        site files were modified at ``mtime`` (the persona's site_mtime)."""
        text = self.template.replace("{{hostport}}", hostport)
        if "{{last_modified" in text:
            text = text.replace("{{last_modified}}", formatdate(int(mtime), usegmt=True))
            text = text.replace("{{last_modified_next}}", formatdate(int(mtime) + 1, usegmt=True))
        for _ in range(2):  # one level of nesting: {{rep 6}}X: {{rep 7000}}c{{/rep}}{{/rep}}
            text = _REPEAT.sub(_repeat, text)
        data = text.encode("latin-1")
        if len(data) > PROBE_BYTES_MAX:
            raise CorpusError(f"probe {self.name} expands to {len(data)} bytes (max {PROBE_BYTES_MAX})")
        return data


def _repeat(match: re.Match[str]) -> str:
    count = int(match.group(1))
    if count > REPEAT_COUNT_MAX:
        raise CorpusError(f"{{{{rep {count}}}}} repeats more than {REPEAT_COUNT_MAX} times")
    return match.group(2) * count


def load(path: Path | None = None) -> tuple[Probe, ...]:
    """The probes of ``path`` (default: the corpus shipped with Feint), in file order."""
    text = path.read_text("utf-8") if path else resources.files(__package__).joinpath("probes.yaml").read_text("utf-8")
    where = str(path or "probes.yaml")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CorpusError(f"{where}: not YAML: {exc}") from exc
    items = doc.get("probes") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise CorpusError(f"{where}: expected a mapping with a 'probes' list")
    probes: list[Probe] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("name", "source", "send")):
            raise CorpusError(f"{where}: probe #{index} needs string fields name, source and send")
        if item["name"] in seen:
            raise CorpusError(f"{where}: probe name {item['name']!r} appears twice")
        seen.add(item["name"])
        if any(ord(ch) > 0xFF for ch in item["send"]):
            raise CorpusError(f"{where}: probe {item['name']} has a character above \\xff (bytes only)")
        probes.append(Probe(name=item["name"], source=item["source"], template=item["send"]))
    return tuple(probes)
