"""The results as markdown: the machine, one table per measurement, and the targets,
each with the figure that decides it. A missing figure is shown as such, never guessed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

# What each target asks, as the table of targets states it.
TARGETS = {
    "verification": "engine cold / (floor + parsing) <= 1.3 for every algorithm and format",
    "p99": "webhook p99 <= 2 ms at 1,000 req/s (warm)",
    "saturation": "webhook saturation throughput >= 70% of the floor's",
    "pods": "pods/s through kube-apiserver with the webhook >= 80% of without",
    "rss": "webhook RSS <= 200 MB with 10,000 Plugins cached",
    "operator": "operator reconciles 10,000 Plugins to Ready in <= 5 min",
}


def markdown(results: dict[str, Any]) -> str:
    lines = ["# PluginGuard benchmark results", ""]
    lines += _machine(results["machine"], results.get("quick", False))
    if "verification" in results:
        lines += _verification(results["verification"])
    cluster = results.get("cluster")
    if cluster:
        lines += _webhook(cluster)
        lines += _pods(cluster.get("pods"))
        lines += _operator(cluster.get("operator") or [], cluster.get("api_floor") or [])
    lines += _targets(results)
    return "\n".join(lines) + "\n"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join("–" if c is None else str(c) for c in row) + " |" for row in rows]
    return out + [""]


def _machine(machine: dict[str, Any], quick: bool) -> list[str]:
    packages = ", ".join(f"{name} {version}" for name, version in machine["packages"].items())
    lines = [
        f"- Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['platform']}",
        f"- Python {machine['python']}; {packages}",
        f"- Commit {machine['commit']}{' (with uncommitted changes)' if machine['dirty'] else ''}, "
        f"started {machine['started']}, {machine.get('seconds', '?')} s in all",
        f"- Load average (1, 5, 15 min) before: {machine['load_average_before']}, "
        f"after: {machine.get('load_average_after')}",
    ]
    if quick:
        lines.append("- **Quick run**: short durations and few Plugins; not figures to quote.")
    return lines + [""]


def _verification(figures: dict[str, Any]) -> list[str]:
    lines = ["## Verification (µs per verification, median of "
             f"{figures['timing']['repeat']} runs, pinned to CPU {figures['timing']['cpus']})", ""]
    lines += _table(
        ["algorithm", "format", "floor", "floor + parsing", "engine cold",
         "engine cold, policy compiled", "engine warm", "cold / (floor + parsing)"],
        [(r["algorithm"], r["format"], r["floor"], r["floor_parse"], r["engine_cold"],
          r["engine_cold_compiled"], r["engine_warm"], r["ratio_cold_to_floor_parse"])
         for r in figures["algorithms"]])
    lines += ["Chains (ECDSA-P256, dsse; the floor verifies every certificate's signature):", ""]
    lines += _table(
        ["intermediates", "floor + parsing", "engine cold", "engine cold, policy compiled",
         "cold / (floor + parsing)"],
        [(r["intermediates"], r["floor_parse"], r["engine_cold"], r["engine_cold_compiled"],
          r["ratio_cold_to_floor_parse"]) for r in figures["chains"]])
    flight = figures["single_flight"]
    lines += [f"Single flight: {flight['concurrent_requests']} concurrent requests for a pod of "
              f"one uncached Plugin caused {flight['verifications']} verification(s); "
              f"{flight['allowed']} allowed; the slowest answered in {flight['slowest_ms']} ms.", ""]
    return lines


def _run_cells(result: dict[str, Any] | None) -> list[Any]:
    if not result:
        return [None] * 5
    return [result["throughput"], result["p50_ms"], result["p99_ms"], result["p999_ms"],
            result["failures"]]


def _webhook(cluster: dict[str, Any]) -> list[str]:
    webhook = cluster.get("webhook")
    lines = [f"## Webhook over HTTPS ({cluster.get('kube_apiserver', '')})", ""]
    if webhook:
        lines += [f"AdmissionReview of a plugin pod with 3 containers, {webhook['body_bytes']} "
                  "bytes; latency in ms, counted from when each request was due.", ""]
        rows = []
        for key in webhook["webhook"]:
            floor, ours = webhook["floor"].get(key) or {}, webhook["webhook"][key]
            rows.append([key, *_run_cells(floor), floor.get("server_cpu_us_per_request"),
                         floor.get("client_cpu"), *_run_cells(ours),
                         ours.get("server_cpu_us_per_request"), ours.get("client_cpu")])
        lines += _table(["rate", "floor req/s", "floor p50", "floor p99", "floor p99.9",
                         "floor failures", "floor CPU µs/req", "client CPU",
                         "webhook req/s", "webhook p50", "webhook p99", "webhook p99.9",
                         "webhook failures", "webhook CPU µs/req", "client CPU"], rows)
        lines += [f"Saturation throughput, webhook / floor: {webhook['saturation_ratio']} "
                  f"(rounds: floor {webhook['floor']['saturation'].get('rounds')}, webhook "
                  f"{webhook['webhook']['saturation'].get('rounds')}). Server CPU per request, "
                  f"floor / webhook: {webhook.get('cpu_ratio')}. A client CPU near 1.0 means "
                  "the load generator, not the server, set the pace.", ""]
    if cluster.get("by_containers"):
        lines += ["Latency by containers in the pod:", ""]
        lines += _table(["containers", "bytes", "rate", "req/s", "p50", "p99", "p99.9", "failures"],
                        [(r["containers"], r["body_bytes"], r["rate"], *_run_cells(r))
                         for r in cluster["by_containers"]])
    if cluster.get("by_plugins_cached"):
        lines += ["Latency by Plugins in the webhook's copy:", ""]
        lines += _table(["Plugins cached", "rate", "req/s", "p50", "p99", "p99.9", "failures"],
                        [(r["plugins_cached"], r["rate"], *_run_cells(r))
                         for r in cluster["by_plugins_cached"]])
    stopped = cluster.get("api_server_stopped")
    if stopped:
        lines += ["While kube-apiserver is stopped (SIGSTOP):", ""]
        lines += _table(["rate", "req/s", "p50", "p99", "p99.9", "failures"],
                        [(stopped["rate"], *_run_cells(stopped))])
    return lines


def _pods(pods: dict[str, Any] | None) -> list[str]:
    if not pods:
        return []
    lines = ["## Pods created through kube-apiserver (real creates, a fresh namespace each)", "",
             "Webhooks registered: none; the floor server in PluginGuard's place (validating "
             "and mutating, as the chart registers them); PluginGuard.", ""]
    per_round = len(pods["mean"])
    lines += _table(["round", "webhook", "pods/s", "created", "failures"],
                    [(i // per_round + 1, r["webhook"], r["pods_per_second"], r["created"],
                      r["failures"]) for i, r in enumerate(pods["rounds"])])
    mean = pods["mean"]
    lines += [f"Mean pods/s: none {mean['none']}, floor webhook {mean['floor']}, PluginGuard "
              f"{mean['pluginguard']}; PluginGuard / none = {pods['ratio']}, PluginGuard / "
              f"floor webhook = {pods['ratio_to_floor_webhook']}", ""]
    return lines


def _operator(runs: list[dict[str, Any]], floors: list[dict[str, Any]]) -> list[str]:
    if not runs:
        return []
    lines = ["## Operator: Plugins created, then all Ready", ""]
    floor = {f["plugins"]: f for f in floors}
    if floor:
        lines += ["The floor makes the same API writes per Plugin as the operator and kopf "
                  "(create, kopf's annotation patch, ConfigMap and NetworkPolicy applied, two "
                  "Events, status), from an async client that does nothing else, with the "
                  "operator stopped.", ""]
        lines += _table(
            ["Plugins", "operator s", "API floor s", "operator / floor", "floor failures"],
            [(r["plugins"], r["ready_seconds"], floor[r["plugins"]]["seconds"],
              round(r["ready_seconds"] / floor[r["plugins"]]["seconds"], 2)
              if r["ready_seconds"] else None, floor[r["plugins"]]["failures"])
             for r in runs if r["plugins"] in floor])
    lines += _table(
        ["Plugins", "created in s", "all Ready after s", "Ready", "Plugins/s", "webhook RSS MiB",
         "operator RSS MiB", "kube-apiserver RSS MiB", "etcd RSS MiB"],
        [(r["plugins"], r["create_seconds"], r["ready_seconds"] or f"not within {r['timed_out_after']}",
          r["ready"], r["plugins_per_second"], r["rss_mib"]["webhook"], r["rss_mib"]["operator"],
          r["rss_mib"].get("kube-apiserver"), r["rss_mib"].get("etcd")) for r in runs])
    if all("cpu_seconds" in r for r in runs):
        names = list(runs[0]["cpu_seconds"])
        lines += ["CPU seconds each process used from the first create to the last Ready "
                  "(2 CPUs: at most twice the wall time in all); floor rows for the floor's "
                  "run:", ""]
        rows = [(r["plugins"], "operator", *(r["cpu_seconds"].get(n) for n in names))
                for r in runs]
        rows += [(f["plugins"], "floor", *(f["cpu_seconds"].get(n) for n in names))
                 for f in floors if "cpu_seconds" in f]
        lines += _table(["Plugins", "run", *names], rows)
    return lines


def verdicts(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """Each target with the figure that decides it and whether it is met (None: not run)."""
    found: list[tuple[str, str, bool | None]] = []
    rows = (results.get("verification") or {}).get("algorithms") or []
    if rows:
        worst = max(rows, key=lambda r: r["ratio_cold_to_floor_parse"])
        over = [f"{r['algorithm']} {r['format']}" for r in rows if r["ratio_cold_to_floor_parse"] > 1.3]
        found.append((TARGETS["verification"],
                      f"worst {worst['ratio_cold_to_floor_parse']} ({worst['algorithm']} {worst['format']}); "
                      f"over 1.3: {', '.join(over) or 'none'}", not over))
    else:
        found.append((TARGETS["verification"], "not run", None))
    cluster = results.get("cluster") or {}
    webhook = cluster.get("webhook")
    at_1000 = (webhook or {}).get("webhook", {}).get("1000")
    found.append((TARGETS["p99"], f"{at_1000['p99_ms']} ms" if at_1000 else "not run",
                  at_1000["p99_ms"] <= 2.0 if at_1000 else None))
    found.append((TARGETS["saturation"],
                  f"{webhook['saturation_ratio']} (server CPU per request, floor / webhook: "
                  f"{webhook.get('cpu_ratio')})" if webhook else "not run",
                  webhook["saturation_ratio"] >= 0.7 if webhook else None))
    pods = cluster.get("pods")
    found.append((TARGETS["pods"], f"{pods['ratio']}" if pods else "not run",
                  pods["ratio"] >= 0.8 if pods else None))
    runs = {r["plugins"]: r for r in cluster.get("operator") or []}
    big = runs.get(10000)
    found.append((TARGETS["rss"], f"{big['rss_mib']['webhook']} MiB" if big else "10,000 not run",
                  big["rss_mib"]["webhook"] * 2**20 <= 200e6 if big else None))
    if big:
        seconds = big["ready_seconds"]
        found.append((TARGETS["operator"],
                      f"{seconds} s" if seconds is not None else
                      f"{big['ready']} Ready after {big['timed_out_after']} s",
                      seconds is not None and seconds <= 300))
    else:
        found.append((TARGETS["operator"], "10,000 not run", None))
    return found


def _targets(results: dict[str, Any]) -> list[str]:
    lines = ["## Targets", ""]
    lines += _table(["target", "figure", "met"],
                    [(what, figure, {True: "yes", False: "**no**", None: "–"}[met])
                     for what, figure, met in verdicts(results)])
    return lines
