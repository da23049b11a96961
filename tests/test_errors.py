"""Bad input and bad state: each gets a clear error, and nothing accepted is lost."""

from __future__ import annotations

import errno
import os
import shlex
import sys

import posix_ipc
import pytest

import shmbus
from shmbus import layout, naming


@pytest.mark.parametrize("bad", ["", "a/b", "x" * 101, "sp ace", "é", ".", "..", None, 5,
                                 "semi;colon", "at@sign"])
def test_invalid_ring_names(ns, bad):
    with pytest.raises(shmbus.InvalidName, match="expected 1 to 100 characters"):
        shmbus.Producer(bad, capacity=4096)
    with pytest.raises(shmbus.InvalidName):
        shmbus.Consumer(bad)
    assert isinstance(shmbus.InvalidName("x"), ValueError)


def test_name_at_the_limit_works(ns):
    name = "n" * 100
    with shmbus.Producer(name, capacity=4096) as pub, shmbus.Consumer(name) as sub:
        pub.send(b"ok")
        assert bytes(sub.recv(timeout=1)) == b"ok"
    shmbus.unlink(name)


@pytest.mark.parametrize("bad", ["has.dot", "", "x" * 65, "a b"])
def test_invalid_namespace(bad):
    with pytest.raises(shmbus.InvalidName, match="namespace"):
        shmbus.Producer("r", capacity=4096, namespace=bad)


def test_invalid_durable_name(ns):
    with shmbus.Producer("r", capacity=4096) as pub:
        with pytest.raises(shmbus.InvalidName, match="durable name"):
            shmbus.Consumer("r", durable="no/slash")
        pub.unlink()


@pytest.mark.parametrize("cap", [0, -1, 100, 1 << 41, 4096.0, "4096", True])
def test_unusable_capacity(ns, cap):
    with pytest.raises(ValueError, match="capacity"):
        shmbus.Producer("r", capacity=cap)
    assert naming.owned_entries(ns, os.listdir(naming.SHM_DIR)) == []


def test_capacity_rounded_up_to_power_of_two(ns):
    with shmbus.Producer("r", capacity=5000) as pub:
        assert pub.capacity == 8192
        pub.unlink()


def test_missing_ring(ns):
    with pytest.raises(shmbus.RingNotFound, match="does not exist") as info:
        shmbus.Consumer("nope")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(shmbus.RingNotFound):
        shmbus.Producer("nope", create=False, capacity=4096)
    with pytest.raises(shmbus.RingNotFound, match="pass capacity="):
        shmbus.Producer("nope")


def test_capacity_mismatch(ns):
    with shmbus.Producer("r", capacity=4096):
        pass
    with pytest.raises(shmbus.LayoutMismatch, match="capacity 4096 bytes, not 8192"):
        shmbus.Producer("r", capacity=8192)
    with shmbus.Producer("r") as pub:  # no capacity: opens what is there
        assert pub.capacity == 4096
    shmbus.unlink("r")


def test_mode_mismatch(ns):
    shmbus.Producer("r", capacity=4096, on_full="overwrite").close()
    with pytest.raises(shmbus.LayoutMismatch, match="on_full='overwrite'"):
        shmbus.Producer("r")
    with pytest.raises(ValueError, match="on_full"):
        shmbus.Producer("r", on_full="drop")
    shmbus.unlink("r")


def _write_segment(ns: str, name: str, content: bytes) -> None:
    shm = posix_ipc.SharedMemory(naming.segment_name(ns, name), posix_ipc.O_CREX,
                                 size=len(content))
    try:
        os.pwrite(shm.fd, content, 0)
    finally:
        shm.close_fd()


@pytest.mark.parametrize("content", [os.urandom(1 << 16), b"\x01" * 100, b"x"],
                         ids=["random", "truncated", "tiny"])
def test_foreign_or_truncated_segment(ns, content):
    _write_segment(ns, "alien", content)
    try:
        for attempt in (lambda: shmbus.Consumer("alien"),
                        lambda: shmbus.Producer("alien", capacity=4096),
                        lambda: shmbus.inspect("alien")):
            with pytest.raises(shmbus.CorruptRing, match="shmbus rm alien"):
                attempt()
        listed = shmbus.list_rings()
        assert listed[0]["name"] == "alien" and "error" in listed[0]
    finally:
        shmbus.unlink("alien")


def test_half_made_segment_is_replaced_by_the_next_producer(ns):
    _write_segment(ns, "half", bytes(1 << 16))  # a creator died before the header
    with pytest.raises(shmbus.CorruptRing):
        shmbus.Consumer("half")
    with shmbus.Producer("half", capacity=4096) as pub, shmbus.Consumer("half") as sub:
        pub.send(b"fine")
        assert bytes(sub.recv(timeout=1)) == b"fine"
    shmbus.unlink("half")


def _patch_word(ns: str, name: str, index: int, value: int) -> None:
    shm = posix_ipc.SharedMemory(naming.segment_name(ns, name))
    try:
        os.pwrite(shm.fd, value.to_bytes(8, "little"), index * 8)
    finally:
        shm.close_fd()


def test_newer_layout_version(ns):
    with shmbus.Producer("v", capacity=4096) as pub:
        pub.send(b"kept")
    shm_version_word = layout.HEADER_DTYPE.fields["version"][1] // 8
    # version is a u32 sharing its word with header_size: keep header_size
    _patch_word(ns, "v", shm_version_word, (layout.HEADER_SIZE << 32) | 99)
    for attempt in (lambda: shmbus.Consumer("v"), lambda: shmbus.Producer("v")):
        with pytest.raises(shmbus.LayoutMismatch, match="layout version 99") as info:
            attempt()
        assert info.value.expected == layout.LAYOUT_VERSION and info.value.found == 99
    shmbus.unlink("v")


def test_corrupt_positions(ns):
    shmbus.Producer("c", capacity=4096).close()
    _patch_word(ns, "c", layout.H_TAIL, 1 << 40)
    with pytest.raises(shmbus.CorruptRing, match="positions are inconsistent"):
        shmbus.Consumer("c")
    shmbus.unlink("c")


def test_full_dev_shm_fails_at_creation(ns):
    with pytest.raises(shmbus.ShmFull, match="free") as info:
        shmbus.Producer("huge", capacity=1 << 40)  # 1 TiB: more than /dev/shm has
    assert info.value.needed > info.value.free
    assert not os.path.exists(naming.segment_path(ns, "huge"))


def test_enospc_from_fallocate_leaves_nothing(ns, monkeypatch):
    """Where /dev/shm fills up between our check and the allocation."""
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(shmbus.ShmFull, match="shmbus gc"):
        shmbus.Producer("r", capacity=1 << 16)
    assert not os.path.exists(naming.segment_path(ns, "r"))


def test_message_too_large_keeps_ring_usable(ns):
    with shmbus.Producer("big", capacity=4096) as pub, shmbus.Consumer("big") as sub:
        pub.send(b"before")
        with pytest.raises(shmbus.MessageTooLarge, match="largest payload is 2024 bytes"):
            pub.send(b"x" * 3000)
        with pytest.raises(shmbus.MessageTooLarge):
            pub.send_many([b"ok", b"x" * 3000])
        with pytest.raises(shmbus.MessageTooLarge):
            pub.claim(5000)
        with pytest.raises(shmbus.MessageTooLarge, match="key"):
            pub.send(b"", key=b"k" * 70000)
        assert [bytes(m) for m in sub.recv_many(10, timeout=1)] == [b"before", b"ok"]
    shmbus.unlink("big")


def test_bad_arguments(ns):
    with shmbus.Producer("r", capacity=4096) as pub:
        with pytest.raises(ValueError, match="start"):
            shmbus.Consumer("r", start="middle")
        with pytest.raises(ValueError, match="wait strategy"):
            shmbus.Consumer("r", wait="nap")
        with pytest.raises(TypeError):
            pub.send(12345)
        with shmbus.Consumer("r") as sub:
            with pytest.raises(ValueError, match="max_messages"):
                sub.recv_many(0)
        pub.unlink()


def test_unlink_removes_everything(ns):
    with shmbus.Producer("gone", capacity=4096) as pub, shmbus.Consumer("gone"):
        pub.send(b"x")
    assert shmbus.unlink("gone") is True
    assert shmbus.unlink("gone") is False
    assert naming.owned_entries(ns, os.listdir(naming.SHM_DIR)) == []


def _can_mount_tmpfs() -> bool:
    import shutil
    import subprocess
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c",
                            "mount -t tmpfs -o size=1M tmpfs /dev/shm"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root and unshare to mount "
                    "a small private /dev/shm; test_enospc_from_fallocate_leaves_nothing "
                    "simulates the same")
def test_really_full_dev_shm(ns):
    """In a private mount namespace whose /dev/shm is a 1 MiB tmpfs: the ring that does
    not fit fails with ShmFull, both at the free-space check and in posix_fallocate,
    leaving nothing behind, and the ring that fits keeps working (no SIGBUS)."""
    import subprocess
    import textwrap
    script = textwrap.dedent("""
        import os, shmbus, shmbus.segment as seg
        with shmbus.Producer("fits", capacity=512 << 10) as pub, \\
                shmbus.Consumer("fits") as sub:
            try:
                shmbus.Producer("big", capacity=2 << 20)
            except shmbus.ShmFull as e:
                print("precheck:", type(e).__name__)
            seg._check_free_space = lambda ring, size: None  # reach fallocate itself
            try:
                shmbus.Producer("big2", capacity=1 << 20)
            except shmbus.ShmFull as e:
                print("fallocate:", type(e).__name__)
            for i in range(3000):
                pub.send(b"x" * 1000)
                assert bytes(sub.recv(timeout=1)) == b"x" * 1000
            print("still works")
        shmbus.unlink("fits")
        print(sorted(os.listdir("/dev/shm")))
    """)
    out = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         f"mount -t tmpfs -o size=1M tmpfs /dev/shm && exec {sys.executable} -c "
         + shlex.quote(script)],
        capture_output=True, text=True, timeout=120, env={**os.environ,
                                                          "SHMBUS_NAMESPACE": ns})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:4] == ["precheck: ShmFull", "fallocate: ShmFull",
                                          "still works", "[]"], out.stdout


def test_consumer_of_a_ring_being_unlinked(ns):
    """What was accepted before the ring was removed is still delivered; then the
    waiting consumer is told the ring is gone instead of waiting forever."""
    pub = shmbus.Producer("doomed", capacity=4096)
    sub = shmbus.Consumer("doomed")
    try:
        pub.send_many([b"1", b"2", b"3"])
        pub.unlink()
        assert [bytes(sub.recv(timeout=1)) for _ in range(3)] == [b"1", b"2", b"3"]
        with pytest.raises(shmbus.RingNotFound, match="was removed"):
            sub.recv(timeout=5)
    finally:
        sub.close()
        shmbus.unlink("doomed")  # the consumer's semaphore, if it made one again


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root and unshare to mount "
                    "a small private /dev/shm")
def test_full_dev_shm_when_attaching_or_locking_is_shm_full(ns):
    """A full /dev/shm met when a consumer attaches (its semaphore, its lock files) or
    when a lock is taken is ShmFull, never a raw OSError; nothing accepted is lost."""
    import subprocess
    import textwrap
    script = textwrap.dedent("""
        import os, shmbus
        pub = shmbus.Producer("r", capacity=64 << 10)
        pub.send(b"kept")
        # Fill every last page of the 1 MiB /dev/shm.
        with open("/dev/shm/filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\\0" * 4096)
            except OSError:
                pass
        for what, make in (("consumer", lambda: shmbus.Consumer("r", start="earliest")),
                           ("durable", lambda: shmbus.Consumer("r", durable="d")),
                           ("lock", lambda: shmbus.FileLock("L").acquire(1))):
            try:
                make()
                print(what, "opened")
            except shmbus.ShmFull as e:
                print(what, "ShmFull", "shmbus gc" in str(e) or "free" in str(e))
            except OSError as e:
                print(what, "raw", type(e).__name__, e)
        os.unlink("/dev/shm/filler")
        with shmbus.Consumer("r", start="earliest") as sub:
            print(bytes(sub.recv(timeout=1)).decode())
        pub.close()
        shmbus.unlink("r")
    """)
    out = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         f"mount -t tmpfs -o size=1M tmpfs /dev/shm && exec {sys.executable} -c "
         + shlex.quote(script)],
        capture_output=True, text=True, timeout=120, env={**os.environ,
                                                          "SHMBUS_NAMESPACE": ns})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:4] == ["consumer ShmFull True", "durable ShmFull True",
                                          "lock ShmFull True", "kept"], out.stdout
