"""benchmarks/gpu.sh, the GPU benchmark driver, parses and lists its suite on a machine with no GPU.

The script runs only where CUDA is present, so CI checks what it can without one: bash accepts it,
`--dry-run --cpu` prints the commands it would run (no model is loaded), and an unknown flag is
refused with the valid ones listed.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU_SH = ROOT / "benchmarks" / "gpu.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


def test_gpu_sh_parses_and_lists_the_suite():
    assert subprocess.run(["bash", "-n", str(GPU_SH)]).returncode == 0
    out = subprocess.run(["bash", str(GPU_SH), "--dry-run", "--cpu"], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert "no CUDA GPU found" in out
    for bench in ("bench_peers.py", "bench_eigengap.py", "bench_generate.py", "bench_memory.py",
                  "bench_precision.py"):
        assert bench in out


def test_gpu_sh_refuses_unknown_flags():
    bad = subprocess.run(["bash", str(GPU_SH), "--bogus"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "valid:" in bad.stderr
