"""A short run of the fault-injection harness (bench/chaos.py) with a fixed seed."""

from __future__ import annotations

import io

import pytest

from bench import chaos

pytestmark = pytest.mark.timeout(300)


def test_chaos_twenty_seconds_loses_nothing():
    out = io.StringIO()
    result = chaos.run(seconds=20, seed=1, kills_per_second=2.0, out=out)
    report = out.getvalue()
    assert result["ok"], report
    assert result["sent"] > 0 and sum(result["kills"].values()) > 0, report


def test_payload_check_catches_corruption():
    data = bytearray(chaos.make_payload(1, 42))
    assert chaos.check_payload(bytes(data)) == (1, 42)
    data[13] ^= 0xFF
    with pytest.raises(ValueError):
        chaos.check_payload(bytes(data))
