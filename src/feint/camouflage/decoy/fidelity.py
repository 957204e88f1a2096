"""Compare a decoy's answers with the real server's, probe by probe (the fidelity harness's core).

Only what legitimately differs between two runs is normalised: the values of Date, ETag and
Last-Modified, and the host port each server echoes (they listen on different ports). Status
line, header names with case and order, other values, body and whether the connection closed
must be identical.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from feint.camouflage.decoy.exchange import Answer

_VOLATILE = re.compile(rb"(?im)^(date|etag|last-modified): [^\r\n]*")


def normalise(data: bytes, *, port: int) -> bytes:
    """``data`` with the volatile header values and the server's own port replaced by markers."""
    data = _VOLATILE.sub(lambda m: m.group(1) + b": *", data)
    return data.replace(str(port).encode(), b"PORT")


@dataclass(frozen=True, slots=True)
class Verdict:
    """One probe's comparison."""

    probe: str
    same: bool
    diff: str  # empty when same


def compare(real: Answer, decoy: Answer, *, real_port: int, decoy_port: int) -> Verdict:
    """Whether the decoy answered ``real.probe`` exactly as the real server did."""
    a = normalise(real.data, port=real_port)
    b = normalise(decoy.data, port=decoy_port)
    if a == b and real.closed == decoy.closed:
        return Verdict(real.probe, True, "")
    lines = []
    if real.closed != decoy.closed:
        lines.append(
            f"  close: real={'closed' if real.closed else 'open'} decoy={'closed' if decoy.closed else 'open'}"
        )
    if a != b:
        la = a.decode("latin-1").splitlines(keepends=True)
        lb = b.decode("latin-1").splitlines(keepends=True)
        for line in difflib.unified_diff(la, lb, "real", "decoy", n=1, lineterm=""):
            lines.append("  " + line.rstrip("\r\n")[:200])
            if len(lines) > 40:
                lines.append("  …")
                break
    return Verdict(real.probe, False, "\n".join(lines))


def score(verdicts: list[Verdict]) -> float:
    """The share of probes answered identically, 0..1."""
    return sum(v.same for v in verdicts) / len(verdicts) if verdicts else 0.0


def report(name: str, verdicts: list[Verdict]) -> str:
    """A per-probe listing of the differences and the score line."""
    out = [f"{v.probe}: DIFFERS\n{v.diff}" for v in verdicts if not v.same]
    same = sum(v.same for v in verdicts)
    out.append(f"{name}: {same}/{len(verdicts)} probes identical ({100 * score(verdicts):.1f}%)")
    return "\n".join(out)
