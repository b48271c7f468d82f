"""Run every benchmark in one go on this machine and write the figures beside their
floors: ``benchmarks/out/results.json`` and ``benchmarks/out/results.md``.

    python -m benchmarks.run              # everything (what ``make bench`` runs)
    python -m benchmarks.run --quick      # short runs and 100 Plugins: tries the harness
    BENCH_PLUGINS=1000 python -m benchmarks.run   # the operator with 1,000 Plugins only

Progress goes to stderr; the paths of the results to stdout.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import report, verification
from benchmarks.cluster import Bench, Settings

OUT = Path(__file__).resolve().parent / "out"
PACKAGES = ("cryptography", "aiohttp", "kubernetes", "kopf", "uvloop", "orjson")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpus": os.cpu_count(), "cpu_model": model, "platform": platform.platform(),
        "python": platform.python_version(), "packages": versions,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }


def _git(*arguments: str) -> str:
    try:
        return subprocess.run(["git", *arguments], capture_output=True, text=True,
                              cwd=OUT.parent, check=False).stdout.strip()
    except OSError:
        return ""


def _kube_version(bench: Bench) -> str:
    done = subprocess.run([str(bench.plane.bin_dir / "kube-apiserver"), "--version"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip()


def run_verification(quick: bool) -> dict[str, Any]:
    timing = verification.Timing(repeat=3, min_seconds=0.01) if quick else verification.Timing()
    everything = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})  # one core, as the webhook gets
    try:
        return verification.run(timing=timing)
    finally:
        os.sched_setaffinity(0, everything)


def run_cluster(settings: Settings, directory: Path, *, webhook_only: bool = False
                ) -> dict[str, Any]:
    bench = Bench(directory, settings, log=log).start()
    results: dict[str, Any] = {"kube_apiserver": _kube_version(bench)}
    try:
        log("webhook beside the floor")
        results["webhook"] = bench.webhook_vs_floor()
        log(f"latency by containers in the pod, at {settings.scaling_rate} req/s")
        results["by_containers"] = bench.by_containers()
        results["by_plugins_cached"] = [bench.by_plugins_cached(1)]
        log("pods created through kube-apiserver")
        results["pods"] = bench.pods_through_apiserver()
        if webhook_only:
            return results
        results["operator"] = []
        cached = 1 + 3 * settings.pod_rounds  # one Plugin per namespace so far
        for count in settings.plugin_counts:
            log(f"operator: {count} Plugins")
            results["operator"].append(bench.reconcile(count))
            cached += count
            results["by_plugins_cached"].append(bench.by_plugins_cached(cached))
        log("the operator's floor: its API writes from a client that does nothing else")
        bench.stop_operator()
        results["api_floor"] = [bench.api_floor(count) for count in settings.plugin_counts]
        log("webhook while kube-apiserver is stopped")
        results["api_server_stopped"] = bench.api_server_frozen()
    finally:
        bench.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs, to try the harness")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--only", choices=["verification", "cluster", "webhook"],
                        help="run one part only (webhook: all but the operator)")
    args = parser.parse_args()
    settings = Settings.quick() if args.quick else Settings()
    if os.environ.get("BENCH_PLUGINS"):
        settings.plugin_counts = tuple(int(n) for n in os.environ["BENCH_PLUGINS"].split(",") if n)

    results: dict[str, Any] = {"machine": machine(), "quick": args.quick}
    began = time.monotonic()
    if args.only in (None, "verification"):
        log("verification, per algorithm and format")
        results["verification"] = run_verification(args.quick)
    if args.only in (None, "cluster", "webhook"):
        with tempfile.TemporaryDirectory(prefix="pluginguard-bench-") as directory:
            results["cluster"] = run_cluster(settings, Path(directory),
                                             webhook_only=args.only == "webhook")
    results["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    results["machine"]["seconds"] = round(time.monotonic() - began, 1)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(report.markdown(results))
    print(args.out / "results.json")
    print(args.out / "results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
