"""The README's chart of bench/suite.py's results: reads (ms, log scale) and ingest (msg/s)."""

from pathlib import Path
from typing import Any

READ_LABELS = {
    "unread_badge": ("unreadCount", "seed COUNT(*)"),
    "thread_list": ("threads(first: 50)", "floor"),
    "thread_end": ("messages(last: 50)", "floor"),
}
INGEST_LABELS = {
    "ingest_mutation": "mutation",
    "webhook_1": "webhook\n1/delivery",
    "webhook_10": "webhook\n10/delivery",
}


def draw(results: dict[str, Any], path: Path) -> None:
    """Write the chart of `results` (bench/suite.py's JSON) as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = results["sizes"]
    figure, (reads, ingest) = plt.subplots(1, 2, figsize=(14, 5.6), width_ratios=(3, 2))
    width = 0.38

    labels, app_ms, base_ms = [], [], []
    for name, (app_label, _) in READ_LABELS.items():
        for size in sizes:
            figures = size["reads"][name]
            labels.append(f"{app_label}\n{size['size']}")
            app_ms.append(figures["app"]["median_ms"])
            base_ms.append(figures["baseline"]["median_ms"])
    positions = range(len(labels))
    reads.bar([p - width / 2 for p in positions], app_ms, width, label="wa-inbox (GraphQL)")
    reads.bar(
        [p + width / 2 for p in positions],
        base_ms,
        width,
        label="baseline (seed SQL / hand-written floor)",
    )
    for position, value in zip(positions, app_ms, strict=True):
        reads.annotate(
            f"{value:.1f}", (position - width / 2, value), ha="center", va="bottom", fontsize=7
        )
    for position, value in zip(positions, base_ms, strict=True):
        reads.annotate(
            f"{value:.1f}", (position + width / 2, value), ha="center", va="bottom", fontsize=7
        )
    reads.set_yscale("log")
    reads.set_xticks(list(positions), labels, fontsize=8)
    reads.set_ylabel("median latency, ms (log)")
    reads.set_title("Reads over HTTP: median per request")
    reads.legend(fontsize=8)

    labels, app_rate, floor_rate = [], [], []
    for name, label in INGEST_LABELS.items():
        for size in sizes:
            labels.append(f"{label}\n{size['size']}")
            app_rate.append(size["ingest"][name]["messages_per_s"])
            floor_rate.append(size["ingest"]["floor"]["messages_per_s"])
    positions = range(len(labels))
    ingest.bar([p - width / 2 for p in positions], app_rate, width, label="wa-inbox over HTTP")
    ingest.bar(
        [p + width / 2 for p in positions],
        floor_rate,
        width,
        label="floor: the 2 statements on asyncpg",
    )
    ingest.set_xticks(list(positions), labels, fontsize=8)
    ingest.set_ylabel("messages per second")
    clients = results["plan"]["clients"]
    ingest.set_title(f"Ingest, {clients} concurrent clients")
    ingest.legend(fontsize=8)

    host = results["machine"]
    figure.suptitle(
        f"wa-inbox benchmark suite: {host['cpus']} CPUs ({host['cpu_model']}), "
        f"{host['ram_gb']} GB, PostgreSQL {results['postgresql']}",
        fontsize=10,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
