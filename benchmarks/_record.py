"""Where the benchmarks write their numbers: results/benchmarks/<name>.json with the machine.

Every benchmark script prints its table and also calls `write(name, settings, rows, summary)`, so
that each ratio the README quotes can be traced to a file. The JSON records the machine it ran on
(platform, processor, CPU count, Python, torch and steerlens versions, torch threads, the device
and, on CUDA, the GPU name), the exact command line, the settings, one row per measured case and
a summary of the headline ratios. Writes are atomic (temporary file, then rename), and a run with
`--out DIR` writes there instead (a quick smoke run should not overwrite the committed numbers).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT / "results" / "benchmarks"


def machine(device: str = "cpu") -> dict:
    """A description of the machine and software the benchmark ran on.

    Args:
        device: the torch device the benchmark used.

    Returns:
        A JSON-ready dict.
    """
    from steerlens import __version__ as steerlens_version  # the code that ran, not pip metadata
    gpu = (torch.cuda.get_device_name(torch.device(device))
           if str(device).startswith("cuda") and torch.cuda.is_available() else None)
    return {"platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor() or None, "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0], "torch": torch.__version__,
            "steerlens": steerlens_version, "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "device": str(device),
            "gpu": gpu}


def write(name: str, settings: dict, rows: list[dict], summary: dict, *, device: str = "cpu",
          out_dir: str | Path | None = None) -> Path:
    """Write results/benchmarks/<name>.json (or `out_dir`/<name>.json) and print its path.

    Args:
        name: the benchmark's name (the file stem).
        settings: the arguments the benchmark ran with.
        rows: one dict per measured case (times in seconds, ratios, agreement).
        summary: the headline numbers (the ratios the README quotes).
        device: the torch device used.
        out_dir: where to write (default results/benchmarks/).

    Returns:
        The path written.
    """
    out = Path(out_dir) if out_dir is not None else DEFAULT_DIR
    out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
               "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine(device), "settings": settings, "summary": summary,
               "rows": rows}
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    print(f"wrote {path}")
    return path
