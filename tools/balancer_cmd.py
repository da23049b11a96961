"""``shmbus balancer run INPUT... --group G --policy P``: run a balancer in the
foreground (as standby while another process leads the group)."""

from __future__ import annotations

import signal

import click

from .options import namespace_option


@click.group("balancer", epilog="""\b
Example:
  shmbus balancer run orders --group billing --policy consistent-hash""")
def command() -> None:
    """Work queues: run the balancer of a group."""


@command.command("run", epilog="""\b
Examples:
  shmbus balancer run orders --group billing
  shmbus balancer run orders refunds -g billing -p consistent-hash --prefetch 100
\b
Workers join in Python: shmbus.balancer.Worker("billing", "w1").""")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--group", "-g", required=True,
              help="Group name: [A-Za-z0-9_-], no dot (workers join it).")
@click.option("--policy", "-p", type=click.Choice(["round-robin", "consistent-hash"]),
              default="round-robin", show_default=True)
@click.option("--prefetch", type=int, default=1000, show_default=True,
              help="Unacknowledged messages a worker may hold.")
@click.option("--max-deliveries", type=int, default=5, show_default=True,
              help="Deliveries before a message goes to GROUP.dlq.")
@click.option("--load-factor", type=float, default=None,
              help="Consistent hashing with bounded loads: at most (1+F) x mean.")
@click.option("--lease-ttl", type=float, default=2.0, show_default=True)
@click.option("--seconds", type=float, default=None, help="Stop after this long.")
@namespace_option
def run(inputs, group, policy, prefetch, max_deliveries, load_factor, lease_ttl, seconds,
        namespace) -> None:
    """Dispatch messages of the INPUT rings to the group's workers until Ctrl-C."""
    from shmbus.balancer import Balancer
    from shmbus.balancer.policies import ConsistentHash, RoundRobin

    chosen = (ConsistentHash(load_factor=load_factor) if policy == "consistent-hash"
              else RoundRobin())
    b = Balancer(group, list(inputs), policy=chosen, namespace=namespace,
                 prefetch=prefetch, max_deliveries=max_deliveries, lease_ttl=lease_ttl)
    signal.signal(signal.SIGTERM, lambda *a: b.stop(0))
    click.echo(f"balancer of group {group!r} over {', '.join(inputs)} ({policy}): "
               "waiting to lead", err=True)
    try:
        b.run(duration=seconds)
    except KeyboardInterrupt:
        pass
    finally:
        b.stop(0)
    s = b.counters
    click.echo(f"dispatched {s['dispatched']}, redelivered {s['redelivered']}, "
               f"dead-lettered {s['dead_lettered']}", err=True)
