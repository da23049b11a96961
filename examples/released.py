"""Zero-copy lifetime: a received message lives until it is released.

``msg.data`` is a memoryview into the ring itself: no copy out.  The bytes it shows
belong to the ring, and once the message is released (by the next ``recv``, by
``msg.release()``, ``sub.release()`` or ``close()``) the producer may write other
messages over them.  So after the release ``msg.data`` and ``bytes(msg)`` raise
``shmbus.Released``, and a view taken before is released too: it raises
``ValueError`` instead of showing another message's bytes.  Keep a copy
(``bytes(msg)``) of whatever must outlive the message.

A numpy array made from ``msg.data`` holds the view itself, so shmbus cannot release
it: it is the caller's to drop before the release (or to copy with ``arr.copy()``).

Run it with ``python examples/released.py``.
"""

from __future__ import annotations

import os

import numpy as np

import shmbus


def main() -> None:
    # A namespace of its own (SHMBUS_NAMESPACE if set: the tests run it in theirs).
    ns = os.environ.get("SHMBUS_NAMESPACE") or f"released{os.getpid()}"
    with shmbus.Producer("frames", capacity=1 << 16, namespace=ns) as pub, \
            shmbus.Consumer("frames", namespace=ns) as sub:
        pub.send(b"first message")
        pub.send(b"second message")

        # 1. Valid until released: a view into the ring, and a copy to keep.
        msg = sub.recv(timeout=1)
        view = msg.data                      # zero-copy: the ring's own bytes
        kept = bytes(msg)                    # a copy of our own, kept after release
        print(f"received seq {msg.seq}: data {bytes(view)!r}, kept copy {kept!r}")

        # 2. The next recv releases it: the producer may now reuse those bytes.
        second = sub.recv(timeout=1)
        try:
            msg.data
        except shmbus.Released as e:
            print(f"after the next recv, msg.data raises shmbus.Released: {e}")
        else:
            raise SystemExit("msg.data was still readable after its release")
        try:
            bytes(view)
        except ValueError:
            print("and the view taken before is released too (ValueError on use)")
        else:
            raise SystemExit("a view of a released message was still readable")
        print(f"the copy is still ours: {kept!r}")

        # 3. Release explicitly, e.g. before a long computation on a copy.
        print(f"second message: {bytes(second.data)!r}; msg.release() hands it back")
        second.release()
        try:
            bytes(second)
        except shmbus.Released:
            print("after msg.release(), bytes(msg) raises shmbus.Released as well")
        else:
            raise SystemExit("bytes(msg) worked after msg.release()")

        # 4. numpy: a view of a view.  shmbus cannot release an array's buffer, so drop
        #    the array before the release, or copy what must outlive the message.
        pub.send(np.arange(8, dtype=np.int64).tobytes())
        frame = sub.recv(timeout=1)
        arr = np.frombuffer(frame.data, np.int64)   # zero-copy, read-only
        total = int(arr.sum())
        keep_arr = arr.copy()                       # an array of our own
        del arr                                     # the caller drops its view
        frame.release()
        print(f"numpy view summed to {total} in place; kept copy {keep_arr.tolist()}")
    shmbus.unlink("frames", namespace=ns)
    left = [e for e in os.listdir("/dev/shm") if ns in e]
    print("/dev/shm is clean" if not left else f"leftovers in /dev/shm: {left}")


if __name__ == "__main__":
    main()
