"""The sweep engine: every (vector, layer, strength, prompt) cell at close to the minimum cost.

Next-token KL (always computed). For each chunk of prompts the unsteered model runs once, with
hooks keeping the residual stream entering every swept layer and the final residual. Steering at
layer l cannot change anything below l, so the steered rows for layer l start from that cached
residual and run only blocks l..N-1 (`runtime.run_from_layer`). All strengths (and prompts) of a
layer share one such forward, as rows with per-row strengths (`Steerer.set_strength(i, rows)`),
and only the last prompt position is unembedded. KL(base || steered) in bits comes from
`measures.kl_bits`. A strength of exactly 0 leaves the model unchanged, so its cells are 0 bits
without a forward. Cost: one full forward per prompt chunk plus, per layer l, (N - l) / N of a
forward per non-zero strength, against one full forward per (layer, strength) for a plain loop.

Generation ("generate" in measures). The unsteered greedy continuation of each prompt is
generated once and reused as the baseline and as every strength-0 cell. Steered continuations
run all strengths of a (vector, layer) together as rows of one batched `generate()` call with
per-row strengths. Per cell: `text`; `changed` (greedy tokens differ from the baseline's, with
`diverge_at`, from `measures.first_divergence`); `score` from the scorer (a failure on one text
gives NaN and an `error` entry, and the sweep goes on); `perplexity` of the exact continuation
tokens under the unsteered model (`measures.generation_perplexity`), the coherence check.

Non-finite values. When a strength is too large for the model's dtype the steered logits become
NaN / inf. Such a cell gets no value: it is recorded with `failed` true and an `error` message
(kl_bits NaN, text / changed None, score and perplexity NaN), never `changed=True` or a
perplexity or score of garbage. The KL path checks each row's steered logits; when a batched
generation (or its perplexity) raises `NonFiniteError`, the rows are split in halves until the
failing rows are alone, so the other cells of the batch keep their values. Summaries exclude
failed cells and count them (`n_errors`), and `sweep` warns. Non-finite values from the
*unsteered* model are not a cell's problem: they raise `NonFiniteError`.

Settings are one `SweepConfig` (or its fields as keywords); `batch_size`, `out_dir` and progress
are execution choices that do not change a cell's value, so they stay arguments. Every batch of
results is appended to the store (`store.py`) as soon as it is computed, so an
interrupted sweep rerun with the same settings and `out_dir` computes only the missing cells.
The store holds `out_dir`'s lock for the whole call (released on every exit path).

Units. The work is planned as `WorkUnit`s (data, see `executor.py`): a KL unit is one prompt
chunk x one (vector, layer) with its strengths as rows, a "base" unit one chunk's unsteered
continuations, a "gen" unit one (vector, layer)'s steered continuations. `run_unit` runs one
in any process and returns its records; this process (the driver) is the only writer of the
store. `executor=None` runs the units here in order; a `RayExecutor` runs them on Ray actors
that load the model themselves, with the same results.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..backend import Model, runtime
from ..checks import NonFiniteError, check_batch_size, check_finite_tensor
from ..config import SweepConfig
from ..generate import Generation, generate
from ..measures import first_divergence, generation_perplexity, get_scorer, kl_bits, safe_score
from ..progress import progress
from ..steer import steer
from .executor import (
    Executor,
    LocalExecutor,
    SweepJob,
    UnitContext,
    UnitResult,
    WorkUnit,
    probe_logits,
)
from .grid import SweepGrid, make_grid, scorer_label
from .result import SweepResult, build_tables
from .store import CellStore, Key

Row = tuple[float, int]  # (strength, prompt_idx)


@dataclass
class _Counts:
    """Model passes run and records computed in this call (what resuming saves)."""

    passes: dict[str, int] = field(
        default_factory=lambda: {"base": 0, "steered": 0, "generate": 0, "perplexity": 0})
    records: int = 0


def _split(rows: list, size: int) -> list[list]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _cell(part: str, name: str, layer: int, strength: float, p: int) -> tuple:
    return (part, name, layer, strength, p)


class _PromptChunk:
    """One chunk of prompts: its tokens, base next-token logits and the unsteered residual
    entering ONE layer at a time.

    The chunk's unsteered forward keeps only the lowest swept layer's residual (and the last
    position's base logits). A unit at a higher layer advances that residual through the blocks
    in between (`runtime.run_blocks`) and drops the old one, so at most one layer's activations
    per chunk are held; units are planned in ascending layer order, so the advances add up to at
    most one more forward per chunk. A unit at a lower layer (possible when another process ran
    the chunk's earlier units) recomputes the residual from the embeddings.
    """

    def __init__(self, model: Model, spec: SweepGrid, idxs: list[int], layers: list[int]) -> None:
        self.model, self.spec, self.idxs, self.layers = model, spec, idxs, layers
        self.local = {p: i for i, p in enumerate(idxs)}
        self.batch: runtime.TokenBatch | None = None
        self.layer: int | None = None  # the layer whose incoming residual `resid` holds
        self.resid: torch.Tensor | None = None
        self.base_logits: torch.Tensor | None = None
        self.group: tuple | None = None  # the WorkUnit.group it serves

    def ensure(self, counts: _Counts) -> None:
        if self.batch is not None:
            return
        model = self.model
        batch = runtime.encode_prompts(model, [self.spec.prompts[p] for p in self.idxs],
                                       chat=self.spec.chat)
        first = min(self.layers)
        kept: list[torch.Tensor] = []

        def keep(act, hook):
            kept.append(act.detach().clone())

        with runtime.attached(model, [(runtime.hook_name(first, "resid_pre"), keep)]):
            final = runtime.forward(model, batch, stop_at_layer=runtime.n_layers(model),
                                    return_type=None)
        counts.passes["base"] += 1
        base_logits = runtime.unembed(model, final[:, -1])
        try:
            check_finite_tensor(base_logits, "unsteered next-token logits")
        except NonFiniteError as err:
            raise _unsteered_error(self.idxs, err) from err
        self.batch, self.base_logits = batch, base_logits
        self.layer, self.resid = first, kept[0]

    def resid_at(self, layer: int) -> torch.Tensor:
        """The unsteered residual entering `layer` for every prompt of the chunk."""
        if self.layer != layer:
            if self.layer is not None and self.layer < layer:
                resid = runtime.run_blocks(self.model, self.resid, self.batch.attention_mask,
                                           self.layer, layer)
            else:
                resid = runtime.forward(self.model, self.batch, stop_at_layer=layer,
                                        return_type=None)
            self.layer, self.resid = layer, resid
        return self.resid


# ------------------------------------------------------------------------------ planning units


def _plan_units(spec: SweepGrid, store: CellStore, batch_size: int
                ) -> tuple[list[dict], list[WorkUnit]]:
    """Plan the work still missing from `store`: strength-0 KL records (0 bits, no forward)
    and the units to run, KL units first (grouped by prompt chunk), then "base" and "gen"."""
    zero_recs, units = _kl_plan(spec, store, batch_size)
    if spec.generate:
        units += _gen_plan(spec, store, batch_size)
    return zero_recs, units


def _kl_plan(spec: SweepGrid, store: CellStore, batch_size: int
             ) -> tuple[list[dict], list[WorkUnit]]:
    """KL units: per prompt chunk, per (vector, layer), the missing non-zero rows in pieces of
    at most `batch_size`; each unit names its chunk and the layers the chunk forward keeps."""
    units: list[WorkUnit] = []
    zero_recs = []
    order = range(len(spec.prompts))
    for start in range(0, len(spec.prompts), batch_size):
        idxs = list(order[start : start + batch_size])
        todo: dict[tuple[str, int], list[Row]] = {}
        for name in spec.names:
            for layer in spec.layers:
                for s in spec.strengths:
                    for p in idxs:
                        if _cell("kl", name, layer, s, p) in store:
                            continue
                        if s == 0.0:
                            zero_recs.append(_kl_record(spec, name, layer, s, p, 0.0))
                        else:
                            todo.setdefault((name, layer), []).append((s, p))
        if not todo:
            continue
        layers = tuple(sorted({layer for _, layer in todo}))
        # ascending layers, so the chunk's cached residual only ever moves up (see _PromptChunk)
        for (name, layer), rows in sorted(todo.items(), key=lambda item: item[0][1]):
            for piece in _split(rows, batch_size):
                units.append(WorkUnit("kl", tuple(piece), tuple(idxs), name, layer, layers))
    return zero_recs, units


def _gen_plan(spec: SweepGrid, store: CellStore, batch_size: int) -> list[WorkUnit]:
    """Generation units: the missing unsteered continuations in chunks, then per (vector, layer)
    the missing non-zero rows in pieces of at most `batch_size` (strength-0 cells copy the
    baseline on the driver, `_zero_gen_cells`)."""
    units = [WorkUnit("base", idxs=tuple(piece)) for piece in _split(
        [p for p in range(len(spec.prompts)) if ("base", p) not in store], batch_size)]
    for name in spec.names:
        for layer in spec.layers:
            rows = [(s, p) for s in spec.strengths if s != 0.0 for p in range(len(spec.prompts))
                    if _cell("gen", name, layer, s, p) not in store]
            units += [WorkUnit("gen", tuple(piece), name=name, layer=layer)
                      for piece in _split(rows, batch_size)]
    return units


def _zero_gen_cells(spec: SweepGrid, store: CellStore) -> list[tuple[str, int, float, int]]:
    return [(name, layer, s, p) for name in spec.names for layer in spec.layers
            for s in spec.strengths if s == 0.0 for p in range(len(spec.prompts))
            if _cell("gen", name, layer, s, p) not in store]


# ------------------------------------------------------------------------------ running units


class _UnitStore:
    """The store a unit's kernels see in any process: the records it needs, and what it adds."""

    def __init__(self, needs: dict[Key, dict]) -> None:
        self.records = dict(needs)
        self.added: list[dict] = []

    def __contains__(self, key: Key) -> bool:
        return key in self.records

    def get(self, key: Key) -> dict | None:
        return self.records.get(key)

    def add(self, records: Iterable[dict]) -> None:
        for rec in records:
            self.added.append(rec)
            part = rec["part"]
            key = (("base", rec["prompt_idx"]) if part == "base" else
                   (part, rec["vector"], rec["layer"], float(rec["strength"]), rec["prompt_idx"]))
            self.records[key] = rec


def run_unit(ctx: UnitContext, unit: WorkUnit, needs, worker: str = "local") -> UnitResult:
    """Run one unit on this process's model and return its records (the driver stores them).

    Args:
        ctx: this process's model, grid, scorer and cached prompt chunk.
        unit: the unit.
        needs (Mapping[Key, dict]): the stored records the unit reads (`unit.needs`).
        worker: who runs it, recorded in the result.

    Returns:
        The `UnitResult`: the unit's records and the model passes it ran.

    Raises:
        NonFiniteError: when the unsteered model produces non-finite values.
    """
    counts = _Counts()
    local = _UnitStore(dict(needs))
    spec, bs = ctx.grid, ctx.job.batch_size
    if unit.kind == "kl":
        _kl_unit(ctx, local, counts, unit)
    else:
        ctx.close()  # KL units come first; their cached chunk is not needed any more
        if unit.kind == "base":
            _base_unit(ctx.model, spec, local, counts, ctx.scorer, bs, list(unit.idxs))()
        else:
            _gen_unit(ctx.model, spec, local, counts, ctx.scorer, bs, unit.name, unit.layer,
                      list(unit.rows))()
    return UnitResult(tuple(local.added), dict(counts.passes), worker)


def _kl_record(spec: SweepGrid, name: str, layer: int, s: float, p: int, bits: float) -> dict:
    return {"part": "kl", "vector": name, "layer": layer, "strength": s, "prompt_idx": p,
            "kl_bits": bits}


def _failed_kl_record(spec: SweepGrid, name: str, layer: int, s: float, p: int, error: str
                      ) -> dict:
    return {**_kl_record(spec, name, layer, s, p, float("nan")), "failed": True, "error": error}


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _nonfinite_message(x: torch.Tensor, what: str) -> str:
    """The `NonFiniteError` message `check_finite_tensor` gives for `x`."""
    try:
        check_finite_tensor(x, what)
    except NonFiniteError as err:
        return _error_text(err)
    return f"NonFiniteError: the {what} are not finite."


def _unsteered_error(idxs: Sequence[int], err: NonFiniteError) -> NonFiniteError:
    return NonFiniteError(
        f"The unsteered model produced non-finite values on prompt(s) {list(idxs)} ({err}). "
        "This is not caused by steering, and no cell can be compared against it; check the "
        "model, its weights and its dtype.")


def _isolating(rows: list[Row], compute: Callable[[list[Row]], None],
               fail: Callable[[Row, NonFiniteError], None]) -> None:
    """compute(rows); on NonFiniteError split the rows in halves until each failing row is alone,
    then fail(row, error), so the finite rows of a batch keep their values."""
    try:
        compute(rows)
    except NonFiniteError as err:
        if len(rows) == 1:
            fail(rows[0], err)
            return
        mid = len(rows) // 2
        _isolating(rows[:mid], compute, fail)
        _isolating(rows[mid:], compute, fail)


def _kl_unit(ctx: UnitContext, store: _UnitStore, counts: _Counts, unit: WorkUnit) -> None:
    """One KL unit: the chunk's unsteered forward (cached in `ctx` for the next unit of the same
    chunk), then one steered forward from `layer` over the unit's rows."""
    model, spec, name, layer = ctx.model, ctx.grid, unit.name, unit.layer
    chunk = ctx.chunk
    if chunk is None or chunk.group != unit.group:
        ctx.close()  # at most one chunk's residuals are held
        chunk = _PromptChunk(model, spec, list(unit.idxs), list(unit.chunk_layers))
        chunk.group = unit.group
        ctx.chunk = chunk
    chunk.ensure(counts)

    def compute(rows: list[Row]) -> None:
        batch = chunk.batch
        local = torch.tensor([chunk.local[p] for _, p in rows], device=batch.tokens.device)
        sub = runtime.TokenBatch(batch.tokens[local], batch.attention_mask[local],
                                 batch.span_start[local], batch.span_end[local])
        with steer(model, spec.vectors[name].layer(layer), 1.0, spec.positions) as steerer, \
                steerer.bound(sub):
            steerer.set_strength(0, [s for s, _ in rows])
            final = runtime.run_from_layer(model, chunk.resid_at(layer)[local],
                                           sub.attention_mask, layer)
        counts.passes["steered"] += 1
        steered = runtime.unembed(model, final[:, -1])
        ok = torch.isfinite(steered).all(-1)  # rows are independent: judge each on its own
        bits = iter(kl_bits(chunk.base_logits[local][ok], steered[ok]).cpu().tolist()
                    if bool(ok.any()) else [])
        recs = [_kl_record(spec, name, layer, s, p, next(bits)) if ok[i] else
                _failed_kl_record(spec, name, layer, s, p,
                                  _nonfinite_message(steered[i], "steered next-token logits"))
                for i, (s, p) in enumerate(rows)]
        store.add(recs)
        counts.records += len(recs)

    def fail(row: Row, err: NonFiniteError) -> None:
        store.add([_failed_kl_record(spec, name, layer, row[0], row[1], _error_text(err))])
        counts.records += 1

    _isolating(list(unit.rows), compute, fail)


# ------------------------------------------------------------------------------ generation


def _measure_generation(model: Model, gen: Generation, scorer, batch_size: int, counts: _Counts
                        ) -> tuple[list[float], list[float], list[str | None]]:
    """Perplexity under the unsteered model, scores and per-item scorer errors."""
    ppl = generation_perplexity(model, gen, batch_size=batch_size).perplexity
    counts.passes["perplexity"] += 1
    errors: list[str | None] = [None] * len(gen)
    if scorer is None:
        return list(ppl), [float("nan")] * len(gen), errors
    scores, errs = safe_score(scorer, list(gen.texts))
    for e in errs:
        errors[e.index] = e.error
    return list(ppl), [float(x) for x in scores], errors


def _base_unit(model: Model, spec, store, counts, scorer, batch_size, idxs: list[int]):
    def run() -> None:
        try:
            gen = generate(model, [spec.prompts[p] for p in idxs], chat=spec.chat,
                           config=spec.config.generation)
            counts.passes["generate"] += 1
            ppl, scores, errors = _measure_generation(model, gen, scorer, batch_size, counts)
        except NonFiniteError as err:
            raise _unsteered_error(idxs, err) from err
        recs = [{"part": "base", "prompt_idx": p, "text": gen.texts[i],
                 "tokens": list(gen.tokens[i]), "score": scores[i], "perplexity": ppl[i],
                 "error": errors[i]} for i, p in enumerate(idxs)]
        store.add(recs)
        counts.records += len(recs)

    return run


def _gen_record(name, layer, s, p, text, changed, diverge, score, ppl, error) -> dict:
    return {"part": "gen", "vector": name, "layer": layer, "strength": s, "prompt_idx": p,
            "text": text, "changed": changed, "diverge_at": diverge, "score": score,
            "perplexity": ppl, "error": error}


def _failed_gen_record(name, layer, s, p, error: str) -> dict:
    nan = float("nan")
    return {**_gen_record(name, layer, s, p, None, None, None, nan, nan, error), "failed": True}


def _zero_unit(store, counts, cells: Sequence[tuple[str, int, float, int]]):
    def run() -> None:
        recs = []
        for name, layer, s, p in cells:
            base = store.get(("base", p))
            recs.append(_gen_record(name, layer, s, p, base["text"], False, None, base["score"],
                                    base["perplexity"], base["error"]))
        store.add(recs)
        counts.records += len(recs)

    return run


def _gen_unit(model: Model, spec, store, counts, scorer, batch_size, name: str, layer: int,
              rows: list[Row]):
    def compute(rows: list[Row]) -> None:
        with steer(model, spec.vectors[name].layer(layer), 1.0, spec.positions) as steerer:
            steerer.set_strength(0, [s for s, _ in rows])
            gen = generate(model, [spec.prompts[p] for _, p in rows], steerer, chat=spec.chat,
                           config=spec.config.generation)
        counts.passes["generate"] += 1
        ppl, scores, errors = _measure_generation(model, gen, scorer, batch_size, counts)
        recs = []
        for i, (s, p) in enumerate(rows):
            div = first_divergence(store.get(("base", p))["tokens"], gen.tokens[i])
            recs.append(_gen_record(name, layer, s, p, gen.texts[i], div is not None, div,
                                    scores[i], ppl[i], errors[i]))
        store.add(recs)
        counts.records += len(recs)

    def fail(row: Row, err: NonFiniteError) -> None:
        store.add([_failed_gen_record(name, layer, row[0], row[1], _error_text(err))])
        counts.records += 1

    def run() -> None:
        _isolating(rows, compute, fail)

    return run


# ------------------------------------------------------------------------------ entry point


def sweep(
    model: Model,
    prompts: str | Iterable[str],
    vectors,
    config: SweepConfig | None = None,
    *,
    scorer=None,
    out_dir=None,
    resume: bool = True,
    on_corrupt: str = "raise",
    batch_size: int = 32,
    show_progress: bool = True,
    executor: Executor | None = None,
    **settings: Any,
) -> SweepResult:
    """Run a layers x strengths x prompts grid for one or several vectors; return a tidy table.

    Args:
        model: the model.
        prompts: one prompt or a list.
        vectors (SteeringVector | SteeringVectorSet | Mapping[str, SteeringVector]): a
            SteeringVector, a SteeringVectorSet or a dict name -> SteeringVector
            (the table's `vector` column).
        config: the grid and settings (`SweepConfig`); or pass its fields as keywords.
        scorer (Callable[[str], float] | str | Mapping | None): a callable str -> float or a spec for
            `measures.get_scorer` that scores generated text (needs "generate" in measures); recorded in
            the config by its label.
        out_dir (str | Path | None): stream results there; with `resume`, continue a sweep of identical
            settings.
        resume: False discards what `out_dir` holds and starts over.
        on_corrupt: what to do when resuming meets damaged lines in `out_dir`'s cells log:
            "raise" (default; the error names the file, the line and the problem) or
            "keep_valid" (drop those lines with a warning, keep every valid cell and compute only
            the missing ones; see `repair_store`).
        batch_size: most rows per forward.
        show_progress: show a progress bar.
        executor: where the units run: None (default) in this process on `model`; a
            `RayExecutor` on Ray actors that each load the model (see `executor.py`). The
            results, the store and resuming are the same either way; this process stays the
            only writer of `out_dir`.
        **settings: `SweepConfig` field overrides, e.g. `layers=[4, 8], strengths=[0, 2],
            n_random=20`; `max_new_tokens` sets `generation.max_new_tokens`.

    Returns:
        A `SweepResult`: `.table` (one row per cell), `.summary()` with CIs, `.config` (the saved
        fingerprint, with the `SweepConfig` under "config"). Cells whose logits became
        non-finite have `failed` true and an `error` instead of values (a RuntimeWarning says
        how many); summaries exclude and count them.

    Raises:
        ValueError: for invalid settings, vectors, layers or prompts, an `out_dir` that holds a
            sweep with other settings, or one another sweep is writing (its lock is held), an
            `executor` that is not an Executor, or (Ray) workers whose model is not the driver's.
        CorruptStoreError: a damaged line in `out_dir`'s log (with `on_corrupt="raise"`).
        NonFiniteError: when the unsteered model itself produces non-finite values.

    Example:
        >>> res = sl.sweep(model, prompts, vec, layers=[6, 10], strengths=[0, 4, 8],
        ...                n_random=20)  # doctest: +SKIP
        >>> res.summary()  # doctest: +SKIP
    """
    check_batch_size(batch_size)
    if scorer is not None:
        settings["scorer"] = scorer_label(scorer)
    config = SweepConfig.from_settings(config, settings)
    grid = make_grid(model, vectors, prompts, config)
    score_fn = None
    if grid.config.scorer is not None:
        score_fn = get_scorer(scorer if scorer is not None else _scorer_spec(grid.config.scorer))
    if executor is not None and not isinstance(executor, Executor):
        raise ValueError(f"executor must be None (run here) or an Executor such as "
                         f"steerlens.sweep.RayExecutor, got {type(executor).__name__}.")
    counts = _Counts()
    fingerprint = grid.fingerprint(model)
    with CellStore.open(out_dir, fingerprint, resume, on_corrupt) as store:
        zero_kl, units = _plan_units(grid, store, batch_size)
        counts.records += store.add_new(zero_kl)
        zero_gen = _zero_gen_cells(grid, store) if grid.generate else []

        def flush_zero_gen() -> None:  # strength-0 continuations copy the baseline
            nonlocal zero_gen
            if zero_gen and all(("base", p) in store for *_, p in zero_gen):
                _zero_unit(store, counts, zero_gen)()
                zero_gen = []

        flush_zero_gen()
        if units:
            job_scorer = scorer if scorer is not None or grid.config.scorer is None else \
                _scorer_spec(grid.config.scorer)
            job = SweepJob.from_grid(grid, fingerprint, job_scorer, batch_size,
                                     None if executor is None else probe_logits(model, grid),
                                     runner=run_unit)
            ticks = iter(progress(range(len(units)), desc="sweep", enabled=show_progress,
                                  total=len(units)))

            def on_result(unit: WorkUnit, result: UnitResult) -> None:
                counts.records += store.add_new(result.records)  # the driver is the only writer
                for kind, n in result.passes.items():
                    counts.passes[kind] = counts.passes.get(kind, 0) + n
                if unit.kind == "base":
                    flush_zero_gen()
                next(ticks, None)

            if executor is None:
                LocalExecutor().run(model, job, units, store.get, on_result, scorer=score_fn)
            else:
                executor.run(model, job, units, store.get, on_result)
            for _ in ticks:
                pass
        flush_zero_gen()
        table, baseline = build_tables(grid, store)
    n_failed = int(table["failed"].sum())
    if n_failed:
        warnings.warn(
            f"{n_failed} of {len(table)} sweep cells produced non-finite values (NaN or inf; a "
            "strength too large for the model's dtype?). They are recorded with failed=True and "
            "an error instead of values, and summaries exclude and count them (n_errors).",
            RuntimeWarning, stacklevel=2)
    return SweepResult(
        table=table,
        baseline=baseline,
        config=grid.fingerprint(model),
        n_computed=counts.records,
        n_resumed=store.n_loaded,
        passes=dict(counts.passes),
        out_dir=None if out_dir is None else str(out_dir),
    )


def _scorer_spec(label: str):
    """A scorer spec back from its recorded label (a name, or a JSON spec)."""
    if label.startswith("callable:"):
        raise ValueError(f"The config records a callable scorer ({label}); pass the callable as "
                         "sweep(scorer=...).")
    try:
        return json.loads(label)
    except ValueError:
        return label
