"""Bad input to the command is bad usage (exit 2, one clear line, no traceback); odd
but valid input (bytes that are not UTF-8, escape sequences) goes through losslessly
and is shown safely."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import shmbus
from shmbus.tools.cli import main
from shmbus.tools.tail import escape

pytestmark = pytest.mark.timeout(60)


def run(*args, **kwargs):
    return CliRunner().invoke(main, list(args), **kwargs)


@pytest.mark.parametrize("argv", [
    ["send", "x", "hi", "--capacity", "100"], ["send", "x", "hi", "--capacity", "-1"],
    ["send", "x", "hi", "--capacity", str(2 ** 50)],
    ["send", "x", "hi", "--capacity", "4096", "--timeout", "nan"],
    ["send", "x", "hi", "--capacity", "4096", "--timeout", "-1"],
    ["top", "--interval", "-1"], ["top", "--interval", "nan"], ["top", "--interval", "x"],
    ["tail", "x", "--timeout", "nan"], ["tail", "x", "--timeout", "-1"],
    ["tail", "x", "--timeout", "inf"],
])
def test_bad_values_are_bad_usage(ns, argv):
    r = run(*argv)
    assert r.exit_code == 2, (argv, r.output, r.exception)
    assert "Traceback" not in r.output and "Error:" in r.output
    assert shmbus.list_rings() == []  # nothing was created


def test_data_and_key_that_are_not_utf8_are_sent_as_given(ns):
    # Python decodes a non-UTF-8 argv byte 0xff as the surrogate '\udcff'.
    r = run("send", "b", "\udcffdata\udcfe", "--key", "k\udcff", "--capacity", "4096")
    assert r.exit_code == 0, (r.output, r.exception)
    with shmbus.Consumer("b", start="earliest") as sub:
        msg = sub.recv(timeout=1)
        assert (bytes(msg), msg.key) == (b"\xffdata\xfe", b"k\xff")
    shmbus.unlink("b")


def test_tail_shows_every_message_safely_and_losslessly(ns):
    nasty = b"\x1b]0;pwned\x07\x1b[31mred\x1b[0m\nfake line\r\tX\xff\\" + "\u202e".encode()
    with shmbus.Producer("t", capacity=4096) as pub:
        pub.send(nasty, key=b"\xfe\x1bk")
        pub.send("héllo".encode(), key="clé")
    r = run("tail", "t", "--from", "earliest", "--count", "2")
    assert r.exit_code == 0, r.output
    first, second = r.output.splitlines()  # no forged line
    assert "\x1b" not in r.output and "\r" not in r.output and "\u202e" not in r.output
    assert first == ("0\t\\xfe\\x1bk\t\\x1b]0;pwned\\x07\\x1b[31mred\\x1b[0m\\nfake line"
                     "\\r\\tX\\xff\\\\\\u202e")
    assert second == "1\tclé\théllo"
    r = run("tail", "t", "--from", "earliest", "--count", "2", "--format", "json")
    one, two = (json.loads(line) for line in r.output.splitlines())
    assert bytes.fromhex(one["key_hex"]) == b"\xfe\x1bk" and "key" not in one
    assert bytes.fromhex(one["data_hex"]) == nasty and one["size"] == len(nasty)
    assert (two["key"], two["data"]) == ("clé", "héllo")
    r = run("tail", "t", "--from", "earliest", "--count", "1", "--format", "hex")
    assert r.output == "0\t" + b"\xfe\x1bk".hex() + "\t" + nasty.hex() + "\n"
    shmbus.unlink("t")


def unescape(shown: str) -> bytes:
    """The inverse of tail's escape."""
    out, i = bytearray(), 0
    named = {"n": b"\n", "r": b"\r", "t": b"\t", "\\": b"\\"}
    while i < len(shown):
        ch = shown[i]
        if ch != "\\":
            out += ch.encode()
            i += 1
        elif shown[i + 1] in named:
            out += named[shown[i + 1]]
            i += 2
        elif shown[i + 1] == "x":
            out.append(int(shown[i + 2:i + 4], 16))
            i += 4
        else:
            digits = 4 if shown[i + 1] == "u" else 8
            out += chr(int(shown[i + 2:i + 2 + digits], 16)).encode()
            i += 2 + digits
    return bytes(out)


@pytest.mark.parametrize("raw", [bytes(range(256)), "日本\u200b\u2028\x85".encode(),
                                 b"\\x41\xc2\x85\x85", "\U0001f600\U000e0001".encode()])
def test_escape_is_printable_and_lossless(raw):
    shown = escape(raw)
    assert shown.isprintable() and unescape(shown) == raw
