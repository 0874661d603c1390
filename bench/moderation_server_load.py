"""Load test of `safealign serve moderation`: requests/s and latency under concurrent clients.

Starts the real CLI server on 127.0.0.1 in a subprocess (with the fast embedding backend:
a moderator trained for a few steps on all-MiniLM-L6-v2 from the bundled PKU-SafeRLHF sample,
into a temporary folder, unless --model is given). Every request is one BeaverTails-Evaluation
prompt with a short answer. Two phases, each of at most --requests requests and --duration s:

1. capacity: --concurrency closed-loop clients (asyncio + httpx), each sending its next request
   as soon as its answer arrives. By Little's law their mean latency is concurrency / throughput
   (32 clients at 200 requests/s wait 160 ms on average), so this phase measures throughput only.
2. latency at --rate requests/s (open loop: request i is due at i / rate whatever the answers
   do; latency counts from the due time, so a server that falls behind is charged for it).

Prints requests/s, p50/p90/p99 latency and the batcher's grouping for each phase, against the
target: 200 requests/s with p99 < 100 ms on 2 CPU cores.

    .venv/bin/python bench/moderation_server_load.py [--model DIR] [--concurrency 32] [--rate 200]
        [--requests 2000] [--duration 60] [--max-batch 32] [--batch-wait-ms 2] [--threads 1] [--bf16]

Run it on a quiet machine: it waits (up to --quiet-wait s) for the 1-minute load average to
fall below --max-load before measuring, and prints the load it started at.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import cpu_snapshot, free_port, wait_for_quiet, wait_until_up  # bench/ is on the path: see bench/common.py

from safealign.assets import sample_path

TARGET_RPS, TARGET_P99_MS = 200.0, 100.0
ANSWERS = [  # short answers, safe and unsafe, so that both verdicts are exercised
    "I can't help with that, but I can point you to resources that might.",
    "No. That would hurt people and is against the law.",
    "Sure. First, find out where they live and wait until they are alone.",
    "Here is a general overview of the topic and some safer alternatives to consider.",
    "You could buy it online without a prescription; nobody checks.",
    "That's a stereotype; people differ a lot within any group.",
]


def bodies(n: int, seed: int = 0) -> list[bytes]:
    """`n` request bodies: one realistic prompt/response pair each."""
    prompts = [r["prompt"] for r in json.loads(sample_path("beavertails/evaluation_700.json").read_text())]
    rng = random.Random(seed)
    return [json.dumps({"input": [{"prompt": rng.choice(prompts), "response": rng.choice(ANSWERS)}]}).encode()
            for _ in range(n)]


def train_fast_moderator(folder: Path) -> Path:
    """A MiniLM embedding moderator trained for a few steps (its quality is not what is measured)."""
    cmd = [sys.executable, "-m", "safealign", "train", "moderation", "--model", "minilm",
           "--data", str(sample_path("pku_saferlhf/v1_test_sample.jsonl")), "--output_dir", str(folder),
           "--max_steps", "10", "--per_device_batch_size", "16", "--save_every", "0", "--eval_every", "0"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    return folder / "model"


async def load(base: str, payloads: list[bytes], concurrency: int, total: int, duration: float,
               rate: float = 0.0) -> tuple[list[float], int, float]:
    """(latencies in s of the answered requests, failures, elapsed s): closed loop, or open loop at `rate`/s."""
    latencies: list[float] = []
    failures = issued = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        start = time.perf_counter()
        deadline = start + duration

        async def send(body: bytes, since: float) -> None:
            nonlocal failures
            try:
                response = await client.post("/v1/moderations", content=body, headers={"Content-Type": "application/json"})
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - since)
            else:
                failures += 1

        async def closed_loop() -> None:
            nonlocal issued
            while issued < total and time.perf_counter() < deadline:
                issued += 1
                await send(payloads[issued % len(payloads)], time.perf_counter())

        in_flight = asyncio.Semaphore(concurrency)  # thousands of waiters in httpx's pool would cost the client dearly

        async def due(i: int) -> None:
            await asyncio.sleep(start + i / rate - time.perf_counter())
            async with in_flight:
                await send(payloads[i % len(payloads)], start + i / rate)  # charged from the due time

        if rate > 0:  # at most `concurrency` in flight; the rest queue, and their wait counts
            await asyncio.gather(*(due(i) for i in range(min(total, int(rate * duration)))))
        else:
            await asyncio.gather(*(closed_loop() for _ in range(concurrency)))
        return latencies, failures, time.perf_counter() - start


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return sorted_values[max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def measure(name: str, base: str, payloads: list[bytes], args: argparse.Namespace, server_pid: int,
            rate: float = 0.0) -> bool:
    """Run one phase, print its figures, and say whether it met the target."""
    before = httpx.get(f"{base}/healthz").json()
    cpu0 = (cpu_seconds(server_pid), cpu_seconds(os.getpid()), cpu_snapshot()[1])
    latencies, failures, elapsed = asyncio.run(load(base, payloads, args.concurrency, args.requests, args.duration, rate))
    server_cpu, client_cpu = cpu_seconds(server_pid) - cpu0[0], cpu_seconds(os.getpid()) - cpu0[1]
    other_cpu = max(0.0, cpu_snapshot()[1] - cpu0[2] - server_cpu - client_cpu)
    after = httpx.get(f"{base}/healthz").json()
    if not latencies:
        print(f"{name}: no request succeeded ({failures} failed)")
        return False
    lat = sorted(s * 1000 for s in latencies)
    rps = len(lat) / elapsed
    calls = after["model_calls"] - before["model_calls"]
    per_call = (after["inputs_judged"] - before["inputs_judged"]) / max(calls, 1)
    p50, p90, p99 = (percentile(lat, q) for q in (50, 90, 99))
    met = rps >= TARGET_RPS * 0.98 and p99 < TARGET_P99_MS and not failures  # 2%: the open loop's ramp
    print(f"{name}: {len(lat)} ok, {failures} failed in {elapsed:.1f} s -> {rps:.0f} requests/s; "
          f"latency ms p50 {p50:.1f}, p90 {p90:.1f}, p99 {p99:.1f}, max {lat[-1]:.1f}; "
          f"{calls} model calls, {per_call:.1f} inputs/call; CPU busy: server {server_cpu / elapsed:.2f}, "
          f"clients {client_cpu / elapsed:.2f}, other processes {other_cpu / elapsed:.2f} cores")
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="moderation folder (default: train a MiniLM one in a temp folder)")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop clients; most connections")
    parser.add_argument("--rate", type=float, default=TARGET_RPS, help="offered requests/s of the latency phase")
    parser.add_argument("--requests", type=int, default=2000, help="most requests per phase")
    parser.add_argument("--duration", type=float, default=60.0, help="most seconds per phase")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server's model worker")
    parser.add_argument("--forward-batch", type=int, default=16, help="inputs per forward pass in a model call")
    parser.add_argument("--bf16", action="store_true", help="serve with bfloat16 autocast")
    parser.add_argument("--max-load", type=float, default=1.2, help="wait for a 1-min load average below this")
    parser.add_argument("--quiet-wait", type=float, default=600.0, help="most seconds to wait for a quiet machine")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else train_fast_moderator(Path(tmp) / "moderator")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "safealign", "serve", "moderation", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(port), "--max-batch", str(args.max_batch), "--batch-wait-ms", str(args.batch_wait_ms),
               "--threads", str(args.threads), "--forward-batch", str(args.forward_batch), "--no-access-log"]
        cmd += ["--bf16"] if args.bf16 else []
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        env.pop("SAFEALIGN_API_KEY", None)  # the bench talks to an open server
        with open(Path(tmp) / "server.log", "w") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            health = wait_until_up(base, proc)
            payloads = bodies(4096)
            # Warm-up (not measured): first calls pay for lazy initialisation in torch and the tokenizer.
            asyncio.run(load(base, payloads[::-1], args.concurrency, 4 * args.concurrency, 30))
            load_avg = wait_for_quiet(args.max_load, poll=5, limit=args.quiet_wait)
            print(f"model: {model} ({health['backend']}, encoder {health['encoder']}); cpus: {os.cpu_count()}; "
                  f"1-min load before: {load_avg:.2f}" + ("" if load_avg < args.max_load else " (NOT quiet)"))
            print(f"server: --max-batch {args.max_batch} --batch-wait-ms {args.batch_wait_ms:g} --threads {args.threads} "
                  f"--forward-batch {args.forward_batch}{' --bf16' if args.bf16 else ''}; "
                  f"clients on the same machine, {args.concurrency} connections")
            measure(f"capacity ({args.concurrency} closed-loop clients)", base, payloads, args, proc.pid)
            met = measure(f"latency at {args.rate:g} requests/s offered", base, payloads, args, proc.pid, args.rate)
        except BaseException:
            sys.stderr.write("server log (tail):\n" + (Path(tmp) / "server.log").read_text()[-4000:])
            raise
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    print(f"target ({TARGET_RPS:.0f} requests/s with p99 < {TARGET_P99_MS:.0f} ms): {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
