"""Where a benchmark's JSON goes and what it records: the machine, the arguments, the rows.

Writes are atomic (a temporary file, then a rename), so a run cut short leaves the previous
file or the new one, never half of one; scripts that save after every row call :func:`save`.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import jax

RESULTS = Path(__file__).resolve().parent / "results"


def default_path(stem: str) -> Path:
    """``benchmarks/results/<stem>_<device>.json``; the device is ``cpu`` or the GPU's kind."""
    device = jax.devices()[0]
    tag = device.device_kind.lower().replace(" ", "_") if device.platform == "gpu" else "cpu"
    return RESULTS / f"{stem}_{tag}.json"


def machine(args, path: Path) -> dict:
    """The machine and the arguments of a run (paths as their last component only: a results
    file must not record the directories of the machine it was measured on)."""
    device = jax.devices()[0]
    argv = {k: Path(v).name if isinstance(v, Path) or (isinstance(v, str) and os.path.isabs(v))
            else v for k, v in vars(args).items()}
    return {"device": f"{device.platform}: {device.device_kind}", "jax": jax.__version__,
            "python": platform.python_version(), "host": platform.node(),
            "cpu_count": os.cpu_count(), "argv": {**argv, "json": path.name}}


def save(path: Path, data: Any) -> None:
    """Writes ``data`` as JSON to ``path`` atomically (sets and the like as lists)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=list))
    tmp.replace(path)


def write(path: Path, args, rows: list[dict]) -> None:
    """Saves ``{"meta": machine(...), "rows": rows}`` and says so."""
    save(path, {"meta": machine(args, path), "rows": rows})
    print(f"wrote {path}")
