"""The shmbus balancer: work queues over rings (round-robin, consistent hash).

``Balancer(group, inputs, policy=...)`` reads input rings and gives each message to
exactly one ``Worker(group, name)``; see :mod:`shmbus.balancer.balancer`.
"""

from .balancer import Balancer
from .policies import ConsistentHash, RoundRobin
from .stats import BalancerStats, WorkerStats
from .stats import read as read_stats
from .worker import Worker

__all__ = ["Balancer", "Worker", "RoundRobin", "ConsistentHash", "read_stats", "BalancerStats",
           "WorkerStats"]
