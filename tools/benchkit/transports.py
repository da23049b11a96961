"""The transports compared: shmbus and the peers users would pick instead.

Each transport has a picklable ``setup()`` result passed to child processes, a sender
(``send(payload)``, ``send_batch(list)``) and a receiver (``recv() -> int`` returning the
payload length, ``recv_batch(n) -> list of lengths``).  Peers that are not installed are
skipped with a note (install them with ``pip install '.[bench]'``).  Receivers do not
touch payload bytes beyond what the transport itself does: the zero-copy ones hand out
views, the others copies.
"""

from __future__ import annotations

import ctypes
import importlib.util
import multiprocessing as mp
import os
import uuid

import numpy as np

import shmbus

SPAWN = mp.get_context("spawn")
RING_CAPACITY = 64 << 20


class Transport:
    name = "?"
    module: str | None = None   # the importable module this peer needs
    broadcast = False           # every receiver gets every message
    batch = False               # has a batch API
    env: dict[str, str | None] = {}  # environment of its processes (None: unset)

    @classmethod
    def missing(cls) -> str | None:
        if cls.module and importlib.util.find_spec(cls.module) is None:
            return f"{cls.module} is not installed (pip install '.[bench]')"
        return None

    def setup(self, receivers: int, max_size: int) -> dict:
        return {}

    def teardown(self, cfg: dict) -> None:
        pass


class Shmbus(Transport):
    name = "shmbus"
    broadcast = batch = True

    def __init__(self, wait: str = "adaptive", zero_copy_send: bool = False,
                 arrays: bool = False, pure: bool = False):
        self.wait = wait
        self.zero_copy_send = zero_copy_send
        self.arrays = arrays  # batches as numpy arrays: send_array / recv_array
        # "shmbus" runs the compiled hot path where it is built, "shmbus-pure" the
        # pure-Python one, whatever the benchmark process itself runs.
        self.env = {"SHMBUS_PURE_PYTHON": "1" if pure else None,
                    "SHMBUS_REQUIRE_COMPILED": None if pure else
                    os.environ.get("SHMBUS_REQUIRE_COMPILED")}
        base = "shmbus-pure" if pure else "shmbus"
        self.name = base
        if wait != "adaptive":
            self.name = f"{base}[{wait}]"
        if zero_copy_send:
            self.name = f"{base}[claim]"
        if arrays:
            self.name = f"{base}[arrays]"

    def setup(self, receivers: int, max_size: int) -> dict:
        ns = f"bench{os.getpid()}x{uuid.uuid4().hex[:6]}"
        # Large messages: a ring of 8 messages stays in cache, as a user would size it.
        cap = RING_CAPACITY if max_size <= 4096 else 1 << (8 * max_size - 1).bit_length()
        shmbus.Producer("b", capacity=cap, namespace=ns).close()
        return {"ns": ns, "wait": self.wait, "claim": self.zero_copy_send,
                "arrays": self.arrays, "size": max_size}

    def teardown(self, cfg: dict) -> None:
        shmbus.unlink("b", namespace=cfg["ns"])

    @staticmethod
    def sender(cfg: dict):
        return _ShmbusSender(cfg)

    @staticmethod
    def receiver(cfg: dict, index: int):
        return _ShmbusReceiver(cfg)


class _ShmbusSender:
    needs_warmup = False

    def __init__(self, cfg):
        self.pub = shmbus.Producer("b", namespace=cfg["ns"], wait=cfg["wait"])
        self.send = self.pub.send
        self.send_batch = self.pub.send_many
        if cfg["arrays"]:  # the harness sends one list over and over: convert it once
            send_array, arrays = self.pub.send_array, {}

            def send_batch(chunk):
                a = arrays.get(id(chunk))
                if a is None:
                    a = arrays[id(chunk)] = np.frombuffer(b"".join(chunk), (
                        np.uint8, len(chunk[0]))).copy()
                send_array(a)
            self.send_batch = send_batch
        if cfg["claim"]:
            claim = self.pub.claim

            def send(payload, claim=claim):
                with claim(len(payload)) as buf:
                    buf[:] = payload
            self.send = send

    def close(self):
        self.pub.close()


class _ShmbusReceiver:
    def __init__(self, cfg):
        self.sub = shmbus.Consumer("b", namespace=cfg["ns"], wait=cfg["wait"])
        recv, recv_many = self.sub.recv, self.sub.recv_many
        self.recv = lambda: len(recv().data)
        self.recv_batch = lambda n: [len(m.data) for m in recv_many(n)]
        if cfg["arrays"]:  # one strided view per batch; each row is one message
            recv_array, size = self.sub.recv_array, cfg["size"]
            row = np.dtype((np.uint8, size))
            self.recv_batch = lambda n: [size] * len(recv_array(row, n))

    def close(self):
        self.sub.close()


class MpQueue(Transport):
    name = "multiprocessing.Queue"

    def setup(self, receivers, max_size):
        return {"q": SPAWN.Queue(maxsize=10000)}

    @staticmethod
    def sender(cfg):
        return _Obj(send=cfg["q"].put)

    @staticmethod
    def receiver(cfg, index):
        get = cfg["q"].get
        return _Obj(recv=lambda: len(get()))


class MpPipe(Transport):
    name = "multiprocessing.Pipe"

    def setup(self, receivers, max_size):
        r, w = SPAWN.Pipe(duplex=False)
        return {"r": r, "w": w}

    @staticmethod
    def sender(cfg):
        return _Obj(send=cfg["w"].send_bytes)

    @staticmethod
    def receiver(cfg, index):
        recv = cfg["r"].recv_bytes
        return _Obj(recv=lambda: len(recv()))


class FasterFifo(Transport):
    name = "faster-fifo"
    module = "faster_fifo"
    batch = True

    def setup(self, receivers, max_size):
        import faster_fifo
        return {"q": faster_fifo.Queue(max_size_bytes=max(64 << 20, 8 * max_size))}

    @staticmethod
    def sender(cfg):
        q = cfg["q"]
        return _Obj(send=lambda p: q.put(p, timeout=60),
                    send_batch=lambda ps: q.put_many(ps, timeout=60))

    @staticmethod
    def receiver(cfg, index):
        q = cfg["q"]
        return _Obj(recv=lambda: len(q.get(timeout=60)),
                    recv_batch=lambda n: [len(x) for x in q.get_many(
                        max_messages_to_get=n, timeout=60)])


class Zmq(Transport):
    name = "pyzmq"
    module = "zmq"

    def __init__(self, pubsub: bool = False):
        self.pubsub = pubsub
        self.broadcast = pubsub
        self.name = "pyzmq PUB/SUB" if pubsub else "pyzmq PUSH/PULL"

    def setup(self, receivers, max_size):
        return {"addr": f"ipc:///tmp/shmbus-bench-{uuid.uuid4().hex[:8]}.sock",
                "pubsub": self.pubsub}

    def teardown(self, cfg):
        try:
            os.unlink(cfg["addr"][len("ipc://"):])
        except FileNotFoundError:
            pass

    @staticmethod
    def sender(cfg):
        import zmq
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUB if cfg["pubsub"] else zmq.PUSH)
        if cfg["pubsub"]:  # unbounded: PUB drops at its high-water mark otherwise
            sock.setsockopt(zmq.SNDHWM, 0)
        sock.bind(cfg["addr"])
        return _Obj(send=sock.send, close=lambda: (sock.close(linger=-1), ctx.term()),
                    needs_warmup=cfg["pubsub"])

    @staticmethod
    def receiver(cfg, index):
        import zmq
        ctx = zmq.Context()
        sock = ctx.socket(zmq.SUB if cfg["pubsub"] else zmq.PULL)
        if cfg["pubsub"]:
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(cfg["addr"])
        recv = sock.recv
        return _Obj(recv=lambda: len(recv(copy=True)),
                    close=lambda: (sock.close(linger=0), ctx.term()))


class Iceoryx2(Transport):
    name = "iceoryx2"
    module = "iceoryx2"
    broadcast = True

    def setup(self, receivers, max_size):
        return {"service": f"shmbus-bench-{uuid.uuid4().hex[:8]}", "max": max_size}

    @staticmethod
    def _service(cfg):
        import iceoryx2 as iox2
        iox2.set_log_level(iox2.LogLevel.Error)
        node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        svc = (node.service_builder(iox2.ServiceName.new(cfg["service"]))
               .publish_subscribe(iox2.Slice[ctypes.c_uint8])
               .enable_safe_overflow(False).subscriber_max_buffer_size(1024)
               .max_subscribers(8).history_size(0).open_or_create())
        return iox2, node, svc

    @staticmethod
    def sender(cfg):
        iox2, node, svc = Iceoryx2._service(cfg)
        pub = (svc.publisher_builder().initial_max_slice_len(cfg["max"])
               .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
               .create())
        loan, memmove = pub.loan_slice_uninit, ctypes.memmove

        def send(payload):
            sample = loan(len(payload))
            memmove(sample.payload().as_ptr(), payload, len(payload))
            sample.assume_init().send()
        return _Obj(send=send, keep=(node, svc, pub), needs_warmup=True)

    @staticmethod
    def receiver(cfg, index):
        iox2, node, svc = Iceoryx2._service(cfg)
        sub = svc.subscriber_builder().buffer_size(1024).create()
        receive = sub.receive

        def recv():
            while True:  # iceoryx2's Python binding has no blocking receive
                sample = receive()
                if sample is not None:
                    return sample.payload().len()
        return _Obj(recv=recv, keep=(node, svc, sub))


class _Obj:
    """A sender or receiver made of functions."""

    def __init__(self, send=None, send_batch=None, recv=None, recv_batch=None,
                 close=None, keep=None, needs_warmup=False):
        self.send, self.send_batch = send, send_batch
        self.recv, self.recv_batch = recv, recv_batch
        self._close, self._keep = close, keep
        self.needs_warmup = needs_warmup

    def close(self):
        if self._close:
            self._close()


def all_transports() -> list[Transport]:
    return [Shmbus(), MpQueue(), MpPipe(), FasterFifo(), Zmq(), Iceoryx2()]
