"""Metrics to CSV and JSONL always, TensorBoard when installed; fixed names like `train/loss`."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Appends one row per logged step; on resume, rows after the checkpoint's step are dropped."""

    def __init__(self, out_dir: str | Path, resume_step: int = 0, enabled: bool = True) -> None:
        self.enabled = enabled
        self.out = Path(out_dir)
        self.jsonl = self.out / "metrics.jsonl"
        self.csv = self.out / "metrics.csv"
        self._tb = None
        self._columns: list[str] = ["step"]
        if not enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self._rows = _read_rows(self.jsonl, resume_step)  # what a killed run logged past its checkpoint is dropped
        self._rewrite()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
        except ImportError:
            self._tb = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record `metrics` at optimizer step `step`."""
        if not self.enabled:
            return
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self._rows.append(row)
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if row.keys() <= set(self._columns):
            with open(self.csv, "a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, fieldnames=self._columns).writerow(row)
        else:
            self._rewrite_csv()
        if self._tb is not None:
            for key, value in metrics.items():
                if value is not None and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def rows(self) -> list[dict[str, Any]]:
        """Every row logged so far (including before a resume)."""
        return list(self._rows)

    def close(self) -> None:
        """Flush TensorBoard."""
        if self._tb is not None:
            self._tb.close()

    def _rewrite(self) -> None:
        with open(self.jsonl, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in self._rows)
        self._rewrite_csv()

    def _rewrite_csv(self) -> None:
        # A new metric name (the first eval row) adds a column: only then is the CSV rewritten.
        self._columns = ["step"] + sorted({k for r in self._rows for k in r} - {"step"})
        with open(self.csv, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns)
            writer.writeheader()
            writer.writerows(self._rows)


def _read_rows(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    if not path.is_file() or up_to_step == 0:
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if r["step"] <= up_to_step]


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
