"""Where a sweep's units run: in this process (the default) or on a Ray cluster, one model per actor.

The engine (`engine.py`) splits a sweep into units, each the smallest piece that keeps its
prefix reuse: a KL unit is one prompt chunk x one (vector, layer) with all its strengths as
rows (the chunk's unsteered forward is cached and reused by the next unit of the same chunk);
a "base" unit generates the unsteered continuation of a chunk of prompts; a "gen" unit
generates one (vector, layer)'s strengths as rows of one batch. A `WorkUnit` is plain data, so
it can travel; `SweepJob` carries what every unit needs (the grid with its vectors, the scorer,
the batch size, the fingerprint) and is sent once per worker per sweep. An executor runs units
and hands each `UnitResult` back to the driver, which is the only writer of the cell store:
records are appended as results arrive, so an interrupted driver resumes from the store.

`LocalExecutor` runs units in order on the driver's model. `RayExecutor` starts `n_workers`
actors (one per GPU with `num_gpus_per_worker=1`, or per CPU slot), each of which loads the
model once through a picklable loader (`ModelLoader`: the `load_model` name and keywords; models
are never shipped) and keeps it for later sweeps while the loader stays the same, checks that it
computes the sweep the driver planned (same fingerprint, and next-token logits on a probe prompt
that agree with the driver's within 1% of their scale), and then runs units sent to it.
Scheduling is dynamic (an idle worker takes the next ready unit; KL units of the prompt chunk a
worker already holds are preferred, so its cached prefix is reused), and a "gen" unit is ready
once the unsteered continuations it compares against are in the store. When a worker
dies (killed, out of memory, node lost) it is replaced by a fresh actor and its in-flight units
are rerun; a unit whose worker dies `max_unit_retries + 1` times fails the sweep. Each record is
stored once: the driver adds only keys not yet in the store.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from ..backend import Model, runtime
from ..config import SweepConfig
from ..vectors import SteeringVector
from .grid import SweepGrid

Row = tuple[float, int]  # (strength, prompt_idx)
Key = tuple
UNIT_KINDS = ("kl", "base", "gen")


@dataclass(frozen=True)
class WorkUnit:
    """One schedulable piece of a sweep, as data (it pickles, so it can run on another machine).

    Attributes:
        kind: "kl", "base" (unsteered continuations) or "gen" (steered continuations).
        rows: (strength, prompt_idx) rows of a "kl" or "gen" unit, computed as one batch.
        idxs: the prompt chunk of a "kl" unit (its unsteered forward), the prompts of a "base"
            unit.
        name: the vector of a "kl" or "gen" unit.
        layer: the layer of a "kl" or "gen" unit.
        chunk_layers: the layers whose residuals a "kl" unit's chunk forward keeps.
    """

    kind: str
    rows: tuple[Row, ...] = ()
    idxs: tuple[int, ...] = ()
    name: str | None = None
    layer: int | None = None
    chunk_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in UNIT_KINDS:
            raise ValueError(f"Unknown unit kind {self.kind!r}; valid: {list(UNIT_KINDS)}.")

    @property
    def group(self) -> tuple | None:
        """Units of one group share cached work (a "kl" unit's prompt chunk), else None."""
        return ("kl", self.idxs, self.chunk_layers) if self.kind == "kl" else None

    @property
    def needs(self) -> tuple[Key, ...]:
        """Store keys the unit reads: a "gen" unit's unsteered continuations."""
        if self.kind != "gen":
            return ()
        return tuple(("base", p) for p in sorted({p for _, p in self.rows}))

    def record_keys(self) -> list[Key]:
        """The store keys of the records the unit produces.

        Returns:
            One key per row ("kl" / "gen") or per prompt ("base").
        """
        if self.kind == "base":
            return [("base", p) for p in self.idxs]
        return [(self.kind, self.name, self.layer, float(s), p) for s, p in self.rows]

    def __str__(self) -> str:
        if self.kind == "base":
            return f"base unit (prompts {list(self.idxs)})"
        return (f"{self.kind} unit ({self.name!r}, layer {self.layer}, {len(self.rows)} rows, "
                f"prompts {sorted({p for _, p in self.rows})})")


@dataclass(frozen=True)
class UnitResult:
    """What running a unit gave: its records and the model passes it ran.

    Attributes:
        records: the records, one per key of `WorkUnit.record_keys()`.
        passes: model passes by kind ("base", "steered", "generate", "perplexity").
        worker: who ran it ("local" or the Ray actor's id).
    """

    records: tuple[dict, ...]
    passes: Mapping[str, int] = field(default_factory=dict)
    worker: str = "local"


def _pack_vector(vec: SteeringVector) -> dict[str, Any]:
    return {"directions": dict(vec.directions), "component": vec.component, "method": vec.method,
            "read_at": vec.read_at, "model_id": vec.model_id, "n_pairs": vec.n_pairs,
            "extra": dict(vec.extra), "version": vec.version}


@dataclass(frozen=True)
class SweepJob:
    """Everything a worker needs besides its model and the units (sent once per worker).

    Attributes:
        config: the sweep's config (chat resolved).
        names: the grid's vector names, controls included.
        control_for: name -> the real vector it belongs to.
        prompts: the prompts.
        vectors: name -> the vector's fields (directions as CPU tensors), rebuilt on the worker.
        fingerprint: the driver's `SweepGrid.fingerprint`; a worker whose model gives another
            refuses the job.
        scorer: the scorer spec or callable (built on the worker by `get_scorer`), or None.
        batch_size: most rows per forward.
        probe: the driver model's next-token logits for the first prompt (float32 CPU), which a
            worker's model must reproduce; None skips the check.
        runner: the function that runs one unit, `runner(ctx, unit, needs, worker)` (the
            engine's `run_unit`; a module-level function, so it pickles by reference).
    """

    config: SweepConfig
    names: tuple[str, ...]
    control_for: Mapping[str, str]
    prompts: tuple[str, ...]
    vectors: Mapping[str, Mapping[str, Any]]
    fingerprint: Mapping[str, Any]
    scorer: Any = None
    batch_size: int = 32
    probe: torch.Tensor | None = None
    runner: Callable[..., UnitResult] | None = None

    @classmethod
    def from_grid(cls, grid: SweepGrid, fingerprint: Mapping[str, Any], scorer: Any,
                  batch_size: int, probe: torch.Tensor | None = None, *,
                  runner: Callable[..., UnitResult]) -> SweepJob:
        """The job for a grid built by `make_grid`.

        Args:
            grid: the validated grid (with vectors).
            fingerprint: `grid.fingerprint(model)`.
            scorer: the scorer spec or callable, or None.
            batch_size: most rows per forward.
            probe: the driver's probe logits (see `probe_logits`), or None.
            runner: the function that runs one unit (the engine's `run_unit`).

        Returns:
            The job.

        Raises:
            ValueError: for a grid without vectors (one reloaded from disk).
        """
        if grid.vectors is None:
            raise ValueError("A grid reloaded from disk has no vectors, so it cannot be run.")
        job = cls(grid.config, grid.names, dict(grid.control_for), grid.prompts,
                  {n: _pack_vector(grid.vectors[n]) for n in grid.names}, dict(fingerprint),
                  scorer, batch_size, probe, runner)
        object.__setattr__(job, "_grid", grid)  # this process's copy; never pickled
        return job

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_grid"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)

    def grid(self) -> SweepGrid:
        """The grid (rebuilt with its vectors in a process that received the job).

        Returns:
            The `SweepGrid`.
        """
        local = self.__dict__.get("_grid")
        if local is not None:
            return local
        vectors = {n: SteeringVector(**v) for n, v in self.vectors.items()}
        return SweepGrid(self.config, self.names, dict(self.control_for), self.prompts, vectors)


def probe_logits(model: Model, grid: SweepGrid) -> torch.Tensor:
    """The model's next-token logits for the grid's first prompt (float32, CPU).

    Args:
        model: the model.
        grid: the sweep's grid.

    Returns:
        Logits [d_vocab].
    """
    batch = runtime.encode_prompts(model, [grid.prompts[0]], chat=grid.chat)
    logits = runtime.forward(model, batch, last_only=True)
    return logits[0, -1].detach().float().cpu()


def check_probe(expected: torch.Tensor, got: torch.Tensor, where: str) -> None:
    """Raise if a worker's model disagrees with the driver's on the probe prompt.

    The tolerance (1% of the logits' scale) passes float32 vs bf16/fp16 and CPU vs GPU, and
    fails other weights (another seed, another checkpoint), whose logits differ by O(1).

    Args:
        expected: the driver's probe logits.
        got: the worker's.
        where: the worker, for the message.

    Raises:
        ValueError: when the logits differ by more than the tolerance.
    """
    if expected.shape != got.shape:
        raise ValueError(f"{where}: the worker's model has vocabulary {tuple(got.shape)}, the "
                         f"driver's {tuple(expected.shape)}; load the same model on both.")
    scale = float(expected.abs().max()) or 1.0
    diff = float((expected - got.float()).abs().max())
    if not diff <= 0.01 * scale:
        raise ValueError(
            f"{where}: the worker's model gives next-token logits on the first prompt that differ "
            f"from the driver's by {diff:.3g} (logit scale {scale:.3g}; at most 1% is allowed), so "
            "it holds other weights. Give RayExecutor a model_loader that loads the driver's model "
            "(same name, seed and checkpoint).")


class UnitContext:
    """Per-process state for running a job's units: the model, the rebuilt grid, the scorer and
    the cached unsteered forward of the last prompt chunk.

    Args:
        model: this process's model.
        job: the job.
        scorer: an already-built scorer (the driver's), else built from `job.scorer`.
    """

    def __init__(self, model: Model, job: SweepJob, scorer: Callable | None = None) -> None:
        from ..measures import get_scorer

        self.model, self.job = model, job
        self.grid = job.grid()
        if scorer is None and job.scorer is not None:
            scorer = get_scorer(job.scorer)
        self.scorer = scorer
        self.chunk = None  # engine._PromptChunk of the last "kl" unit's group

    def run(self, unit: WorkUnit, needs: Mapping[Key, dict], worker: str = "local") -> UnitResult:
        """Run one unit.

        Args:
            unit: the unit.
            needs: the stored records it reads (`unit.needs`), by key.
            worker: who runs it, recorded in the result.

        Returns:
            The `UnitResult`.

        Raises:
            ValueError: for a job built without a runner.
        """
        if self.job.runner is None:
            raise ValueError("This SweepJob has no runner; build it with SweepJob.from_grid.")
        return self.job.runner(self, unit, needs, worker)

    def close(self) -> None:
        """Drop cached activations."""
        self.chunk = None


@runtime_checkable
class Executor(Protocol):
    """Runs a sweep's units somewhere and hands each result to the driver as it arrives."""

    def run(self, model: Model, job: SweepJob, units: Sequence[WorkUnit],
            lookup: Callable[[Key], dict | None],
            on_result: Callable[[WorkUnit, UnitResult], None]) -> None:
        """Run every unit once and call `on_result` for each, in the calling thread.

        Args:
            model: the driver's model (an executor with its own models may ignore it).
            job: the job.
            units: the units; a unit may start only when every key of `unit.needs` is found
                by `lookup` (the driver stores results before the next one is handed back).
            lookup: the driver's store (`CellStore.get`).
            on_result: called with each unit and its result.
        """


class LocalExecutor:
    """Runs units in order, in this process, on the driver's model (the default)."""

    def run(self, model: Model, job: SweepJob, units: Sequence[WorkUnit],
            lookup: Callable[[Key], dict | None],
            on_result: Callable[[WorkUnit, UnitResult], None], *,
            scorer: Callable | None = None) -> None:
        """Run every unit in order and hand each result to `on_result`.

        Args:
            model: the model.
            job: the job.
            units: the units (a "gen" unit after the "base" units it needs).
            lookup: the driver's store.
            on_result: called with each unit and its result.
            scorer: the driver's built scorer (saves rebuilding it).

        Raises:
            RuntimeError: when a unit comes before the records it needs.
        """
        ctx = UnitContext(model, job, scorer)
        try:
            for unit in units:
                on_result(unit, ctx.run(unit, _needed(unit, lookup)))
        finally:
            ctx.close()


def _needed(unit: WorkUnit, lookup: Callable[[Key], dict | None]) -> dict[Key, dict]:
    out = {}
    for key in unit.needs:
        rec = lookup(key)
        if rec is None:
            raise RuntimeError(f"{unit} needs record {key}, which is not in the store yet.")
        out[key] = rec
    return out


# ------------------------------------------------------------------------------ Ray


@dataclass(frozen=True)
class ModelLoader:
    """A picklable recipe for loading the model in a worker: `load_model(name, **kwargs)`.

    Attributes:
        name: the `load_model` name (e.g. "smollm2-135m-instruct", "tiny-random").
        kwargs: further `load_model` keywords (e.g. device, seed, dtype).
    """

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self) -> Model:
        """Load the model.

        Returns:
            The model.
        """
        from ..backend import load_model

        return load_model(self.name, **dict(self.kwargs))


def _import_ray():
    try:
        import ray
    except ImportError as err:
        raise ImportError("RayExecutor needs Ray, an optional extra: pip install 'steerlens[ray]' "
                          "(or pip install 'ray==2.60.*'). Without it, sweeps run in this process "
                          "(executor=None).") from err
    return ray


class _Worker:
    """The Ray actor: one model, loaded once, running units of the current job."""

    def __init__(self, threads: int | None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.loader: Callable[[], Model] | None = None
        self.model: Model | None = None
        self.fault_hook: Callable[[WorkUnit, int], None] | None = None
        self.n_units = 0
        self.job_id: str | None = None
        self.ctx: UnitContext | None = None
        self.name = f"pid {os.getpid()}"

    def start(self, job_id: str, job: SweepJob, loader: Callable[[], Model],
              fault_hook: Callable[[WorkUnit, int], None] | None) -> str:
        if self.ctx is not None:
            self.ctx.close()
        self.ctx, self.job_id, self.fault_hook, self.n_units = None, None, fault_hook, 0
        if self.model is None or loader != self.loader:  # load once; again only for another model
            self.model = self.loader = None
            self.model, self.loader = loader(), loader
        ctx = UnitContext(self.model, job)
        found = ctx.grid.fingerprint(self.model)
        if found != dict(job.fingerprint):
            from .store import _differences

            raise ValueError(
                f"Worker {self.name}: its model gives the sweep another fingerprint "
                f"({', '.join(_differences(found, dict(job.fingerprint)))} differ); give "
                "RayExecutor a model_loader that loads the driver's model.")
        if job.probe is not None:
            check_probe(job.probe, probe_logits(self.model, ctx.grid), f"Worker {self.name}")
        self.ctx, self.job_id = ctx, job_id
        return self.name

    def run(self, job_id: str, unit: WorkUnit, needs: Mapping[Key, dict]) -> UnitResult:
        if self.ctx is None or job_id != self.job_id:
            raise RuntimeError(f"Worker {self.name} has not started job {job_id}.")
        if self.fault_hook is not None:
            self.fault_hook(unit, self.n_units)
        self.n_units += 1
        return self.ctx.run(unit, needs, self.name)


@dataclass
class _Slot:
    actor: Any
    index: int
    group: tuple | None = None
    inflight: int = 0


class RayExecutor:
    """Runs a sweep's units on Ray actors, each holding its own copy of the model.

    Actors start on the first sweep and are reused by later ones until `shutdown()` (or the end
    of a `with` block). `ray.init` is called with `address` when Ray is not initialised yet
    (None starts a local cluster, "auto" joins the one `ray start` runs on this node).

    Args:
        n_workers: how many actors; None: as many as the cluster's GPUs (or CPUs) allow at
            `num_gpus_per_worker` (or `num_cpus_per_worker`) each.
        num_gpus_per_worker: GPUs per actor (1: one model per GPU; fractions share a GPU).
        num_cpus_per_worker: CPUs per actor (fractions allowed).
        model_loader: a picklable zero-argument callable that loads the model in a worker, e.g.
            `ModelLoader("smollm2-135m-instruct", {"device": "cuda", "dtype": "bfloat16"})`;
            None: `ModelLoader` of the driver model's name, per sweep (default device: CUDA
            when the worker has a GPU), so one pool of workers serves sweeps over several
            models. A worker keeps its model while the loader stays equal, and loads the new
            one when it changes.
        torch_threads: torch CPU threads per actor (default: `num_cpus_per_worker`, at least 1).
        max_in_flight: units queued per actor (2 hides the round trip between units).
        max_unit_retries: how often a unit is rerun after its worker died before the sweep
            fails.
        address: the Ray address for `ray.init` when Ray is not initialised.
        start_timeout_s: how long workers may take to be placed and load the model before the
            sweep fails with the cluster's free resources in the message (None: no limit).
        fault_hook: for tests: called in the worker before each unit with the unit and how many
            units that actor has run in this sweep (e.g. to kill the process mid-sweep); sent
            with each sweep, so setting the attribute affects the next sweep.

    Raises:
        ImportError: when Ray is not installed (the `ray` extra).
        ValueError: for invalid numbers of workers, GPUs, CPUs or retries.
    """

    def __init__(self, n_workers: int | None = None, *, num_gpus_per_worker: float = 0,
                 num_cpus_per_worker: float = 1, model_loader: Callable[[], Model] | None = None,
                 torch_threads: int | None = None, max_in_flight: int = 2,
                 max_unit_retries: int = 2, address: str | None = None,
                 start_timeout_s: float | None = 900.0,
                 fault_hook: Callable[[WorkUnit, int], None] | None = None) -> None:
        _import_ray()
        if n_workers is not None and (isinstance(n_workers, bool) or not isinstance(n_workers, int)
                                      or n_workers < 1):
            raise ValueError(f"n_workers must be a positive int or None, got {n_workers!r}.")
        if num_gpus_per_worker < 0 or num_cpus_per_worker < 0:
            raise ValueError("num_gpus_per_worker and num_cpus_per_worker must be >= 0, got "
                             f"{num_gpus_per_worker!r} and {num_cpus_per_worker!r}.")
        if num_gpus_per_worker == 0 and num_cpus_per_worker == 0:
            raise ValueError("A worker needs some resource: num_gpus_per_worker or "
                             "num_cpus_per_worker must be > 0.")
        if max_in_flight < 1 or max_unit_retries < 0:
            raise ValueError(f"max_in_flight must be >= 1 and max_unit_retries >= 0, got "
                             f"{max_in_flight!r} and {max_unit_retries!r}.")
        self.n_workers = n_workers
        self.num_gpus_per_worker = num_gpus_per_worker
        self.num_cpus_per_worker = num_cpus_per_worker
        self.model_loader = model_loader
        self.torch_threads = (torch_threads if torch_threads is not None
                              else max(1, int(num_cpus_per_worker)))
        self.max_in_flight = max_in_flight
        self.max_unit_retries = max_unit_retries
        self.address = address
        self.start_timeout_s = start_timeout_s
        self.fault_hook = fault_hook
        self._slots: list[_Slot] = []
        self.n_replaced = 0  # workers replaced after dying
        self.n_rerun = 0  # units rerun because their worker died

    # -------------------------------------------------------------- actors

    @property
    def actors(self) -> list:
        """The live actor handles (e.g. for `ray.kill` in a fault test)."""
        return [s.actor for s in self._slots]

    def _n_workers(self, ray) -> int:
        if self.n_workers is not None:
            return self.n_workers
        res = ray.cluster_resources()
        if self.num_gpus_per_worker > 0:
            n = int(res.get("GPU", 0) // self.num_gpus_per_worker)
        else:
            n = int(res.get("CPU", 0) // self.num_cpus_per_worker)
        if n < 1:
            raise ValueError(f"The Ray cluster ({res}) has no room for one worker with "
                             f"{self.num_gpus_per_worker} GPU(s) and {self.num_cpus_per_worker} "
                             "CPU(s); lower them or add nodes.")
        return n

    def _new_actor(self, ray):
        cls = ray.remote(num_cpus=self.num_cpus_per_worker, num_gpus=self.num_gpus_per_worker,
                         max_restarts=0, max_task_retries=0)(_Worker)
        return cls.remote(self.torch_threads)

    def _ensure_started(self, ray, model: Model) -> None:
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False)
        n = self._n_workers(ray)
        total = ray.cluster_resources()
        for what, per in (("CPU", self.num_cpus_per_worker), ("GPU", self.num_gpus_per_worker)):
            if n * per > total.get(what, 0) + 1e-9:
                raise ValueError(
                    f"{n} workers x {per} {what} need {n * per:g} {what}s, but the Ray cluster has "
                    f"{total.get(what, 0):g}; lower n_workers or num_{what.lower()}s_per_worker "
                    "(fractions are allowed), or add nodes.")
        while len(self._slots) < n:
            self._slots.append(_Slot(self._new_actor(ray), len(self._slots)))

    def _get_start(self, ray, ref):
        try:
            return ray.get(ref, timeout=self.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(
                f"Ray workers did not start within {self.start_timeout_s} s (placing the actor and "
                f"loading the model). Free resources now: {ray.available_resources()}; each "
                f"worker needs {self.num_cpus_per_worker} CPU(s) and {self.num_gpus_per_worker} "
                "GPU(s), and other executors' workers hold theirs until shutdown().") from None

    def _replace(self, ray, slot: _Slot) -> None:
        with contextlib.suppress(Exception):
            ray.kill(slot.actor, no_restart=True)
        slot.actor, slot.group, slot.inflight = self._new_actor(ray), None, 0
        self.n_replaced += 1

    def shutdown(self) -> None:
        """Kill the actors (a later sweep starts new ones)."""
        if not self._slots:
            return
        ray = _import_ray()
        for slot in self._slots:
            with contextlib.suppress(Exception):
                ray.kill(slot.actor, no_restart=True)
        self._slots = []

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # -------------------------------------------------------------- running

    def _start_job(self, ray, slot: _Slot, job_id: str, job_ref, loader) -> None:
        """Send the job to a slot's actor and wait until it accepted it; replace dead actors."""
        for attempt in range(self.max_unit_retries + 2):
            try:
                self._get_start(ray, slot.actor.start.remote(job_id, job_ref, loader,
                                                             self.fault_hook))
                return
            except ray.exceptions.RayActorError as err:
                if attempt > self.max_unit_retries:
                    raise RuntimeError(
                        f"A Ray worker died {attempt + 1} times while starting (loading the model; "
                        f"last: {type(err).__name__}: {err}). Out of memory? Check the nodes' "
                        "free memory, or give each worker more (fewer workers per node).") from err
                self._replace(ray, slot)
            except ray.exceptions.RayTaskError as err:
                raise _cause(err) from None

    def run(self, model: Model, job: SweepJob, units: Sequence[WorkUnit],
            lookup: Callable[[Key], dict | None],
            on_result: Callable[[WorkUnit, UnitResult], None]) -> None:
        """Run every unit on the actors; hand each result to `on_result` as it arrives.

        Args:
            model: the driver's model (names the default loader).
            job: the job.
            units: the units.
            lookup: the driver's store.
            on_result: called with each unit and its result, in this thread.

        Raises:
            RuntimeError: when a unit's worker died more than `max_unit_retries` times, or a
                unit's records can never be ready.
            Exception: whatever a unit raised in its worker (e.g. `NonFiniteError` for an
                unsteered model that produces NaN), re-raised here.
        """
        ray = _import_ray()
        self._ensure_started(ray, model)
        job_id, job_ref = uuid.uuid4().hex, ray.put(job)
        loader = (self.model_loader if self.model_loader is not None
                  else ModelLoader(runtime.model_id(model)))
        starts = {slot.actor.start.remote(job_id, job_ref, loader, self.fault_hook): slot
                  for slot in self._slots}  # the workers load their models in parallel
        for ref, slot in starts.items():
            try:
                self._get_start(ray, ref)
            except ray.exceptions.RayActorError:
                self._replace(ray, slot)
                self._start_job(ray, slot, job_id, job_ref, loader)
            except ray.exceptions.RayTaskError as err:
                raise _cause(err) from None
        pending = list(units)
        inflight: dict[Any, tuple[_Slot, WorkUnit]] = {}
        deaths: dict[int, int] = {}
        try:
            while pending or inflight:
                self._dispatch(pending, inflight, job_id, lookup)
                if not inflight:
                    raise RuntimeError(f"{len(pending)} unit(s) can never run: the records they "
                                       f"need are missing (first: {pending[0]}).")
                [ref], _ = ray.wait(list(inflight), num_returns=1)
                slot, unit = inflight.pop(ref)
                slot.inflight -= 1
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError as err:
                    lost = [unit]
                    for r, (s, u) in list(inflight.items()):  # queued behind it on the dead actor
                        if s is slot:
                            del inflight[r]
                            lost.append(u)
                    for u in lost:
                        deaths[id(u)] = deaths.get(id(u), 0) + 1
                        if deaths[id(u)] > self.max_unit_retries:
                            raise RuntimeError(
                                f"The worker running {u} died {deaths[id(u)]} times (last: "
                                f"{type(err).__name__}: {err}); giving up.") from err
                    self.n_rerun += len(lost)
                    self._replace(ray, slot)
                    self._start_job(ray, slot, job_id, job_ref, loader)
                    pending[:0] = lost
                    continue
                except ray.exceptions.RayTaskError as err:
                    raise _cause(err) from None
                on_result(unit, result)
        finally:
            for ref in inflight:  # queued units of an interrupted run are not needed any more
                with contextlib.suppress(Exception):
                    ray.cancel(ref)

    def _dispatch(self, pending: list[WorkUnit], inflight: dict, job_id: str,
                  lookup: Callable[[Key], dict | None]) -> None:
        """Give idle actors ready units, preferring the prompt chunk each already holds."""
        busy_groups = {s.group for s in self._slots if s.inflight and s.group is not None}
        for slot in sorted(self._slots, key=lambda s: s.inflight):
            while slot.inflight < self.max_in_flight and pending:
                i = _pick(pending, slot.group, busy_groups, lookup)
                if i is None:
                    break
                unit = pending.pop(i)
                needs = {k: lookup(k) for k in unit.needs}
                ref = slot.actor.run.remote(job_id, unit, needs)
                inflight[ref] = (slot, unit)
                slot.inflight += 1
                slot.group = unit.group
                if unit.group is not None:
                    busy_groups.add(unit.group)


def _pick(pending: list[WorkUnit], group: tuple | None, busy: set,
          lookup: Callable[[Key], dict | None]) -> int | None:
    """Index of the unit to send: same group first, then a group nobody holds, then any."""
    best, best_rank = None, 3
    for i, unit in enumerate(pending):
        if any(lookup(k) is None for k in unit.needs):
            continue
        rank = (0 if group is not None and unit.group == group else
                1 if unit.group is None or unit.group not in busy else 2)
        if rank < best_rank:
            best, best_rank = i, rank
            if rank == 0:
                break
    return best


def _cause(err) -> BaseException:
    """The exception a unit raised in its worker (Ray wraps it)."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) else err
