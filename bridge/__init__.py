"""The shmbus bridge: relay rings through NATS JetStream, beyond one host.

``Outbound(ring, server, subject)`` relays a ring to a JetStream subject
(``shmbus bridge out``); ``Inbound(server, subject, ring)`` relays a subject into a
ring (``shmbus bridge in``).  Needs nats-py (``pip install 'shmbus[nats]'``).
"""

from .inbound import Inbound
from .outbound import Outbound

__all__ = ["Outbound", "Inbound"]
