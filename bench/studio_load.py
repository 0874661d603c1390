"""A bounded load test of the annotation studio on 127.0.0.1: N annotators for T seconds, submit latency and errors.

Starts `safealign annotate serve` on a fresh SQLite database in a temporary folder (made-up
pairs, no real data), logs N annotators in, and has each loop: fetch its next item (GET
/annotate), think for a moment, submit labels (POST /api/answers). Prints the p50/p95/p99
submit latency, the page latency, errors, and the ratio of p99 to the target (100 ms).

    .venv/bin/python bench/studio_load.py [--annotators 20] [--seconds 60] [--think 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from common import free_port, wait_until_up  # bench/ is on the path: see bench/common.py

TARGET_P99_MS = 100.0


def labels(rng: random.Random) -> dict:
    unsafe = {"categories": [rng.choice(["Violence", "Drugs", "Cybercrime"])], "severity": rng.randint(1, 3)}
    safe = {"categories": [], "severity": 0}
    first_safe = rng.random() < 0.5
    return {"responses": [safe, unsafe] if first_safe else [unsafe, safe], "better": rng.randint(0, 1),
            "safer": 0 if first_safe else 1}


async def annotator(url: str, name: str, stop_at: float, think: float, seed: int, out: dict) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, follow_redirects=False, timeout=30) as c:
        token = (await c.get("/login")).text.split('name="csrf" value="')[1].split('"')[0]
        await c.post("/login", data={"csrf": token, "name": name, "password": f"password-{name}"})
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            page = await c.get("/annotate")
            out["page"].append(time.perf_counter() - started)
            if 'data-item="' not in page.text:
                out["empty"] += 1
                return
            item = int(page.text.split('data-item="')[1].split('"')[0])
            csrf = page.text.split('data-csrf="')[1].split('"')[0]
            await asyncio.sleep(rng.uniform(0, 2 * think))
            started = time.perf_counter()
            try:
                r = await c.post("/api/answers", json={"item_id": item, "labels": labels(rng)}, headers={"x-csrf-token": csrf})
                ok = r.status_code == 200 or r.status_code == 409  # 409: another annotator filled the item first (by design)
                out["conflicts"] += r.status_code == 409
            except httpx.HTTPError:
                ok = False
            out["submit"].append(time.perf_counter() - started)
            out["errors"] += not ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotators", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--think", type=float, default=1.0,
                        help="mean seconds between an item's page and its submit (1 s: ~30x a person's pace)")
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--overlap", type=int, default=2)
    args = parser.parse_args()

    from safealign.annotate.store import Store

    folder = Path(tempfile.mkdtemp(prefix="studio-load-"))
    db = f"sqlite:///{folder / 'load.db'}"
    store = Store(db, overlap=args.overlap)
    names = [f"ann{i}" for i in range(args.annotators)]
    for name in names:
        store.add_user(name, f"password-{name}")
    store.add_items([{"prompt": f"Made-up question {i}: how do I do task {i}?", "response_0": f"A first answer to {i}. " * 20,
                      "response_1": f"A second answer to {i}. " * 15, "system": None, "sources": {}, "suggestion": None,
                      "note": None, "origin": f"load:{i}", "meta": None} for i in range(args.items)])
    store.engine.dispose()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "safealign", "annotate", "serve", "--db", db, "--port", str(port),
                               "--overlap", str(args.overlap)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url, server)
    out = {"page": [], "submit": [], "errors": 0, "conflicts": 0, "empty": 0}
    stop_at = time.perf_counter() + args.seconds

    async def everyone() -> None:
        await asyncio.gather(*(annotator(url, n, stop_at, args.think, i, out) for i, n in enumerate(names)))

    try:
        asyncio.run(everyone())
    finally:
        server.terminate()
        server.wait()
    stored = len(Store(db, overlap=args.overlap).answers())
    submit = np.array(out["submit"]) * 1000
    page = np.array(out["page"]) * 1000
    p50, p95, p99 = np.percentile(submit, [50, 95, 99])
    print(f"{args.annotators} annotators, {args.seconds:.0f} s, think {args.think} s, SQLite (WAL, synchronous=FULL), overlap {args.overlap}")
    print(f"submits: {len(submit)} ({len(submit) / args.seconds:.1f}/s), errors {out['errors']}, "
          f"409 (item already full) {out['conflicts']}, stored answers {stored}")
    print(f"submit latency ms: p50 {p50:.1f}  p95 {p95:.1f}  p99 {p99:.1f}  max {submit.max():.1f}")
    print(f"page latency ms:   p50 {np.percentile(page, 50):.1f}  p99 {np.percentile(page, 99):.1f}")
    print(f"p99 / target ({TARGET_P99_MS:.0f} ms): {p99 / TARGET_P99_MS:.2f}; errors {out['errors']} (target 0)")


if __name__ == "__main__":
    main()
