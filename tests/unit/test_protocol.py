"""The WebSocket protocol as plain code: decoding frames, matching and validating patterns."""

from __future__ import annotations

import json

import pytest

from prefect_comfy.backends.cloud import protocol
from prefect_comfy.exceptions import ComfyProtocolError


def test_decode_event_frame_with_id_and_timestamp():
    frame = protocol.decode(
        json.dumps(
            {
                "type": "event",
                "id": "evt_1",
                "timestamp": "2024-01-15T10:30:00Z",
                "data": {"event": "job.completed", "payload": {"id": "job_1", "outputs": []}},
            }
        )
    )
    event = frame.event()
    assert (event.event, event.id, event.resource_id, event.kind) == (
        "job.completed",
        "evt_1",
        "job_1",
        "job",
    )
    assert event.is_terminal and event.timestamp is not None


def test_decode_accepts_bytes_and_missing_data():
    frame = protocol.decode(b'{"type": "pong"}')
    assert frame.type == "pong" and frame.data == {}


def test_event_without_id_and_unknown_name_passes_through():
    frame = protocol.decode('{"type":"event","data":{"event":"job.brand_new","payload":{"x":1}}}')
    event = frame.event()
    assert event.id is None and event.event == "job.brand_new" and not event.is_terminal


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1, 2]",
        '{"no": "type"}',
        '{"type": 5}',
        '{"type": "event", "data": []}',
        b"\xff\xfe",
    ],
)
def test_decode_rejects_malformed_frames(text):
    with pytest.raises(ComfyProtocolError):
        protocol.decode(text)


@pytest.mark.parametrize(
    "data", [{}, {"event": 3, "payload": {}}, {"event": "job.completed", "payload": [1]}]
)
def test_bad_event_frames_raise_protocol_error(data):
    frame = protocol.decode(json.dumps({"type": "event", "data": data}))
    with pytest.raises(ComfyProtocolError):
        frame.event()


def test_event_of_non_event_frame_raises():
    with pytest.raises(ComfyProtocolError):
        protocol.decode('{"type": "pong"}').event()


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("*", "anything.at.all", True),
        ("job.*", "job.completed", True),
        ("job.*", "job.progress", True),
        ("job.*", "jobs.completed", False),
        ("job.*", "input.ready", False),
        ("job.completed", "job.completed", True),
        ("job.completed", "job.failed", False),
    ],
)
def test_matches(pattern, name, expected):
    assert protocol.matches(pattern, name) is expected


def test_matches_any():
    assert protocol.matches_any(["input.ready", "job.*"], "job.failed")
    assert not protocol.matches_any([], "job.failed")
    assert not protocol.matches_any(["input.*"], "model.ready")


@pytest.mark.parametrize("pattern", ["*", "job.*", "job.completed", "weird.new.name"])
def test_validate_pattern_accepts(pattern):
    assert protocol.validate_pattern(pattern) == pattern


@pytest.mark.parametrize("pattern", ["", " job.*", "job*", "*.completed", "job.*.x", "j*b.*", 5])
def test_validate_pattern_rejects(pattern):
    with pytest.raises(ValueError):
        protocol.validate_pattern(pattern)


def test_client_frames():
    assert json.loads(protocol.subscribe_frame(["job.*"])) == {
        "type": "subscribe",
        "data": {"events": ["job.*"]},
    }
    assert json.loads(protocol.unsubscribe_frame(("a",)))["type"] == "unsubscribe"
    assert json.loads(protocol.PING_FRAME) == {"type": "ping"}
    assert json.loads(protocol.PONG_FRAME) == {"type": "pong"}
    assert 1008 in protocol.AUTH_CLOSE_CODES and 4001 in protocol.AUTH_CLOSE_CODES
