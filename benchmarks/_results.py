"""Where a benchmark's JSON goes and what it records: the machine, the arguments, the rows.

The write is atomic (a temporary file, then a rename), so a run cut short leaves the previous
file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import jax

RESULTS = Path(__file__).resolve().parent / "results"


def default_path(stem: str) -> Path:
    """``benchmarks/results/<stem>_<device>.json``; the device is ``cpu`` or the GPU's kind."""
    device = jax.devices()[0]
    tag = device.device_kind.lower().replace(" ", "_") if device.platform == "gpu" else "cpu"
    return RESULTS / f"{stem}_{tag}.json"


def write(path: Path, args, rows: list[dict]) -> None:
    """Writes ``{"meta": ..., "rows": rows}`` to ``path`` atomically and says so."""
    device = jax.devices()[0]
    meta = {"device": f"{device.platform}: {device.device_kind}", "jax": jax.__version__,
            "python": platform.python_version(), "host": platform.node(),
            "cpu_count": os.cpu_count(), "argv": {**vars(args), "json": path.name}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    tmp.replace(path)
    print(f"wrote {path}")
