"""The shmbus balancer: work queues over rings (round-robin, consistent hash).

Not built yet: see the balancer issue.  The package exists so that the distribution's
layout (shmbus, balancer, tools) is in place.
"""
