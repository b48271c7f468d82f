"""An open-loop HTTPS load generator for admission webhooks, run as its own process.

It sends one AdmissionReview body (a file) to a URL at a fixed rate, or as fast as
``--connections`` concurrent clients can (``--rate 0``), for ``--seconds``, and prints one
JSON object: requests, failures (non-200, a missing or wrong uid, transport errors),
throughput and latency percentiles. At a fixed rate, latency counts from the moment each
request was due, so a stalled server cannot hide its queueing (no coordinated omission).
It is an async aiohttp client on uvloop; ``client_cpu`` in its output is the share of one
core it used, so a run limited by the client rather than the server shows itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import ssl
import sys
import time
from pathlib import Path

import aiohttp
import uvloop


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index]


async def run(url: str, body: bytes, *, rate: float, seconds: float, connections: int,
              context: ssl.SSLContext) -> dict[str, object]:
    uid = json.loads(body)["request"]["uid"]
    before = resource.getrusage(resource.RUSAGE_SELF)
    latencies: list[float] = []
    failures: dict[str, int] = {}
    connector = aiohttp.TCPConnector(ssl=context, limit=connections)
    timeout = aiohttp.ClientTimeout(total=10)
    headers = {"Content-Type": "application/json"}

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def one(due: float) -> None:
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    answer = await response.read()
                    ok = response.status == 200 and json.loads(answer)["response"]["uid"] == uid
                    key = "ok" if ok else f"http {response.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError) as error:
                key = type(error).__name__
            if key == "ok":
                latencies.append(time.perf_counter() - due)
            else:
                failures[key] = failures.get(key, 0) + 1

        start = time.perf_counter()
        end = start + seconds
        if rate > 0:
            tasks = []
            interval, sent = 1.0 / rate, 0
            while True:
                due = start + sent * interval
                if due >= end:
                    break
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(due)))
                sent += 1
            await asyncio.gather(*tasks)
        else:
            async def worker() -> None:
                while time.perf_counter() < end:
                    await one(time.perf_counter())
            await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - start

    usage = resource.getrusage(resource.RUSAGE_SELF)
    latencies.sort()
    total = len(latencies) + sum(failures.values())
    return {
        "requests": total, "failures": sum(failures.values()), "failure_kinds": failures,
        "seconds": round(elapsed, 3), "throughput": round(len(latencies) / elapsed, 1),
        "rate": rate, "connections": connections,
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
        "p999_ms": round(percentile(latencies, 0.999) * 1000, 3),
        "max_ms": round((latencies[-1] if latencies else 0) * 1000, 3),
        "client_cpu": round((usage.ru_utime + usage.ru_stime
                             - before.ru_utime - before.ru_stime) / elapsed, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--body", required=True, type=Path, help="an AdmissionReview JSON file")
    parser.add_argument("--ca", type=Path, help="CA certificate to trust (PEM)")
    parser.add_argument("--rate", type=float, default=0, help="requests per second; 0 = saturate")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    context = ssl.create_default_context(cafile=str(args.ca) if args.ca else None)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(run(args.url, args.body.read_bytes(), rate=args.rate,
                                seconds=args.seconds, connections=args.connections,
                                context=context))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
