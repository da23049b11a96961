"""The shmbus bridge: relay rings through NATS JetStream, beyond one host.

``Outbound(ring, server, subject)`` relays a ring to a JetStream subject
(``shmbus bridge out``); ``Inbound(server, subject, ring)`` relays a subject into a
ring (``shmbus bridge in``); ``KVLease(name, ttl=..., server=...)`` is a lease with
:class:`shmbus.Lease`'s interface held in NATS KV, for holders on different hosts.
Needs nats-py (``pip install 'shmbus[nats]'``).
"""

from .inbound import Inbound
from .kvlease import KVLease
from .outbound import Outbound

__all__ = ["Outbound", "Inbound", "KVLease"]
