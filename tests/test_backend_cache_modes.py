"""The converted-model cache follows the umask like every other file steerlens writes."""

from __future__ import annotations

import os
import stat

from steerlens.backend.loading import _atomic_dir


def test_cache_dir_and_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        final = tmp_path / "cache" / "model"
        with _atomic_dir(final) as tmp:
            f = tmp / "weights.safetensors"
            f.write_bytes(b"x")
            os.chmod(f, 0o600)  # what safetensors' save_file leaves, whatever the umask
        assert stat.S_IMODE(final.stat().st_mode) == 0o750
        assert stat.S_IMODE((final / "weights.safetensors").stat().st_mode) == 0o640
    finally:
        os.umask(old)
