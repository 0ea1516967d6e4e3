"""The README's chart of bench/suite.py's results: reads (ms, log scale), reads at 16 clients
(requests/s), ingest (msg/s) against its HTTP and asyncpg floors, and ingest with one worker
and two, app and floor side by side."""

from pathlib import Path
from typing import Any

READ_LABELS = {
    "unread_badge": ("unreadCount", "floor"),
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
    figure, (reads, rates, ingest, workers) = plt.subplots(
        1, 4, figsize=(24, 5.6), width_ratios=(3, 3, 3, 1.2)
    )
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
        label="floor (hand-written SQL behind Starlette)",
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

    app_rps = [
        size["reads"][name]["throughput"]["app_requests_per_s"]
        for name in READ_LABELS
        for size in sizes
    ]
    floor_rps = [
        size["reads"][name]["throughput"]["floor_requests_per_s"]
        for name in READ_LABELS
        for size in sizes
    ]
    rates.bar([p - width / 2 for p in positions], app_rps, width, label="wa-inbox (GraphQL)")
    rates.bar([p + width / 2 for p in positions], floor_rps, width, label="floor")
    for offset, values in ((-width / 2, app_rps), (width / 2, floor_rps)):
        for position, value in zip(positions, values, strict=True):
            rates.annotate(
                f"{value:.0f}", (position + offset, value), ha="center", va="bottom", fontsize=7
            )
    rates.set_xticks(list(positions), labels, fontsize=8)
    rates.set_yscale("log")
    rates.set_ylabel("requests per second (log)")
    rates.set_title(f"Reads over HTTP, {results['plan']['clients']} concurrent clients")
    rates.legend(fontsize=8)

    # Each way beside the HTTP floor that receives the same JSON and the asyncpg floor.
    labels = []
    bars: dict[str, list[float]] = {"app": [], "http": [], "asyncpg": []}
    for name, label in INGEST_LABELS.items():
        for size in sizes:
            figures = size["ingest"]
            labels.append(f"{label}\n{size['size']}")
            bars["app"].append(figures[name]["messages_per_s"])
            bars["http"].append(figures[figures[name]["http_floor"]]["messages_per_s"])
            bars["asyncpg"].append(figures["floor"]["messages_per_s"])
    positions = range(len(labels))
    third = 0.27
    legends = {
        "app": "wa-inbox over HTTP, 1 worker",
        "http": "HTTP floor: the same JSON, 2 statements on asyncpg (bench/floor.py)",
        "asyncpg": "asyncpg floor: the 2 statements, no HTTP",
    }
    for offset, (key, values) in zip((-third, 0.0, third), bars.items(), strict=True):
        ingest.bar([p + offset for p in positions], values, third, label=legends[key])
        for position, value in zip(positions, values, strict=True):
            ingest.annotate(
                f"{value:.0f}", (position + offset, value), ha="center", va="bottom", fontsize=7
            )
    ingest.set_xticks(list(positions), labels, fontsize=8)
    ingest.set_ylabel("messages per second")
    clients = results["plan"]["clients"]
    ingest.set_title(f"Ingest, {clients} concurrent clients")
    ingest.set_ylim(top=max(max(values) for values in bars.values()) * 1.3)  # room for the legend
    ingest.legend(fontsize=7, loc="upper left")

    labels, one, two = [], [], []
    for size in sizes:
        measured = size["ingest"]["workers"]
        labels.append(f"{size['size']}\n{measured['ratio']:.2f}x")
        one.append(measured["one_worker"]["messages_per_s"])
        two.append(measured["two_workers"]["messages_per_s"])
    positions = range(len(labels))
    workers.bar([p - width / 2 for p in positions], one, width, label="1 worker")
    workers.bar([p + width / 2 for p in positions], two, width, label="WORKERS=2")
    for offset, values in ((-width / 2, one), (width / 2, two)):
        for position, value in zip(positions, values, strict=True):
            workers.annotate(
                f"{value:.0f}", (position + offset, value), ha="center", va="bottom", fontsize=7
            )
    workers.set_xticks(list(positions), labels, fontsize=8)
    workers.set_ylabel("messages per second")
    clients = sizes[0]["ingest"]["workers"]["clients"]
    workers.set_title(f"ingestMessage, {clients} clients", fontsize=10)
    workers.set_ylim(top=max(one + two) * 1.3)
    workers.legend(fontsize=7, loc="upper left")

    host = results["machine"]
    figure.suptitle(
        f"wa-inbox benchmark suite: {host['cpus']} CPUs ({host['cpu_model']}), "
        f"{host['ram_gb']} GB, PostgreSQL {results['postgresql']}; load average "
        f"{results['load_average']['start']:.1f} at the start, "
        f"{results['load_average']['end']:.1f} at the end",
        fontsize=10,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
