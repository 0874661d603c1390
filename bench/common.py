"""What the bench scripts share: offline settings, tiny models, load gating, CPU-time probes, workers and retries.

Run a bench as `python bench/NAME.py`: Python puts `bench/` first on the path, so
`from common import ...` finds this file with no path edits.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from safealign.models.tiny import save_tiny_llama, tiny_llama_config, tiny_tokenizer  # noqa: E402

__all__ = ["WindowProbe", "build_tiny_llama", "clean_steps", "cpu_snapshot", "foreign_cores", "free_port", "peak_rss_note",
           "prompts", "retry_until_clean", "run_worker", "tiny_llama_config", "tiny_tokenizer", "wait_for_quiet", "wait_until_up"]


def build_tiny_llama(folder: Path, seed: int = 0, max_positions: int = 2048) -> Path:
    """A random 2-layer Llama (hidden 32) and its BPE tokenizer in `folder` (`safealign.models.tiny`)."""
    return save_tiny_llama(folder, max_positions=max_positions, seed=seed)


PROMPT_FILES = ("beavertails/evaluation_700.json", "pku_saferlhf/v1_test_sample.jsonl")


def prompts(tokenizer: Any, width: int) -> tuple[list[list[dict[str, str]]], list[list[int]]]:
    """The bundled prompts (BeaverTails-Evaluation, PKU v1 sample) with at least `width` tokens, and their last `width` ids.

    Equal-width prompts make the RL benches' steps comparable: every rollout has the same prompt length.
    """
    from safealign.assets import sample_path
    from safealign.data.load import load
    from safealign.data.records import dialogue
    from safealign.inference.sampling import encode_prompts

    dialogues = [dialogue(r) for r in load([str(sample_path(f)) for f in PROMPT_FILES]).records]
    ids, mask = encode_prompts(tokenizer, dialogues, width)
    keep = [i for i in range(len(dialogues)) if int(mask[i].sum()) == width]
    return [dialogues[i] for i in keep], [ids[i].tolist() for i in keep]


# --- load gating and CPU time ---------------------------------------------------------------


def wait_for_quiet(max_load: float, poll: float = 20.0, limit: float = 600.0) -> float:
    """Wait (up to `limit` s) until the 1-minute load average is below `max_load`; returns it."""
    waited = 0.0
    load = os.getloadavg()[0]
    while load >= max_load and waited < limit:
        print(f"  load {load:.2f} >= {max_load}: waiting {poll:.0f} s", flush=True)
        time.sleep(poll)
        waited += poll
        load = os.getloadavg()[0]
    if load >= max_load:
        print(f"  load still {load:.2f} after {limit:.0f} s; timing anyway (figures may be skewed)", flush=True)
    return load


def cpu_snapshot() -> list[float]:
    """(wall s, busy CPU s of the whole machine, CPU s of this process) now, for `foreign_cores`."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait; steal counts as busy
    own = os.times()
    return [time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), own.user + own.system]


def foreign_cores(start: list[float], end: list[float]) -> float:
    """CPU cores that *other* processes kept busy, on average, between two snapshots.

    The load average only tells whether the machine was quiet when a run started; this tells
    whether it stayed quiet while the run was timed (a run above ~0.15 is retried).
    """
    wall = end[0] - start[0]
    return max(0.0, ((end[1] - start[1]) - (end[2] - start[2])) / wall) if wall > 0 else 0.0


class WindowProbe:
    """Step-end times with a CPU snapshot at each, to tell clean steps from disturbed ones."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total
        self.ends: list[float] = []
        self.snapshots: list[list[float]] = []

    def step_end(self) -> None:
        self.snapshots.append(cpu_snapshot())
        self.ends.append(self.snapshots[-1][0])

    def result(self) -> dict[str, Any]:
        """Step-end times, the other processes' cores during each timed step and the whole window."""
        snaps = self.snapshots
        w = self.warmup
        return {"ends": self.ends, "step_foreign": [foreign_cores(a, b) for a, b in zip(snaps[w - 1 :], snaps[w:])],
                "foreign_cores": foreign_cores(snaps[w - 1], snaps[-1]) if len(snaps) > w else 0.0}


def clean_steps(result: dict[str, Any], warmup: int, max_foreign: float) -> list[float]:
    """Durations of the timed steps during which other processes used at most `max_foreign` cores."""
    ends = result["ends"]
    steps = [b - a for a, b in zip(ends[warmup - 1 :], ends[warmup:])]
    return [s for s, f in zip(steps, result["step_foreign"]) if f <= max_foreign]


def peak_rss_note() -> str:
    """This process's peak resident memory (VmHWM), for logs."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return line.split(":", 1)[1].strip()
    return "?"


# --- workers and retries --------------------------------------------------------------------


def run_worker(script: str, worker_args: list[str], label: str, scratch: Path) -> dict[str, Any]:
    """Run `script` again in a fresh process with this command line plus `worker_args --result FILE`; returns FILE's JSON.

    A fresh process per timed run: no allocator, thread pool or cache state carries from one
    side to the other. A failed worker stops the bench with its output's tail.
    """
    result_file = scratch / f"result-{label.replace(' ', '-')}-{time.time_ns()}.json"
    cmd = [sys.executable, script, *sys.argv[1:], *worker_args, "--result", str(result_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{label} run failed (exit {proc.returncode})")
    return json.loads(result_file.read_text())


def retry_until_clean(run: Callable[[], dict[str, Any]], retries: int, clean: Callable[[dict[str, Any]], bool],
                      cleanliness: Callable[[dict[str, Any]], Any], usable: Callable[[dict[str, Any]], bool],
                      label: str) -> dict[str, Any]:
    """Run up to 1 + `retries` times until a run is `clean`; keep the cleanest (largest `cleanliness`).

    A run that the machine disturbed is not averaged in: it is run again, and when even the
    cleanest run is not `usable` (no undisturbed step at all) the bench stops rather than report.
    """
    tries: list[dict[str, Any]] = []
    for _ in range(1 + retries):
        tries.append(run())
        if clean(tries[-1]):
            break
    best = max(tries, key=cleanliness)
    if not usable(best):
        raise SystemExit(f"{label}: no undisturbed step in {len(tries)} runs; try again on a quieter machine")
    return best


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(base: str, proc: subprocess.Popen, timeout: float = 120) -> dict:
    """/healthz of the server once it answers; fails if it exits or takes longer than `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            return httpx.get(f"{base}/healthz", timeout=2).json()
        except httpx.TransportError:
            time.sleep(0.25)
    raise RuntimeError(f"server did not answer within {timeout:.0f} s")
