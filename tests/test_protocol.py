"""Validation of every client message: what is accepted and the error for what is not."""

from __future__ import annotations

import json

import pytest

from signalling import protocol as p


def parse(obj: object) -> p.ClientMessage:
    return p.parse_message(json.dumps(obj))


def error_of(data: str | bytes) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as info:
        p.parse_message(data)
    return info.value


def test_well_formed_messages_parse() -> None:
    assert parse({"type": "offer", "sdp": "v=0"}) == p.Offer(sdp="v=0")
    assert parse({"type": "start"}) == p.Start(interests=(), mode="video")
    assert parse({"type": "start", "mode": "text"}) == p.Start(interests=(), mode="text")
    assert parse({"type": "start", "mode": "video"}) == p.Start(interests=(), mode="video")
    assert parse({"type": "start", "interests": [" Music ", "music", "Board Games"]}) == p.Start(
        interests=("board games", "music")
    )
    assert parse({"type": "interests", "interests": ["Chess", " chess"]}) == p.SetInterests(
        interests=("chess",)
    )
    assert parse({"type": "next"}) == p.Next()
    assert parse({"type": "stop", "extra": 1}) == p.Stop(), "unknown fields are ignored"
    assert parse({"type": "chat", "text": "  hi  "}) == p.Chat(text="hi")
    assert parse({"type": "typing", "active": True}) == p.Typing(active=True)
    assert parse({"type": "report", "reason": "rude"}) == p.Report(reason="rude")
    assert parse({"type": "report", "reason": "rude", "moveOn": False}) == p.Report(
        reason="rude", move_on=False
    )
    assert parse(
        {"type": "report", "reason": "x", "pairId": "abc", "category": "minor"}
    ) == p.Report(reason="x", pair_id="abc", category="minor")
    assert parse({"type": "block"}) == p.Block()
    assert parse({"type": "block", "pairId": "abc"}) == p.Block(pair_id="abc")
    assert parse({"type": "media_state", "camera": False, "mic": True}) == p.MediaStateMessage(
        camera=False, mic=True
    )
    assert parse(
        {
            "type": "candidate",
            "candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
        }
    ) == p.Candidate("candidate:1 1 udp 1 1.2.3.4 5 typ host", "0", 0)
    assert parse({"type": "candidate", "candidate": ""}) == p.Candidate(None, None, None)
    assert parse({"type": "candidate", "candidate": None}) == p.Candidate(None, None, None)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ("not json", "bad_json"),
        ("{", "bad_json"),
        (b'{"type": "start"}', "bad_json"),
        ("[1, 2]", "bad_message"),
        ('"start"', "bad_message"),
        ("null", "bad_message"),
        ("{}", "bad_message"),
        ('{"type": 5}', "bad_message"),
        ('{"type": "dance"}', "unknown_type"),
        ("[" * 100000, "too_large"),
        ("[" * 5000 + "]" * 5000, "bad_json"),
    ],
)
def test_malformed_frames(data: str | bytes, code: str) -> None:
    err = error_of(data)
    assert err.code == code
    assert err.message and err.message[0].isalpha(), "the message must read as a sentence"
    assert err.to_json()["type"] == "error"


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"type": "offer"}, "sdp"),
        ({"type": "offer", "sdp": 12}, "sdp"),
        ({"type": "offer", "sdp": ""}, "sdp"),
        ({"type": "offer", "sdp": "x" * (p.MAX_SDP_CHARS + 1)}, "sdp"),
        ({"type": "chat"}, "text"),
        ({"type": "chat", "text": ["hi"]}, "text"),
        ({"type": "chat", "text": "   "}, "text"),
        ({"type": "chat", "text": "x" * (p.MAX_CHAT_CHARS + 1)}, "text"),
        ({"type": "typing", "active": "yes"}, "active"),
        ({"type": "typing"}, "active"),
        ({"type": "media_state", "camera": 0, "mic": True}, "camera"),
        ({"type": "media_state", "camera": True}, "mic"),
        ({"type": "report", "reason": ""}, "reason"),
        ({"type": "report", "reason": "rude", "moveOn": "no"}, "moveOn"),
        ({"type": "report", "reason": "x", "pairId": 5}, "pairId"),
        ({"type": "report", "reason": "x", "pairId": ""}, "pairId"),
        ({"type": "report", "reason": "x", "category": "bad"}, "category"),
        ({"type": "block", "pairId": "x" * 65}, "pairId"),
        ({"type": "start", "interests": "music"}, "interests"),
        ({"type": "start", "mode": "audio"}, "mode"),
        ({"type": "start", "mode": None}, "mode"),
        ({"type": "start", "interests": [1]}, "interests"),
        ({"type": "start", "interests": [""]}, "interests"),
        ({"type": "start", "interests": ["x" * 33]}, "interests"),
        ({"type": "start", "interests": [str(i) for i in range(p.MAX_INTERESTS + 1)]}, "interests"),
        ({"type": "candidate", "candidate": 7}, "candidate"),
        ({"type": "candidate", "candidate": "c", "sdpMid": 0}, "sdpMid"),
        ({"type": "candidate", "candidate": "c", "sdpMLineIndex": "0"}, "sdpMLineIndex"),
        ({"type": "candidate", "candidate": "c", "sdpMLineIndex": -1}, "sdpMLineIndex"),
        ({"type": "candidate", "candidate": "c", "sdpMLineIndex": True}, "sdpMLineIndex"),
    ],
)
def test_bad_fields_name_the_field(obj: dict[str, object], field: str) -> None:
    err = error_of(json.dumps(obj))
    assert err.code == "bad_field"
    assert err.field == field
    assert err.in_reply_to == obj["type"]
    assert field in err.message


def test_unknown_type_is_not_echoed_in_full() -> None:
    err = error_of(json.dumps({"type": "x" * 5000}))
    assert err.code == "unknown_type"
    assert len(err.message) < 100


def test_size_limit_counts_bytes_not_characters() -> None:
    # 30000 three-byte characters: under the limit in characters, over it in bytes.
    err = error_of(json.dumps({"type": "chat", "text": "€" * 30000}, ensure_ascii=False))
    assert err.code == "too_large"


def test_lone_surrogates_become_replacement_characters_everywhere() -> None:
    # JSON text may escape a lone surrogate; SQLite and UTF-8 logs cannot store one.
    assert p.parse_message('{"type": "report", "reason": "a\\ud800b"}') == p.Report(
        reason="a\ufffdb"
    )
    assert p.parse_message('{"type": "chat", "text": "\\udfff"}') == p.Chat(text="\ufffd")
    assert p.parse_message('{"type": "start", "interests": ["x\\uDBFF"]}') == p.Start(
        interests=("x\ufffd",)
    )
    offer = p.parse_message('{"type": "offer", "sdp": "v=0\\ud800", "x\\ud800": [[{"y": 1}]]}')
    assert offer == p.Offer(sdp="v=0\ufffd")
    # A proper pair is one character and stays as it is.
    assert p.parse_message('{"type": "chat", "text": "\\ud83d\\ude00"}') == p.Chat(
        text="\U0001f600"
    )
    err = error_of('{"type": "teleport\\ud800"}')
    assert err.code == "unknown_type" and "\ufffd" in err.message
