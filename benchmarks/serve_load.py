"""Load test of ``detr serve``: N concurrent clients on loopback, a fixed number of requests.

Each scenario starts a server process on a free loopback port, sends ``--requests`` POST /v1/detect
(one image, raw body) from ``--clients`` concurrent clients, polls ``/healthz`` every 50 ms during the
load, samples the server's memory (RSS), and reports latency percentiles, throughput, status counts
and the slowest ``/healthz`` answer. Scenarios:

- ``detr serve``: the server as shipped (one inference thread, bounded queue of ``--queue``), and with
  ``--workers 2`` (two model calls side by side);
- ``detr serve, small queue``: ``--queue`` smaller than the number of clients: the surplus is refused
  with 503 + Retry-After at once (deliberate), and memory stays bounded;
- ``FastAPI threadpool``: the same detector in a plain ``def`` route, which FastAPI runs in its
  thread pool (up to 40 model calls at once, no queue limit) — the common default;
- ``on the event loop``: the same in an ``async def`` route, which blocks the event loop while the
  model runs (what the worker thread avoids: see ``/healthz``).

The baseline is ``Detector.detect`` called directly in this process, one request after the other
(no HTTP), with the same number of torch threads as the servers: throughput ratios against it show
what HTTP, decoding and queueing cost.

    python benchmarks/serve_load.py                                  # tiny model (random weights), ~1.5 min
    python benchmarks/serve_load.py --models tiny r50                # + the R50 architecture at 320 px, ~5 min
    python benchmarks/serve_load.py --models tiny --clients 16 --requests 400 --output ''
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import cpu_name  # noqa: E402
from results_file import add_output_arguments, output_path, write_results  # noqa: E402

from tests.test_predict import random_image, write_tiny_checkpoint  # noqa: E402
from torchdetr.inference.detector import Detector  # noqa: E402
from torchdetr.serve.background import free_port, running_server  # noqa: E402

HEALTH_PERIOD_S = 0.05
MEMORY_PERIOD_S = 0.1
IMAGE_SIZE = (480, 640)  # height, width of the uploaded picture (resized by the model's own rule)


@dataclass
class Result:
    name: str
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    wall_s: float = 0.0
    health_s: list[float] = field(default_factory=list)
    health_failures: int = 0
    idle_rss_mb: float = 0.0
    peak_rss_mb: float = 0.0

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    def percentile(self, q: float, values: list[float] | None = None) -> float:
        values = sorted(self.latencies_s if values is None else values)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


# ------------------------------------------------------------------------------------------------ servers
def serve_variant(variant: str, model: str, port: int) -> None:
    """Run a comparison server (``threadpool`` or ``event_loop``) in this process (called in a subprocess)."""
    import uvicorn
    from fastapi import Body, FastAPI

    from torchdetr.serve.images import decode_upload, inspect_upload
    from torchdetr.serve.service import detection_json

    detector = Detector.from_pretrained(model, device="cpu", threshold=0.5, batch_size=1)
    app = FastAPI()

    def detect(data: bytes) -> dict:
        image = decode_upload(inspect_upload(data, 40_000_000))
        return {"detections": [detection_json(d) for d in detector.detect([image])[0]]}

    if variant == "threadpool":
        @app.post("/v1/detect")
        def detect_threadpool(data: bytes = Body(...)) -> dict:  # FastAPI runs `def` routes in its thread pool
            return detect(data)
    else:
        @app.post("/v1/detect")
        async def detect_event_loop(data: bytes = Body(...)) -> dict:  # blocks the event loop while the model runs
            return detect(data)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------------------------------------ load
async def load(base: str, image: bytes, clients: int, requests: int, result: Result, pid: int) -> None:
    remaining = requests
    done = asyncio.Event()

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            try:
                response = await http.post("/v1/detect", content=image, headers={"content-type": "image/jpeg"})
                result.statuses[response.status_code] += 1
            except httpx.HTTPError as err:
                result.statuses[type(err).__name__] += 1
            result.latencies_s.append(time.perf_counter() - start)

    async def health(http: httpx.AsyncClient) -> None:
        while not done.is_set():
            start = time.perf_counter()
            try:
                ok = (await http.get("/healthz")).status_code == 200
            except httpx.HTTPError:
                ok = False
            result.health_s.append(time.perf_counter() - start)
            result.health_failures += not ok
            await asyncio.sleep(HEALTH_PERIOD_S)

    async def memory() -> None:
        while not done.is_set():
            result.peak_rss_mb = max(result.peak_rss_mb, rss_mb(pid))
            await asyncio.sleep(MEMORY_PERIOD_S)

    limits = httpx.Limits(max_connections=clients + 2)
    timeout = httpx.Timeout(300)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as http, \
            httpx.AsyncClient(base_url=base, timeout=timeout) as health_http:
        watchers = [asyncio.create_task(health(health_http)), asyncio.create_task(memory())]
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        result.wall_s = time.perf_counter() - start
        done.set()
        await asyncio.gather(*watchers)


def run_scenario(name: str, command: list[str], port: int, image: bytes, clients: int, requests: int) -> Result:
    result = Result(name)
    with running_server(command, port, cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)}) as process:
        base = f"http://127.0.0.1:{port}"
        for _ in range(3):  # warm-up
            httpx.post(base + "/v1/detect", content=image, headers={"content-type": "image/jpeg"}, timeout=300)
        result.idle_rss_mb = rss_mb(process.pid)
        asyncio.run(load(base, image, clients, requests, result, process.pid))
    return result


def baseline(model: str, image: bytes, requests: int) -> float:
    """Seconds per request of ``Detector.detect`` called in this process (decode included), no HTTP, from one
    worker thread as in the server (on a loaded machine, model calls on the main thread were far slower)."""
    from torchdetr.serve.images import decode_upload, inspect_upload

    detector = Detector.from_pretrained(model, device="cpu", threshold=0.5, batch_size=1)

    def run() -> float:
        for _ in range(3):
            detector.detect([decode_upload(inspect_upload(image, 40_000_000))])
        start = time.perf_counter()
        for _ in range(requests):
            detector.detect([decode_upload(inspect_upload(image, 40_000_000))])
        return (time.perf_counter() - start) / requests

    with ThreadPoolExecutor(max_workers=1) as worker:
        return worker.submit(run).result()


# ------------------------------------------------------------------------------------------------ report


def table(results: list[Result], baseline_s: float, baseline_requests: int) -> str:
    lines = [
        "| scenario | statuses | p50 ms | p95 ms | p99 ms | answers/s | 200/s | vs direct | /healthz max ms "
        "| /healthz fails | RSS idle → peak MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| direct `Detector.detect` (baseline, sequential, no HTTP) | {baseline_requests}× ok | {baseline_s * 1000:.0f} | – | – "
        f"| {1 / baseline_s:.1f} | {1 / baseline_s:.1f} | 1.00× | – | – | – |",
    ]
    for r in results:
        statuses = ", ".join(f"{n}× {s}" for s, n in sorted(r.statuses.items(), key=lambda kv: str(kv[0])))
        ok_rate = r.ok / r.wall_s
        lines.append(
            f"| {r.name} | {statuses} | {r.percentile(50) * 1000:.0f} | {r.percentile(95) * 1000:.0f} "
            f"| {r.percentile(99) * 1000:.0f} | {len(r.latencies_s) / r.wall_s:.1f} | {ok_rate:.1f} "
            f"| {ok_rate * baseline_s:.2f}× | {max(r.health_s) * 1000:.0f} | {r.health_failures} "
            f"| {r.idle_rss_mb:.0f} → {r.peak_rss_mb:.0f} |"
        )
    return "\n".join(lines)


MODELS: dict[str, tuple[dict, str]] = {
    # the test suite's tiny model: overhead-dominated, does not fill two cores
    "tiny": ({}, "the tests' tiny model (resnet18, hidden 32, 1+1 layers, 10 queries), input 128 px"),
    # the official detr_resnet50 architecture at a smaller input: one call fills the CPU
    "r50": (dict(backbone="resnet50", hidden_dim=256, nheads=8, enc_layers=6, dec_layers=6, dim_feedforward=2048,
                 num_queries=100, num_classes=91, image_size=320),
            "the detr_resnet50 architecture (6+6 layers, 100 queries), input 320 px"),
}
SCALE_DOWN = {"tiny": 1, "r50": 4}  # fewer requests and clients for the slower model


def scenarios(model: str, queue: int, small_queue: int) -> list[tuple[str, list[str]]]:
    """(name, command without the port) of each scenario."""
    serve = [sys.executable, "-m", "torchdetr.cli", "serve", "--model", model, "--device", "cpu", "--threshold", "0.5",
             "--log_level", "warning"]
    variant = [sys.executable, str(Path(__file__).resolve()), "--variant"]
    return [
        (f"`detr serve --queue {queue}`", [*serve, "--queue", str(queue)]),
        (f"`detr serve --queue {queue} --workers 2`", [*serve, "--queue", str(queue), "--workers", "2"]),
        (f"`detr serve --queue {small_queue}` (503 by design)", [*serve, "--queue", str(small_queue)]),
        ("FastAPI `def` route (threadpool, no queue limit)", [*variant, "threadpool", model]),
        ("FastAPI `async def` route (model on the event loop)", [*variant, "event_loop", model]),
    ]


def with_port(command: list[str], port: int) -> list[str]:
    return [*command, str(port)] if "--variant" in command else [*command, "--port", str(port)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny"], choices=list(MODELS),
                        help="models to serve, random weights (default: tiny; r50 takes a few minutes more)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8; r50: a quarter)")
    parser.add_argument("--requests", type=int, default=100, help="requests per scenario (default 100; r50: a quarter)")
    parser.add_argument("--queue", type=int, default=16, help="--queue of the shipped server (default 16)")
    parser.add_argument("--small_queue", type=int, default=1, help="--queue of the small-queue scenario (default 1)")
    add_output_arguments(parser, ROOT / "benchmarks" / "results" / "serve.md")
    args = parser.parse_args()
    output = output_path(args.output, args.overwrite)

    buffer = io.BytesIO()
    random_image(*IMAGE_SIZE, seed=0).save(buffer, format="JPEG", quality=90)
    image = buffer.getvalue()
    load_before = os.getloadavg()
    sections = []
    with tempfile.TemporaryDirectory() as folder:
        for key in args.models:
            overrides, description = MODELS[key]
            model = str(write_tiny_checkpoint(Path(folder) / f"{key}.pth", **overrides))
            requests = max(4, args.requests // SCALE_DOWN[key])
            clients = max(2, args.clients // SCALE_DOWN[key])
            baseline_requests = max(8, requests // 2)
            baseline_s = baseline(model, image, baseline_requests)
            results = []
            for name, command in scenarios(model, args.queue, args.small_queue):
                port = free_port()
                count = max(4, requests // 4) if "event loop" in name else requests
                results.append(run_scenario(name, with_port(command, port), port, image, clients, count))
                print(f"{key}, {name}: {dict(results[-1].statuses)} in {results[-1].wall_s:.1f} s", flush=True)
            sections += [f"## {key}: {description}", "",
                         f"{clients} concurrent clients, {requests} requests per scenario "
                         f"({max(4, requests // 4)} for the event-loop one).", "",
                         table(results, baseline_s, baseline_requests), ""]
    load_after = os.getloadavg()

    command = " ".join(["python benchmarks/serve_load.py", *sys.argv[1:]])
    text = "\n".join([
        "# Serving: `detr serve` under concurrent load (loopback)",
        "",
        f"Produced by `{command}`: POST /v1/detect with one {IMAGE_SIZE[1]}×{IMAGE_SIZE[0]} JPEG "
        f"of {len(image) // 1024} KB as the raw body, random weights; /healthz polled every {HEALTH_PERIOD_S * 1000:.0f} ms "
        f"during the load; server RSS sampled every {MEMORY_PERIOD_S * 1000:.0f} ms. Baseline: `Detector.detect` called "
        "in the benchmark process, one request after the other, decoding included, from one worker thread as in the server.",
        "",
        f"- machine: {cpu_name()}, {os.cpu_count()} logical cores, torch {torch.__version__} with {torch.get_num_threads()} "
        f"threads, Python {platform.python_version()}",
        f"- load average (1, 5, 15 min) before: {', '.join(f'{v:.1f}' for v in load_before)}; after: "
        f"{', '.join(f'{v:.1f}' for v in load_after)} (a machine shared with other jobs: absolute numbers are noisy)",
        "",
        *sections,
        "Latency: from sending a request to its full answer, as a client sees it (waiting in the queue included). "
        "answers/s counts every answer (a 503 is answered at once); 200/s only detections; vs direct = 200/s × the "
        "baseline's seconds per request. /healthz max: the slowest health check during the load.",
    ])
    write_results(output, text + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--variant":
        serve_variant(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
