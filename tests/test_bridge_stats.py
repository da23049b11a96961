"""Bridge stats for ``shmbus inspect`` / ``top`` / ``metrics`` (shmbus.bridge.stats),
against a real nats-server: what they show follows what is sent, a clean stop removes
them, ``shmbus gc`` removes those of a bridge killed with -9 (and never those of a live
one), and a stats file of another uid is refused."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest
from click.testing import CliRunner

import shmbus
from shmbus import lockdir, naming
from shmbus.cleanup import collect
from shmbus.tools import metrics, snapshot, top
from shmbus.tools.cli import main

from . import support
from .nats_server import nats_server  # noqa: F401 - a fixture
from .security import OTHER_GID, OTHER_UID, needs_root
from .support import await_until, kill9

nats = pytest.importorskip("nats", reason="the bridge needs nats-py (the test extra)")

from shmbus.bridge import Inbound, Outbound  # noqa: E402

pytestmark = pytest.mark.timeout(60)

CAP = 1 << 16


def inspect_json(ring: str, ns: str) -> dict:
    r = CliRunner().invoke(main, ["inspect", ring, "--json", "-n", ns])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def bridges_of(ring: str, ns: str) -> list[dict]:
    return inspect_json(ring, ns)["bridges"]


def scrape(url: str) -> dict[tuple, float]:
    """{(sample name, sorted labels without namespace): value} of one scrape."""
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(url, timeout=10) as r:
        body = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            labels = {k: v for k, v in s.labels.items() if k != "namespace"}
            out[(s.name, tuple(sorted(labels.items())))] = s.value
    return out


def bridge_labels(b: dict) -> tuple:
    return (("bridge", b["name"]), ("direction", b["direction"]), ("pid", str(b["pid"])),
            ("ring", b["ring"]))


def run_outbound(url: str, ring: str, subject: str, ns: str) -> None:
    """In a child process: relay until killed."""
    Outbound(ring, url, subject, namespace=ns).run()


def test_stats_follow_what_is_sent_in_inspect_top_and_metrics(ns, nats_server):
    pytest.importorskip("prometheus_client")
    server, _ = metrics.serve(ns, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    me = os.getpid()
    shmbus.Producer("b", capacity=CAP, namespace=ns).close()
    try:
        with shmbus.Producer("a", capacity=CAP, namespace=ns) as pub, \
                Outbound("a", nats_server.url, "flow", namespace=ns), \
                Inbound(nats_server.url, "flow", "b", namespace=ns, capacity=CAP):
            for sent in (10, 25):
                pub.send_many([b"m%d" % i for i in range(sent - pub.seq)])

                def relayed() -> bool:
                    out, = bridges_of("a", ns) or [None]
                    into, = bridges_of("b", ns) or [None]
                    return (out is not None and into is not None
                            and out["relayed"] == sent and into["relayed"] == sent)
                await_until(relayed, 20, what=f"{sent} relayed in inspect --json")
                out, = bridges_of("a", ns)
                assert (out["direction"], out["subject"], out["pid"], out["state"],
                        out["alive"], out["server"]) == (
                    "out", "flow", me, "connected", True, nats_server.url)
                assert out["stats"]["published"] == sent
                into, = bridges_of("b", ns)
                assert (into["direction"], into["state"], into["stats"]["written"]) == (
                    "in", "connected", sent)
                out_labels, in_labels = bridge_labels(out), bridge_labels(into)
                samples = scrape(url)
                assert samples[("shmbus_bridge_relayed_total", out_labels)] == sent
                assert samples[("shmbus_bridge_relayed_total", in_labels)] == sent
                assert samples[("shmbus_bridge_connected", out_labels)] == 1
                assert samples[("shmbus_bridge_lost_total", out_labels)] == 0
                assert samples[("shmbus_bridge_refused_total", in_labels)] == 0
                assert samples[("shmbus_bridge_reconnects_total", in_labels)] == 0
            state = snapshot.take(ns)
            view = top.view(state, state)
            under = {r["name"]: [b["name"] for b in r["bridges"]] for r in view["rings"]}
            assert under == {"a": [f"bridge out pid {me}"], "b": [f"bridge in pid {me}"]}
            screen = top.render(view, top.Painter(False), live=False)
            assert f"bridge out pid {me}" in screen and "connected" in screen
            text = CliRunner().invoke(main, ["inspect", "a", "-n", ns]).output
            assert f"bridge out pid {me} connected: to {nats_server.url} subject flow, " \
                "relayed 25," in text, text
        # A clean stop removes a bridge's own stats.
        assert bridges_of("a", ns) == [] and bridges_of("b", ns) == []
        assert not any(k[0].startswith("shmbus_bridge") for k in scrape(url))
    finally:
        server.shutdown()
        server.server_close()
        for ring in ("a", "b"):
            shmbus.unlink(ring, namespace=ns)


def test_states_standby_reconnecting_and_reconnects(ns, nats_server):
    def states() -> list:
        return sorted((b["state"], b["reconnects"], b["last_error"] is not None)
                      for b in bridges_of("a", ns))

    with shmbus.Producer("a", capacity=CAP, namespace=ns), \
            Outbound("a", nats_server.url, "flow", namespace=ns, backoff=(0.05, 0.2)), \
            Outbound("a", nats_server.url, "flow", namespace=ns, backoff=(0.05, 0.2)):
        # Either may lead (both start at once): both reconnect quickly.
        await_until(lambda: states() == [("connected", 0, False), ("standby", 0, False)],
                    20, what="one bridge connected, one standing by")
        nats_server.stop()
        await_until(lambda: states() == [("reconnecting", 0, True), ("standby", 0, False)],
                    20, what="the leading bridge reconnecting")
        nats_server.start()
        await_until(lambda: states() == [("connected", 1, True), ("standby", 0, False)],
                    20, what="the leading bridge connected again")
    shmbus.unlink("a", namespace=ns)


def test_gc_removes_the_stats_of_a_killed_bridge_and_keeps_a_live_ones(ns, nats_server,
                                                                        procs):
    pub = shmbus.Producer("a", capacity=CAP, namespace=ns)  # keeps the ring from gc
    try:
        child = support.start(run_outbound, nats_server.url, "a", "flow", ns)
        procs.append(child)
        await_until(lambda: [b["state"] for b in bridges_of("a", ns)] == ["connected"],
                    20, what="the bridge's stats")
        collect(ns)
        assert [b["pid"] for b in bridges_of("a", ns)] == [child.pid], \
            "gc removed the stats of a live bridge"
        kill9(child)
        gone, = bridges_of("a", ns)
        assert gone["alive"] is False  # shown as dead until gc
        removed = collect(ns)
        assert [r for r in removed if r["kind"] == "stats"], removed
        assert bridges_of("a", ns) == []
    finally:
        pub.close()
    shmbus.unlink("a", namespace=ns)
    collect(ns)


@needs_root
def test_a_stats_file_of_another_uid_is_refused(ns):
    with shmbus.Producer("a", capacity=CAP, namespace=ns):
        stem = f"a@bridge-out.nats-bridge@{os.getpid()}.0"
        name = stem + "@stats"
        path = f"{naming.lock_dir(ns)}/{name}"
        body = {"name": stem, "direction": "out", "ring": "a", "namespace": ns, "server": "nats://x",
                "subject": "s", "stream": None, "durable": "nats-bridge",
                "pid": os.getpid(), "start_time": 0, "state": "connected",
                "relayed": 666, "refused": 0, "lost": 0, "reconnects": 0,
                "last_error": None, "stats": {}}
        fd = lockdir.open_dir(ns)
        try:
            with open(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600,
                              dir_fd=fd), "w") as f:
                json.dump(body, f)
            os.chown(name, OTHER_UID, OTHER_GID, dir_fd=fd)
            try:
                info = inspect_json("a", ns)
                assert info["bridges"] == []
                assert any(path in line and "another user's" in line
                           for line in info["skipped"]), info["skipped"]
                assert snapshot.take(ns)["bridges"] == []
                kept: list = []
                collect(ns, kept=kept)
                assert os.path.lexists(path), "gc removed another user's file"
            finally:
                os.unlink(name, dir_fd=fd)
        finally:
            os.close(fd)
    shmbus.unlink("a", namespace=ns)
