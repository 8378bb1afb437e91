"""The wire protocol, rate limiters and coalescers without sockets (CONTRIBUTING.md #1, #9)."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from livesale.codes import ErrorCode
from realtime import protocol
from realtime.coalesce import Conflator, LikeSum
from realtime.limits import FloodGuard, TokenBucket, WindowCap
from realtime.protocol import Comment, Like, Ping, ProtocolError, WordFilter

DOCUMENTED = {ErrorCode.INVALID_FRAME, ErrorCode.UNKNOWN_TYPE, ErrorCode.INVALID_COMMENT, ErrorCode.INVALID_LIKE}

# Hostile frames kept as data: each with the error code it must get.
BAD_FRAMES = [
    (b"", ErrorCode.INVALID_FRAME),
    (b"not json", ErrorCode.INVALID_FRAME),
    (b"[1,2]", ErrorCode.INVALID_FRAME),
    (b'"comment"', ErrorCode.INVALID_FRAME),
    (b"{}", ErrorCode.INVALID_FRAME),
    (b'{"type": 3}', ErrorCode.INVALID_FRAME),
    (b'{"type": "buy"}', ErrorCode.UNKNOWN_TYPE),
    (b'{"type": "COMMENT", "text": "hi"}', ErrorCode.UNKNOWN_TYPE),
    (b'{"type": "comment"}', ErrorCode.INVALID_COMMENT),
    (b'{"type": "comment", "text": "   "}', ErrorCode.INVALID_COMMENT),
    (b'{"type": "comment", "text": 12}', ErrorCode.INVALID_COMMENT),
    (orjson.dumps({"type": "comment", "text": "x" * 281}), ErrorCode.INVALID_COMMENT),
    (b'{"type": "like", "count": 0}', ErrorCode.INVALID_LIKE),
    (b'{"type": "like", "count": 51}', ErrorCode.INVALID_LIKE),
    (b'{"type": "like", "count": 2.0}', ErrorCode.INVALID_LIKE),
    (b'{"type": "like", "count": true}', ErrorCode.INVALID_LIKE),
    (b'{"type": "like", "count": "3"}', ErrorCode.INVALID_LIKE),
    (b'{"type": "comment", "text": "\xff\xfe"}', ErrorCode.INVALID_FRAME),
    (b"x" * 5000, ErrorCode.INVALID_FRAME),
]


@pytest.mark.parametrize(("frame", "code"), BAD_FRAMES)
def test_bad_frames_get_their_documented_code(frame: bytes, code: ErrorCode) -> None:
    """Each malformed client frame is answered with the error code docs/design.md gives it."""
    result = protocol.parse(frame)
    assert isinstance(result, ProtocolError) and result.code == code


def test_good_frames_parse_to_commands() -> None:
    """Valid comment, like and ping frames become commands; comment text is trimmed, like count defaults to 1."""
    assert protocol.parse(b'{"type":"comment","text":"  hi there "}') == Comment("hi there")
    assert protocol.parse(orjson.dumps({"type": "comment", "text": "y" * 280})) == Comment("y" * 280)
    assert protocol.parse('{"type":"like","count":50}') == Like(50)
    assert protocol.parse(b'{"type":"like"}') == Like(1)
    assert isinstance(protocol.parse(b'{"type":"ping"}'), Ping)


@given(st.one_of(st.binary(max_size=300), st.text(max_size=300),
                 st.dictionaries(st.text(max_size=8), st.recursive(
                     st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=300),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                     max_leaves=8)).map(json.dumps),
                 st.builds(lambda t, x: json.dumps({"type": t, "text": x, "count": x}),
                           st.sampled_from(["comment", "like", "ping", "x"]),
                           st.one_of(st.integers(), st.text(max_size=400), st.none()))))
def test_any_input_is_a_command_or_a_documented_error(frame: bytes | str) -> None:
    """Fuzzed frames yield a command or an error with a documented code, never an exception."""
    result = protocol.parse(frame)
    if isinstance(result, ProtocolError):
        assert result.code in DOCUMENTED and result.message
    else:
        assert isinstance(result, Comment | Like | Ping)
        if isinstance(result, Comment):
            assert 1 <= len(result.text) <= 280 and result.text == result.text.strip()
        if isinstance(result, Like):
            assert 1 <= result.count <= 50


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_text_frame_is_what_a_websocket_client_parses(size: int) -> None:
    """Our pre-encoded server frames parse as one unmasked text frame with websockets' own parser."""
    payload = b"a" * size
    reader = StreamReader()
    reader.feed_data(protocol.text_frame(payload))
    gen = Frame.parse(reader.read_exact, mask=False)
    try:
        while True:
            next(gen)
    except StopIteration as done:
        frame = done.value
    assert frame.opcode is Opcode.TEXT and frame.fin and frame.data == payload


def test_batch_is_a_json_array_of_the_events() -> None:
    """Several events in one frame decode to the array of those events; one event stays an object."""
    events = [{"type": "comment", "seq": i} for i in range(3)]
    assert orjson.loads(protocol.batch([orjson.dumps(e) for e in events])) == events
    assert orjson.loads(protocol.batch([orjson.dumps(events[0])])) == events[0]


def test_word_filter_blocks_whole_words_case_insensitively() -> None:
    """Blocked words match as words in any case; words that merely contain them pass."""
    f = WordFilter(["spam", " Scam "])
    assert f.check("buy SPAM now") is not None and f.check("a scam!") is not None
    assert f.check("spammer here") is None and WordFilter([]).check("spam") is None


def test_token_bucket_bursts_then_refills_at_rate() -> None:
    """A user gets a burst of 5 comments, then one per second; users do not share buckets."""
    b = TokenBucket(rate=1.0, burst=5)
    assert [b.allow("u", 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert b.allow("v", 0.0)
    assert not b.allow("u", 0.5) and b.allow("u", 1.6) and not b.allow("u", 1.7)
    b.purge(100.0)
    assert len(b) == 0 and all(b.allow("u", 100.0) for _ in range(5))


def test_window_cap_counts_at_most_50_per_second() -> None:
    """Likes above 50 per user per second are not counted; the next second starts afresh."""
    cap = WindowCap(50)
    assert cap.take("u", 30, 0.1) == 30 and cap.take("u", 30, 0.5) == 20 and cap.take("u", 5, 0.9) == 0
    assert cap.take("w", 50, 0.9) == 50
    assert cap.take("u", 40, 1.2) == 40
    cap.purge(5.0)
    assert len(cap) == 0


def test_flood_guard_trips_after_20_bad_frames_in_10s() -> None:
    """The 21st bad frame within 10 s trips the guard; frames spread out over time do not."""
    g = FloodGuard(20, 10.0)
    assert not any(g.hit(i * 0.1) for i in range(20)) and g.hit(2.05)
    slow = FloodGuard(20, 10.0)
    assert not any(slow.hit(i * 0.6) for i in range(100))


def test_conflator_keeps_latest_value_per_key_and_paces_it() -> None:
    """Only the latest stock value per sale leaves, at most once per interval; stale likes totals are ignored."""
    c = Conflator()
    for avail in (9, 8, 7):
        c.offer(("stock", "s1"), b"%d" % avail, 0.1)
    c.offer(("stock", "s2"), b"x", 0.1)
    due, nxt = c.due(0.0)
    assert sorted(due) == [(("stock", "s1"), b"7"), (("stock", "s2"), b"x")] and nxt is None
    c.offer(("stock", "s1"), b"6", 0.1)
    due, nxt = c.due(0.05)
    assert due == [] and nxt == pytest.approx(0.1)
    assert c.due(0.1)[0] == [(("stock", "s1"), b"6")]
    assert c.offer("likes", b"10", 0.25, rank=10) and not c.offer("likes", b"7", 0.25, rank=7)
    assert c.due(0.2)[0] == [("likes", b"10")]


def test_like_sum_drains_and_restores() -> None:
    """Likes add up per stream until drained; counts of a failed flush come back."""
    s = LikeSum()
    for n in (3, 4, 0):
        s.add("a", n)
    s.add("b", 1)
    assert s.drain() == {"a": 7, "b": 1} and s.drain() == {}
    s.restore({"a": 2})
    s.add("a", 1)
    assert s.drain() == {"a": 3}


def test_batch_after_drops_log_events_a_snapshot_covered() -> None:
    """A shared batch filtered for a viewer whose snapshot reached seq N keeps later log events and all state."""
    from realtime.conn import Batch, Item

    def ev(kind: str, seq: int | None) -> Item:
        body = {"type": kind} if seq is None else {"type": kind, "seq": seq}
        return Item(kind, kind if seq is None else None, orjson.dumps(body), seq)

    b = Batch.of((ev("comment", 3), ev("comment", 4), ev("likes", None)))
    assert b.low_seq == 3 and b.after(2) is b

    def events(batch: Batch | None) -> list[object]:
        assert batch is not None
        data = orjson.loads(batch.wire[2:])  # small frame: two header bytes
        return data if isinstance(data, list) else [data]

    assert events(b.after(3)) == [{"type": "comment", "seq": 4}, {"type": "likes"}]
    assert events(b.after(9)) == [{"type": "likes"}]
    assert Batch.of((ev("comment", 5),)).after(5) is None
