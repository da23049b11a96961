"""A short run of ``bench.bridge_chaos``: bridges killed (-9) and the server restarted
and killed at random while messages flow; ring B must equal ring A."""

from __future__ import annotations

import pytest

from .nats_server import binary_or_skip

pytest.importorskip("nats", reason="the bridge needs nats-py (the test extra)")


@pytest.mark.timeout(120)
def test_bridge_chaos_loses_nothing_and_keeps_order():
    binary_or_skip()
    from bench import bridge_chaos
    res = bridge_chaos.run(seconds=6, seed=1, interval=0.5)
    assert res["sent"] > 0 and res["bridge kills"] + res["server restarts"] > 0
    wrong = ("lost", "gaps", "duplicates", "undelivered")
    assert [res[k] for k in wrong] == [0, 0, 0, 0], res
    assert res["received"] == res["sent"]
