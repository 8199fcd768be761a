"""Plots a soak's samples (scripts/soak): connects per minute, latency, memory and threads.

Usage: python3 scripts/soak-plot.py soak.csv soak.png
Prints start and end RSS, its growth per hour (least squares over the samples after the first
five minutes) and the refusals of valid clients.
"""

import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, dst):
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"{src}: no samples")
    t = [float(r["minute"]) for r in rows]
    col = lambda name: [float(r[name]) for r in rows]  # noqa: E731
    rss = [v / 1024 for v in col("rss_kib")]
    fig, ax = plt.subplots(4, 1, figsize=(10, 12), sharex=True)
    ax[0].plot(t, col("valid_ok"), label="valid admitted")
    ax[0].plot(t, col("valid_refused"), label="valid refused")
    ax[0].plot(t, col("invalid_refused"), label="invalid refused")
    ax[0].set_ylabel("connects per sample")
    ax[1].plot(t, col("client_p50_ms"), label="client connect p50")
    ax[1].plot(t, col("client_p99_ms"), label="client connect p99")
    ax[1].plot(t, col("decision_p99_ms"), label="decision p99 (bucket bound)")
    ax[1].set_ylabel("ms")
    ax[1].set_yscale("log")
    ax[2].plot(t, rss, label="RSS")
    ax[2].set_ylabel("MiB")
    ax[3].plot(t, col("threads"), label="threads")
    ax[3].set_ylabel("threads")
    ax[3].set_xlabel("minutes")
    for a in ax:
        a.legend(loc="upper left")
        a.grid(True, alpha=0.3)
    for r, x in zip(rows, t):
        if r["events"]:
            ax[0].annotate(r["events"], (x, 0), fontsize=6, rotation=90, va="bottom")
    fig.tight_layout()
    fig.savefig(dst, dpi=100)
    steady = [(x, y) for x, y in zip(t, rss) if x >= 5] or list(zip(t, rss))
    n = len(steady)
    mx = sum(x for x, _ in steady) / n
    my = sum(y for _, y in steady) / n
    var = sum((x - mx) ** 2 for x, _ in steady)
    slope = sum((x - mx) * (y - my) for x, y in steady) / var if var else 0.0
    print(f"samples: {len(rows)} over {t[-1]:.1f} min; RSS {rss[0]:.1f} MiB -> {rss[-1]:.1f} MiB, "
          f"growth {slope * 60:.2f} MiB/hour after minute 5; threads {col('threads')[0]:.0f} -> "
          f"{col('threads')[-1]:.0f}; valid refused {sum(col('valid_refused')):.0f} of "
          f"{sum(col('valid_ok')) + sum(col('valid_refused')):.0f}; invalid admitted "
          f"{sum(col('invalid_admitted')):.0f}; client errors {sum(col('client_errors')):.0f}; plot {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
