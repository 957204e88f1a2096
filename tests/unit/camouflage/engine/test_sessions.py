"""Sessions: sticky per client, arm chosen once, engagement recorded, idle end rewards the bandit."""

from __future__ import annotations

import uuid

import pytest

from feint.camouflage.decoy.responder import default_filler
from feint.camouflage.engine.bandit import Bandit, MemoryBanditStore
from feint.camouflage.engine.bands import Band, HoldGate
from feint.camouflage.engine.events import EventId, EventSink
from feint.camouflage.engine.honeytokens import SITE_KINDS, Honeytokens, HoneytokenWatch, TokenKind
from feint.camouflage.engine.sessions import FOLLOWUPS_FULL, SESSION_END_FAILURES, Session, SessionBook, reward
from feint.errors import InvariantViolated
from tests.unit.camouflage.engine.fakes import CONN, Persona, TokenStore, request

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def book(clock: Clock, *, sessions_max: int = 100, gate: HoldGate | None = None) -> tuple[SessionBook, list]:
    store = MemoryBanditStore()
    personas = {"nginx": Persona(), "apache": Persona(b"Apache/2.4.58 (Debian)")}
    sink = EventSink(clock=clock)
    events: list = []
    sink.listen(events.append)
    watch = HoneytokenWatch(honeytokens=Honeytokens(b"\x03" * 32), store=TokenStore(), events=sink)
    b = SessionBook(
        tenant_id=uuid.uuid4(),
        bandit=Bandit(store, personas=tuple(sorted(personas))),
        events=sink,
        personas=personas,
        watch=watch,
        gate=gate,
        idle_seconds=60,
        sessions_max=sessions_max,
        clock=clock,
    )
    return b, events


async def test_arm_chosen_once_and_session_sticky() -> None:
    """A client keeps its session and arm over many requests, whatever their threat level."""
    clock = Clock()
    b, events = book(clock)
    assert b.sticky("c1") is None
    first, _ = await b.answer(client_key="c1", threat=2, request=request(b"/"), conn=CONN)
    for threat in (10, 0, 5):
        clock.now += 1
        again, _ = await b.answer(client_key="c1", threat=threat, request=request(b"/x"), conn=CONN)
        assert again is first
    assert b.sticky("c1") is first and first.band is Band.LIGHT and first.requests == 4
    assert first.arm == f"{first.persona}/{first.profile.name}"
    assert [e.event_id for e in events].count(EventId.SESSION_START) == 1


async def test_honeytokens_planted_and_taken() -> None:
    """A persona's placeholders are filled with the session's tokens, and the session took them."""
    clock = Clock()
    b, events = book(clock)
    session, reply = await b.answer(client_key="c2", threat=1, request=request(b"/.env"), conn=CONN)
    assert session.tokens is not None
    body = reply.data + b"".join(chunk for _, chunk in reply.trickle)
    assert session.tokens.values[TokenKind.API_KEY].encode() in body and b"{{honeytoken" not in body
    assert session.tokens_taken == 1
    assert EventId.HONEYTOKEN_TAKEN in [e.event_id for e in events]


async def test_maximum_band_gets_the_labyrinth_and_slow_replies() -> None:
    """Threat 9-10: unknown paths become generated pages, admin pages leak tokens, replies are held."""
    clock = Clock()
    b, _ = book(clock)
    session, reply = await b.answer(client_key="c3", threat=10, request=request(b"/admin/"), conn=CONN)
    assert session.band is Band.MAXIMUM and session.profile.labyrinth
    whole = reply.data + b"".join(chunk for _, chunk in reply.trickle)
    assert b"Administration" in whole and session.tokens is not None
    assert session.tokens.values[TokenKind.API_KEY].encode() in whole
    assert reply.trickle and session.held_seconds > 0
    _, deep = await b.answer(client_key="c3", threat=10, request=request(b"/no/such/page"), conn=CONN)
    page = deep.data + b"".join(chunk for _, chunk in deep.trickle)
    assert page.startswith(b"HTTP/1.1 200 OK") and page.count(b'<a href="/no/such/page/') == 8


async def test_full_hold_gate_answers_at_once() -> None:
    """With no room to hold, a slow profile's reply goes out at once and HOLD_REFUSED is emitted."""
    clock = Clock()
    b, events = book(clock, gate=HoldGate(connections_max=0))
    _, reply = await b.answer(client_key="c4", threat=10, request=request(b"/"), conn=CONN)
    assert reply.trickle == () and reply.data.startswith(b"HTTP/1.1")
    assert EventId.HOLD_REFUSED in [e.event_id for e in events]


async def test_idle_sessions_end_and_reward_their_arm() -> None:
    """After the idle timeout the session ends, its reward goes to its arm, and the client starts anew."""
    clock = Clock()
    b, events = book(clock)
    session, _ = await b.answer(client_key="c5", threat=4, request=request(b"/"), conn=CONN)
    for _ in range(FOLLOWUPS_FULL):
        clock.now += 1
        await b.answer(client_key="c5", threat=4, request=request(b"/a"), conn=CONN)
    assert await b.sweep() == []
    clock.now += 61
    assert b.sticky("c5") is None
    ended = await b.sweep()
    assert ended == [session] and session.ended == clock.now
    stats = {s.arm: s for s in await b.bandit.stats(tenant_id=b.tenant_id, band=Band.BALANCED)}
    assert stats[session.arm].pulls == 1
    assert stats[session.arm].reward_sum == pytest.approx(reward(session)) and reward(session) >= 0.4
    end = [e for e in events if e.event_id is EventId.SESSION_END]
    assert end[0].details["requests"] == FOLLOWUPS_FULL + 1
    fresh, _ = await b.answer(client_key="c5", threat=4, request=request(b"/"), conn=CONN)
    assert fresh.id != session.id


async def test_book_is_bounded_and_close_ends_everything() -> None:
    """Past sessions_max the least recently active session ends early; close ends the rest."""
    clock = Clock()
    b, _ = book(clock, sessions_max=2)
    for key in ("a", "b", "c"):
        await b.answer(client_key=key, threat=0, request=request(b"/"), conn=CONN)
    assert len(b) == 2 and b.sticky("a") is None
    await b.close()
    assert len(b) == 0


def test_reward_is_normalised() -> None:
    """A bare session scores 0, a fully engaged one 1; negative engagement is refused."""
    arm_profile = None
    base = {
        "id": uuid.uuid4(),
        "tenant_id": uuid.uuid4(),
        "client_key": "k",
        "src_host": "",
        "threat": 0,
        "band": Band.LIGHT,
    }
    s = Session(**base, arm="n/i", persona="n", profile=arm_profile, started=0.0, last_seen=0.0)  # type: ignore[arg-type]
    s.requests = 1
    assert reward(s) == 0.0
    s.requests, s.tokens_taken, s.last_seen = 1_000, 3, 10_000.0
    assert reward(s) == 1.0
    b_clock = Clock()
    b, _ = book(b_clock)
    with pytest.raises(InvariantViolated):
        b.record(s, path="/", tokens_taken=-1)


async def test_site_files_carry_the_sessions_own_credentials() -> None:
    """A real persona's `/.env` and `.git/config` hold this session's AWS key and database password
    (recognised as honeytokens, different for another session), at the length the decoy announced."""
    from feint.camouflage.decoy import persona as persona_lib
    from feint.camouflage.decoy.recorder import requests_of
    from feint.camouflage.decoy.responder import PersonaResponder

    clock = Clock()
    b, events = book(clock)
    loaded = persona_lib.load("nginx-debian")
    b.personas = {"nginx-debian": PersonaResponder(loaded)}  # type: ignore[misc]
    b.bandit = Bandit(MemoryBanditStore(), personas=("nginx-debian",))
    honeytokens = Honeytokens(b"\x03" * 32)
    seen: dict[str, str] = {}
    for client in ("c1", "c2"):
        env = requests_of(b"GET /.env HTTP/1.1\r\nHost: shop\r\n\r\n", loaded)[0]
        session, reply = await b.answer(client_key=client, threat=1, request=env, conn=CONN)
        assert session.tokens is not None
        data = reply.data + b"".join(chunk for _, chunk in reply.trickle)
        head, _, body = data.partition(b"\r\n\r\n")
        aws = session.tokens.values[TokenKind.AWS_ACCESS_KEY_ID]
        password = session.tokens.values[TokenKind.DATABASE_PASSWORD]
        assert f"AWS_ACCESS_KEY_ID={aws}\n".encode() in body and f"DB_PASSWORD={password}\n".encode() in body
        assert honeytokens.kind_of(aws) is TokenKind.AWS_ACCESS_KEY_ID
        assert honeytokens.kind_of(password) is TokenKind.DATABASE_PASSWORD
        assert f"Content-Length: {len(body)}\r\n".encode() in head
        assert len(body) == len(loaded.rendered_site(default_filler)["/.env"])
        assert session.tokens_taken == 1
        seen[client] = aws
        config = requests_of(b"GET /.git/config HTTP/1.1\r\nHost: shop\r\n\r\n", loaded)[0]
        _, reply = await b.answer(client_key=client, threat=1, request=config, conn=CONN)
        assert f"deploy:{password}@".encode() in reply.data + b"".join(chunk for _, chunk in reply.trickle)
    assert seen["c1"] != seen["c2"]
    assert [e.event_id for e in events].count(EventId.HONEYTOKEN_TAKEN) == 4


def test_site_defaults_are_as_long_as_the_credentials_that_replace_them() -> None:
    """Swapping a persona's default credential for the session's never changes a body's length."""
    tokens = Honeytokens(b"\x05" * 32).mint(uuid.uuid4())
    for name, kind in SITE_KINDS.items():
        assert len(default_filler(name)) == len(tokens.values[kind]), name


class FailingStore(MemoryBanditStore):
    """The bandit's store with PostgreSQL gone for one arm's update (a fake of a unit test)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing: set[str] = set()

    async def record(self, *, tenant_id: uuid.UUID, band: Band, arm: str, reward: float) -> None:
        if arm in self.failing:
            raise ConnectionError("database unreachable")
        await super().record(tenant_id=tenant_id, band=band, arm=arm, reward=reward)


async def test_a_session_end_that_fails_does_not_stop_the_sweep() -> None:
    """One session's bandit update fails: the sweep still ends every idle session, the failed one's
    end is still logged (event) and counted as a failure, the others reward their arms, and a new
    client is served."""
    clock = Clock()
    b, events = book(clock)
    failing = FailingStore()
    b.bandit.store = failing
    first, _ = await b.answer(client_key="f1", threat=4, request=request(b"/"), conn=CONN)
    second = first
    n = 0
    while second.arm == first.arm:  # a second session on another arm (UCB1 tries untried arms first)
        n += 1
        second, _ = await b.answer(client_key=f"f{n + 1}", threat=4, request=request(b"/"), conn=CONN)
    failing.failing.add(first.arm)
    failures = SESSION_END_FAILURES._value.get()
    clock.now += 61
    ended = await b.sweep()
    assert {s.id for s in ended} >= {first.id, second.id} and len(b) == 0
    assert SESSION_END_FAILURES._value.get() == failures + 1
    ended_ids = {e.session_id for e in events if e.event_id is EventId.SESSION_END}
    assert {first.id, second.id} <= ended_ids
    stats = {s.arm: s for s in await failing.arms(tenant_id=b.tenant_id, band=Band.BALANCED)}
    assert stats[second.arm].pulls >= 1 and stats[first.arm].pulls == 0
    fresh, _ = await b.answer(client_key="f1", threat=4, request=request(b"/"), conn=CONN)
    assert fresh.id != first.id


async def test_memory_store_counts_a_session_of_an_arm_with_no_row() -> None:
    """Like PostgreSQL's (tests/integration/camouflage/test_bandit_shared.py): the row is made, active,
    with the session counted, instead of an error that would lose the session."""
    store = MemoryBanditStore()
    tenant = uuid.uuid4()
    await store.record(tenant_id=tenant, band=Band.LIGHT, arm="nginx/instant", reward=0.5)
    await store.record(tenant_id=tenant, band=Band.LIGHT, arm="nginx/instant", reward=0.25)
    [row] = await store.arms(tenant_id=tenant, band=Band.LIGHT)
    assert (row.arm, row.pulls, row.reward_sum, row.active) == ("nginx/instant", 2, 0.75, True)
