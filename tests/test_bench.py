"""The benchmark harness runs and reports (tiny configurations; no timing asserted)."""

from __future__ import annotations

import json

import pytest

from bench import one_to_one_throughput
from tools.benchkit import harness
from tools.benchkit.transports import MpPipe, Shmbus

pytestmark = pytest.mark.timeout(180)


def test_stream_and_ping_pong_report_numbers():
    s = harness.run_stream(Shmbus(), 2000, 64)
    assert s["per_consumer_rate"] > 0 and s["cpu_s_per_million"] > 0
    fan = harness.run_stream(Shmbus(), 1000, 64, receivers=2, batch=10)
    assert fan["per_consumer_rate"] > 0 and fan["producer_rate"] > 0
    p = harness.run_ping_pong(Shmbus(wait="sleep"), 300)
    assert 0 < p["p50_us"] <= p["p99_us"] <= p["p999_us"]


def test_one_to_one_program_writes_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    one_to_one_throughput.main(["--quick", "--repeats", "1", "--scale", "0.02",
                                "--only", f"shmbus,shmbus[claim],{MpPipe.name}",
                                "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["benchmark"] == "one_to_one_throughput"
    assert data["results"]["64B shmbus"]["per_consumer_rate"]["median"] > 0
    assert "64B multiprocessing.Pipe" in data["results"]
    printed = capsys.readouterr().out
    assert "| shmbus |" in printed and "memcpy" in printed
