"""``shmbus doctor``: check the host for what breaks shared memory in practice."""

from __future__ import annotations

import os
import platform
import stat

import click

from shmbus import naming
from shmbus.cleanup import collect

from .options import emit_json, json_option, namespace_option


def checks(namespace: str | None) -> list[dict]:
    out = []

    def add(status, what, detail, fix=""):
        out.append({"status": status, "check": what, "detail": detail, "fix": fix})

    try:
        st = os.statvfs(naming.SHM_DIR)
        size, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        gib = 1 << 30
        if size < 256 << 20:
            add("warn", "/dev/shm size", f"{size / 2**20:.0f} MiB (free {free / 2**20:.0f} MiB)",
                "containers default to 64 MB: run Docker with --shm-size=1g, or remount "
                "/dev/shm larger")
        else:
            add("ok", "/dev/shm size", f"{size / gib:.1f} GiB, {free / gib:.1f} GiB free")
        mode = os.stat(naming.SHM_DIR).st_mode
        if not mode & stat.S_ISVTX or (mode & 0o777) != 0o777:
            add("warn", "/dev/shm permissions", f"mode {stat.filemode(mode)}",
                "expected drwxrwxrwt (world-writable, sticky): chmod 1777 /dev/shm")
        else:
            add("ok", "/dev/shm permissions", stat.filemode(mode))
    except OSError as e:
        add("fail", "/dev/shm", str(e), "shmbus needs a tmpfs at /dev/shm")
    from shmbus import hotpath
    if hotpath.compiled:
        add("ok", "hot path", f"compiled ({hotpath.reason})")
    else:
        add("warn", "hot path", f"pure Python: {hotpath.reason}",
            "single messages are several times faster compiled: install a C compiler "
            "and the Python headers, then reinstall shmbus")
    machine = platform.machine()
    if machine in ("x86_64", "AMD64"):
        add("ok", "CPU architecture", f"{machine}: total store order, as shmbus assumes")
    else:
        add("fail", "CPU architecture", f"{machine}: weaker memory ordering than x86-64",
            "shmbus's lock-free rings are only claimed on x86-64 (see README)")
    ns = naming.resolve_namespace(namespace)
    kept: list[dict] = []
    left = collect(ns, dry_run=True, kept=kept)
    if left:
        add("warn", "leftovers", f"{len(left)} item(s) no live process owns in namespace "
            f"{ns!r}", "run `shmbus gc`")
    else:
        add("ok", "leftovers", "none")
    for item in kept:
        add("warn", f"{item['kind']} {item['name']}", item["reason"],
            "`shmbus gc --dry-run` lists what gc keeps and why")
    return out


@click.command("doctor", epilog="""\b
Examples:
  shmbus doctor
  shmbus doctor --json""")
@namespace_option
@json_option
def command(namespace, as_json) -> None:
    """Check /dev/shm (size, free space, permissions), leftovers and the CPU."""
    results = checks(namespace)
    if as_json:
        emit_json(results)
    else:
        for r in results:
            line = f"{r['status']:>4}  {r['check']}: {r['detail']}"
            click.echo(line + (f"\n      -> {r['fix']}" if r["fix"] else ""))
    if any(r["status"] == "fail" for r in results):
        raise click.exceptions.Exit(1)
