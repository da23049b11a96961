"""The benchmark harness runs and reports (tiny configurations; no timing asserted)."""

from __future__ import annotations

import json

import pytest

from bench import one_to_one_throughput
from shmbus.tools.benchkit import harness
from shmbus.tools.benchkit.transports import MpPipe, Shmbus

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
                                "--only", f"shmbus,shmbus[claim],shmbus[arrays],{MpPipe.name}",
                                "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["benchmark"] == "one_to_one_throughput"
    assert data["results"]["64B shmbus"]["per_consumer_rate"]["median"] > 0
    assert data["results"]["64B shmbus[arrays] batch=256"]["per_consumer_rate"]["median"] > 0
    assert "64B multiprocessing.Pipe" in data["results"]
    printed = capsys.readouterr().out
    assert "| shmbus |" in printed and "memcpy" in printed


def _run(program, args, tmp_path):
    out = tmp_path / "r.json"
    program.main([*args, "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["machine"]["cpus"] >= 1
    return data["results"]


def test_ping_pong_program_and_latency_plot(tmp_path, capsys):
    from bench import ping_pong_latency
    png = tmp_path / "lat.png"
    results = _run(ping_pong_latency, ["--rounds", "300", "--repeats", "1", "--only",
                                       f"shmbus,shmbus[spin],{MpPipe.name}",
                                       "--plot", str(png)], tmp_path)
    assert set(results) == {"shmbus", "shmbus[spin]", MpPipe.name}
    for r in results.values():
        assert 0 < r["p50_us"]["median"] <= r["p99_us"]["median"]
        assert len(r["quantiles_us"]["runs"][0]) == len(harness.CDF_PERCENTS)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| multiprocessing.Pipe |" in capsys.readouterr().out


def test_throughput_plot(tmp_path):
    png = tmp_path / "tp.png"
    one_to_one_throughput.main(["--quick", "--repeats", "1", "--scale", "0.01",
                                "--only", "shmbus", "--plot", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fan_out_program(tmp_path):
    from bench import fan_out_throughput
    results = _run(fan_out_throughput, ["--messages", "2000", "--consumers", "1,2",
                                        "--repeats", "1", "--only", "shmbus"], tmp_path)
    assert results["shmbus x2"]["per_consumer_rate"]["median"] > 0
    assert results["shmbus x2"]["producer_rate"]["median"] > 0


def test_idle_cpu_program(tmp_path):
    from bench import idle_cpu
    results = _run(idle_cpu, ["--seconds", "0.3", "--repeats", "1", "--only",
                              f"shmbus,shmbus[spin],{MpPipe.name}"], tmp_path)
    # A spinning consumer burns most of a core, a sleeping one next to nothing.
    assert results["shmbus[spin]"]["idle_cpu_percent"]["median"] > 20
    assert results["shmbus"]["idle_cpu_percent"]["median"] < 20
    assert results[MpPipe.name]["idle_cpu_percent"]["median"] >= 0


def test_balancer_programs(tmp_path):
    from bench import balancer_failover, balancer_throughput
    results = _run(balancer_throughput, ["--messages", "4096", "--repeats", "1"], tmp_path)
    assert {"direct ring", "balancer round-robin",
            "balancer consistent-hash (20 keys)"} <= set(results)
    assert all(r["rate"]["median"] > 0 for r in results.values())
    results = _run(balancer_failover, ["--repeats", "1", "--ttl", "0.5"], tmp_path)
    assert results["failover"]["takeover_s"]["median"] > 0


def test_lock_program(tmp_path):
    from bench import lock_throughput
    out = tmp_path / "r.json"
    lock_throughput.main(["--seconds", "0.05", "--repeats", "1", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["uncontended"]["shmbus.FileLock"]["ops_per_s"]["median"] > 0
    assert data["takeover"]["Lease"]["takeover_s"]["median"] > 0


def test_send_recv_cost_program(tmp_path):
    from bench import send_recv_cost
    results = _run(send_recv_cost, ["--messages", "2048", "--repeats", "1"], tmp_path)
    from shmbus import hotpath
    assert set(results) == ({"shmbus", "shmbus-pure"} if hotpath.load_native()[0]
                            else {"shmbus-pure"})
    for path in results.values():
        assert set(path) == {"send", "recv", "recv + .data", "send_many", "recv_many",
                             "take_run + forward"}
        assert all(v > 0 for v in path.values())
