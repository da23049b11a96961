"""PNG charts of benchmark results (matplotlib, the optional ``plot`` extra):
throughput against message size, and round-trip latency distributions."""

from __future__ import annotations

from .harness import CDF_PERCENTS


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install '.[plot]'") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def throughput_vs_size(summary: dict, path: str, memcpy: float | None = None) -> None:
    """One line per transport: median bytes/s against message size (log-log), with the
    min-max of the runs as error bars, and memcpy bandwidth as the limit.  ``summary``
    is one_to_one_throughput's: keys ``"{size}B {transport}"``."""
    plt = _pyplot()
    lines: dict[str, list[tuple[int, dict]]] = {}
    for name, s in summary.items():
        size, transport = name.split(" ", 1)
        if "batch=" in transport:
            continue
        lines.setdefault(transport, []).append((int(size.rstrip("B")), s["bytes_per_s"]))
    fig, ax = plt.subplots(figsize=(8, 5))
    for transport, points in sorted(lines.items()):
        points.sort()
        xs = [p[0] for p in points]
        med = [p[1]["median"] / 1e9 for p in points]
        err = [[m - p[1]["min"] / 1e9 for m, p in zip(med, points)],
               [p[1]["max"] / 1e9 - m for m, p in zip(med, points)]]
        ax.errorbar(xs, med, yerr=err, marker="o", capsize=3, label=transport,
                    linewidth=2.5 if transport.startswith("shmbus") else 1.2)
    if memcpy:
        ax.axhline(memcpy / 1e9, color="grey", linestyle="--", label="memcpy (limit)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _finish(plt, fig, ax, path, "message size (bytes)", "GB/s received (median, min-max)",
            "one producer to one consumer")


def latency_cdf(summary: dict, path: str) -> None:
    """One curve per transport: the distribution of round-trip times (all runs'
    quantiles pooled), log time axis, with the tail stretched."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, s in summary.items():
        runs = s["quantiles_us"]["runs"]
        xs = [sum(run[i] for run in runs) / len(runs) for i in range(len(CDF_PERCENTS))]
        # y: -log10(1 - p) stretches 99, 99.9, 99.99 apart
        ys = [min(p, 99.999) for p in CDF_PERCENTS]
        ax.plot(xs, [_tail(y) for y in ys], label=name,
                linewidth=2.5 if name.startswith("shmbus") else 1.2)
    ticks = [50, 90, 99, 99.9, 99.99]
    ax.set_yticks([_tail(t) for t in ticks], [f"p{t:g}" for t in ticks])
    ax.set_xscale("log")
    _finish(plt, fig, ax, path, "round trip, 64 B (µs), mean of the runs' quantiles",
            "percentile", "ping-pong latency distribution")


def _finish(plt, fig, ax, path: str, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _tail(percent: float) -> float:
    import math
    return -math.log10(1 - percent / 100)
