"""The bridge's pieces that need no server: headers, names, reply subjects, argument
checks, the CLI's usage errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

pytest.importorskip("nats", reason="the bridge needs nats-py (the test extra)")

from shmbus.bridge import Inbound, Outbound  # noqa: E402
from shmbus.bridge.headers import (consumer_name, key_from_headers, key_header,  # noqa: E402
                                   msg_id, parse_msg_id, ring_identity, stream_name)
from shmbus.bridge.inbound import stream_seq_token  # noqa: E402
from shmbus.bridge.relay import Backoff  # noqa: E402
from shmbus.tools.cli import main  # noqa: E402


@pytest.mark.parametrize("key", [b"user-42", b"a b", b"x:y=z", b"\x00\xff", b" lead",
                                 b"trail ", b"caf\xc3\xa9", b"line\r\nbreak"])
def test_key_header_round_trip(key):
    name, value = key_header(key)
    assert "\r" not in value and "\n" not in value and value == value.strip()
    assert key_from_headers({name: value}) == key


def test_msg_id_round_trip_with_colons_in_the_identity():
    ident = ring_identity("ns-1", "orders.eu", 1234)
    assert parse_msg_id(msg_id(ident, 77)) == (ident, 77)
    assert parse_msg_id("someone else's id") is None
    assert parse_msg_id(None) is None


def test_names_derived_from_subjects_and_rings():
    assert stream_name("orders.eu") == "shmbus-orders_eu"
    name = consumer_name("ns", "ring.x")
    assert "." not in name and name.endswith("-ns-ring_x")


def test_stream_seq_from_both_reply_formats():
    v1 = "$JS.ACK.S.C.1.4711.12.1700000000000000000.3"
    v2 = "$JS.ACK._.ACCHASH.S.C.1.4712.12.1700000000000000000.3.rnd"
    assert stream_seq_token(v1) == "4711"
    assert stream_seq_token(v2) == "4712"
    with pytest.raises(ValueError):
        stream_seq_token("_INBOX.abc.def")


def test_backoff_doubles_to_its_limit_and_resets():
    b = Backoff(0.1, 0.5)
    assert [b.step() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    b.reset()
    assert b.step() == 0.1


@pytest.mark.parametrize("subject", ["", "a.*", "a.>", "a b", "a..b", ".a", "a.", None])
def test_a_subject_that_is_not_one_is_a_value_error(ns, subject):
    with pytest.raises(ValueError, match="literal NATS subject"):
        Outbound("a", "nats://127.0.0.1:1", subject)
    with pytest.raises(ValueError, match="literal NATS subject"):
        Inbound("nats://127.0.0.1:1", subject, "b")


def test_bad_arguments_are_value_errors(ns):
    with pytest.raises(ValueError):
        Outbound("a", "nats://127.0.0.1:1", "s", window=0)
    with pytest.raises(ValueError):
        Inbound("nats://127.0.0.1:1", "s", "b", batch=0)
    with pytest.raises(ValueError):
        Outbound("bad/name", "nats://127.0.0.1:1", "s")


@pytest.mark.parametrize("verb", ["out", "in"])
def test_cli_refuses_a_wildcard_subject_as_usage(ns, verb):
    res = CliRunner().invoke(main, ["bridge", verb, "a", "--subject", "a.*"])
    assert res.exit_code == 2, res.output
    assert "literal NATS subject" in res.output


def test_frames_are_what_nats_py_would_send():
    from nats.protocol.command import hpub_cmd

    from shmbus.bridge.framing import headers_block, hpub

    for key, line in ((None, b""), (b"user-1", b"Shmbus-Key: user-1\r\n"),
                      (b"\x00\xff", b"Shmbus-Key-Hex: 00ff\r\n")):
        block = headers_block(b"ns/r@12", 5, key)
        assert block == (b"NATS/1.0\r\nNats-Msg-Id: ns/r@12:5\r\nShmbus-Seq: 5\r\n" + line
                         + b"\r\n")
        frame = b"".join(hpub(b"orders", b"_INBOX.x.3", block, memoryview(b"payload")))
        assert frame == hpub_cmd("orders", "_INBOX.x.3", block, b"payload")


def test_acks_tell_a_stored_message_from_a_refused_one():
    import asyncio
    from types import SimpleNamespace

    from shmbus.bridge.outbound import _Acks

    async def replies() -> _Acks:
        acks = _Acks(len("_INBOX.x."))
        acks.reset(3)
        for i, data in enumerate([b'{"stream":"error","seq":7}',
                                  b'{"stream":"s","seq":8,"duplicate":true}',
                                  b'{"error":{"code":503,"description":"no space"}}']):
            await acks.on_reply(SimpleNamespace(subject=f"_INBOX.x.{i}", data=data,
                                                headers=None))
        return acks
    acks = asyncio.run(replies())
    assert acks.done.is_set() and acks.stored() == 2
    assert "no space" in acks.error


def test_puller_keeps_requests_outstanding_and_reads_statuses():
    import asyncio
    from types import SimpleNamespace

    from shmbus.bridge.pull import Puller
    from shmbus.bridge.relay import ServerLost

    class FakeConnection:
        def __init__(self) -> None:
            self.requests: list[tuple[str, bytes, str]] = []

        def new_inbox(self) -> str:
            return "_INBOX.me"

        async def subscribe(self, subject, cb):
            self.cb = cb

        async def publish(self, subject, payload, reply=""):
            self.requests.append((subject, payload, reply))

    def status(code: str, **headers: str):
        return SimpleNamespace(reply="", data=b"", headers={"Status": code, **headers})

    async def scenario() -> None:
        nc = FakeConnection()
        p = Puller(nc, "S", "C", batch=10, expires=1.0)
        await p.start()
        assert await p.take(0.01) == []
        assert nc.requests == [("$JS.API.CONSUMER.MSG.NEXT.S.C",
                                b'{"batch": 10, "expires": 1000000000}', "_INBOX.me")]
        assert p.outstanding == 10
        for i in range(4):
            await nc.cb(SimpleNamespace(reply=f"$JS.ACK.S.C.1.{i + 1}.1.0.0", data=b"x",
                                        headers=None))
        await nc.cb(status("100"))  # a heartbeat: nothing
        assert len(await p.take(0.01)) == 4
        assert p.outstanding == 6 and len(nc.requests) == 1
        assert await p.take(0.01) == []  # fewer than a batch outstanding: asks again
        assert p.outstanding == 16 and len(nc.requests) == 2
        await nc.cb(status("408", **{"Nats-Pending-Messages": "6"}))  # one expired
        assert await p.take(0.01) == [] and p.outstanding == 10 and len(nc.requests) == 2
        await nc.cb(status("409", Description="Consumer Deleted"))
        with pytest.raises(ServerLost, match="409 Consumer Deleted"):
            await p.take(0.01)
    asyncio.run(scenario())
