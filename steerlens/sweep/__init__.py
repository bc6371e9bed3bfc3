"""Layer x strength x prompt sweeps: batched, resumable, with a random-direction control.

`sweep(model, prompts, vectors, SweepConfig(layers, strengths, ...))` (or the config's fields as
keywords) runs every (vector, layer, strength, prompt) cell and returns a `SweepResult` whose
`.table` is a tidy pandas DataFrame (one row per cell) and whose `.summary()` gives means with CIs
per (vector, layer, strength). The engine (`engine.py`) spends close to the minimum number of
forward passes: the unsteered prefix below each steered layer is computed once and reused, all
strengths share one forward as rows, only the needed positions are unembedded, and the unsteered
continuation is generated once per prompt. Results stream to disk (`store.py`) and an interrupted
sweep resumes where it stopped. `n_random` adds norm-matched random directions run through the same
grid (`control.py`), and `compare_random` sets the real vector against them. Modules: grid
(validation and fingerprint), engine, store (the cell log and `load_sweep`, which reopens a results
directory without the model), result (table, summaries, per-layer effects, zones), control, and
executor (`sweep(..., executor=RayExecutor(...))` runs the engine's units on Ray workers; the
default runs them in-process and needs no Ray).
"""

from ..config import SWEEP_MEASURES as MEASURES
from ..config import SweepConfig
from .control import RANDOM_PREFIX, compare_random, random_controls
from .engine import sweep
from .executor import Executor, LocalExecutor, ModelLoader, RayExecutor, WorkUnit
from .grid import SweepGrid, make_grid
from .result import MEASURE_COLUMNS, ZONES, SweepResult, effect_values, layer_effect, zones
from .store import (
    CELLS_FILE,
    CONFIG_FILE,
    LOCK_FILE,
    CellStore,
    CorruptStoreError,
    RepairReport,
    load_sweep,
    repair_store,
)

__all__ = [
    "CELLS_FILE",
    "CONFIG_FILE",
    "LOCK_FILE",
    "MEASURES",
    "MEASURE_COLUMNS",
    "RANDOM_PREFIX",
    "ZONES",
    "CellStore",
    "Executor",
    "LocalExecutor",
    "ModelLoader",
    "RayExecutor",
    "WorkUnit",
    "CorruptStoreError",
    "RepairReport",
    "SweepConfig",
    "SweepGrid",
    "SweepResult",
    "compare_random",
    "effect_values",
    "layer_effect",
    "load_sweep",
    "make_grid",
    "random_controls",
    "repair_store",
    "sweep",
    "zones",
]
