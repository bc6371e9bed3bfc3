"""SAE training on cached activations, built on SAELens' SAE classes, loss and trainer step.

SAELens supplies the model (`StandardTrainingSAE` / `TopKTrainingSAE`, built from its config
classes), the loss (`training_forward_pass`: MSE plus the L1 penalty on decoder-norm-weighted
feature activations for the standard SAE), the optimiser, LR and L1 warm-up schedules and the
firing statistics (`SAETrainer.step`), and the input scaling (`ActivationScaler`: activations are
scaled to mean norm sqrt(d_in) while training and the factor is folded into the weights at the
end, so the L1 coefficient means the same thing at any site). steerlens adds the glue: a
deterministic data provider over the activation cache (`activations.iter_batches`), a config
dataclass that round-trips through dicts, pickle-free crash-safe checkpoints (weights, Adam
moments, schedulers, firing counters and the data position, as safetensors + JSON in the run's
`checkpoint/` directory, replaced in one commit by `io.commit_entries` so that a run killed at any
moment resumes from the previous checkpoint or the new one, never a mix) written every
`checkpoint_every` steps so that re-running the same config resumes exactly where it stopped, and
evaluation on held-out activations: MSE, explained variance, L0 and the fraction of features that
never fire. The last `eval_shards` shards of the cache are never trained on.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes
from torch import Tensor

from ..checks import NonFiniteError
from ..io import apply_umask, atomic_write_text, commit_entries, read_bounded, resolve_entry
from .activations import ActivationCache, MixedCache, iter_batches
from .load import fold_decoder_norms

ARCHITECTURES = ("standard", "topk")
CHECKPOINT_DIR = "checkpoint"
MAX_TRAINER_JSON_BYTES = 64 << 20
# the older layout: ckpt-NNNNNNN/ directories named by latest.json, and their temp directories
_LEGACY_CKPT = re.compile(r"^ckpt-\d{7}$")
_LEGACY_TEMP = re.compile(r"^\.(ckpt-\d{7}|sae)\.tmp$")


@dataclass(frozen=True)
class SAETrainConfig:
    """Everything that determines a training run. `l1_coefficient` is the sparsity setting
    (standard SAEs); `k` is the number of active features (topk SAEs).

    Validated on construction; round-trips through `to_dict` / `from_dict`, and `key()` names the
    run, so re-running the same config resumes it.

    Attributes:
        d_in: the activation width.
        d_sae: the number of features.
        hook_name: the TransformerLens hook the activations come from.
        model_name: the model, recorded in the SAE's metadata.
        architecture: "standard" (ReLU + L1) or "topk".
        l1_coefficient: the L1 sparsity coefficient (standard SAEs).
        l1_warm_up_steps: steps over which the L1 coefficient ramps up.
        k: active features per token (topk SAEs).
        lr: the Adam learning rate.
        lr_warm_up_steps: linear LR warm-up steps.
        lr_decay_steps: LR decay steps at the end (0: none).
        batch_size: activations per step.
        train_tokens: training activations in all (steps = train_tokens // batch_size).
        eval_shards: the cache's last shards, held out for evaluation.
        seed: seed of initialisation and data order.
        checkpoint_every: steps between checkpoints.
        dead_feature_window: steps without firing after which a feature counts as dead.
        context_size: the activation windows' length, recorded in the SAE's metadata.
        autocast_bf16: SAELens' autocast: bf16 matmuls (fast on CPUs with AMX).

    Raises:
        ValueError: for an unknown architecture or a size, rate or coefficient out of range.
    """

    d_in: int
    d_sae: int
    hook_name: str
    model_name: str = ""
    architecture: str = "standard"
    l1_coefficient: float = 5.0
    l1_warm_up_steps: int = 100
    k: int = 64
    lr: float = 3e-4
    lr_warm_up_steps: int = 50
    lr_decay_steps: int = 0
    batch_size: int = 1024
    train_tokens: int = 1_000_000
    eval_shards: int = 2
    seed: int = 0
    checkpoint_every: int = 100
    dead_feature_window: int = 1000
    context_size: int = 128
    autocast_bf16: bool = False  # SAELens' autocast: bf16 matmuls (fast on CPUs with AMX)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"Unknown architecture {self.architecture!r}; valid architectures "
                             f"are {list(ARCHITECTURES)}.")
        for name in ("d_in", "d_sae", "batch_size", "train_tokens", "checkpoint_every", "k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.eval_shards < 0:
            raise ValueError(f"eval_shards must be >= 0 (0: evaluate on activations passed to "
                             f"train_sae as eval_acts), got {self.eval_shards}.")
        if self.l1_coefficient < 0 or self.lr <= 0:
            raise ValueError("l1_coefficient must be >= 0 and lr > 0.")
        if self.train_tokens < self.batch_size:
            raise ValueError(f"train_tokens ({self.train_tokens}) must be at least one batch "
                             f"({self.batch_size}).")

    @property
    def total_steps(self) -> int:
        """Number of training steps, train_tokens // batch_size."""
        return self.train_tokens // self.batch_size

    def to_dict(self) -> dict:
        """The config as a plain dict.

        Returns:
            Every field by name.
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SAETrainConfig:
        """Rebuild a config from `to_dict()` output.

        Args:
            d: field name -> value.

        Returns:
            The validated config.

        Raises:
            ValueError: listing unknown keys, or for invalid values.
        """
        valid = {f.name for f in fields(cls)}
        bad = sorted(set(d) - valid)
        if bad:
            raise ValueError(f"Unknown SAE training config keys {bad}; valid keys are {sorted(valid)}.")
        return cls(**d)

    def key(self) -> str:
        """A short hash of the config, to name a run directory.

        Returns:
            12 hex characters.
        """
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SAEMetrics:
    """Reconstruction quality and sparsity on held-out activations (n_tokens of them).

    Attributes:
        n_tokens: number of held-out activations.
        mse: mean over tokens and dimensions of (x - x_hat)^2, raw activation units.
        explained_variance: 1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2.
        l0: mean number of active features per token.
        dead_fraction: fraction of features that never fire on these tokens.
        mean_norm: mean |x|, for scale.
    """

    n_tokens: int
    mse: float  # mean over tokens and dimensions of (x - x_hat)^2, raw activation units
    explained_variance: float  # 1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2
    l0: float  # mean number of active features per token
    dead_fraction: float  # fraction of features that never fire on these tokens
    mean_norm: float  # mean |x|, for scale


@dataclass(frozen=True)
class TrainResult:
    """What a `train_sae` call did: config, held-out metrics and the loss curve.

    Attributes:
        config: the training config.
        metrics: held-out metrics of the SAE as it stands after this call.
        n_train_tokens: training activations seen in all (resumed steps included).
        steps: training steps done in all.
        train_seconds: seconds spent in this call only.
        losses: per-step total loss of the steps run in this call.
        resumed_from_step: the step this call started from (0 for a fresh run).
        out_dir: the run directory.
    """
    config: SAETrainConfig
    metrics: SAEMetrics
    n_train_tokens: int
    steps: int
    train_seconds: float  # this call only (a resumed run counts the resumed part)
    losses: tuple[float, ...]  # per-step total loss of the steps run in this call
    resumed_from_step: int
    out_dir: Path


def _metric_sums(sae, x: Tensor) -> tuple[float, float, float, Tensor]:
    with torch.no_grad():
        feats = sae.encode(x.to(sae.dtype))
        rec = sae.decode(feats).float()
        err = (x.float() - rec).pow(2).sum().item()
        l0 = (feats > 0).sum().item()
        fired = (feats > 0).any(0)
    return err, l0, float(x.float().norm(dim=-1).sum()), fired


def sae_metrics(sae, acts: Float[Tensor, "n d_in"], chunk: int = 4096) -> SAEMetrics:
    """MSE, explained variance, L0 and dead fraction of `sae` on `acts` (fp32 arithmetic).

    Args:
        sae (sae_lens.SAE): the SAE; its training mode is restored afterwards.
        acts: held-out activations, [n, d_in].
        chunk: activations encoded at a time.

    Returns:
        The `SAEMetrics`.

    Raises:
        ValueError: if acts is empty, not 2-D, or its width is not the SAE's d_in.
    """
    if acts.ndim != 2 or acts.shape[0] == 0:
        raise ValueError(f"acts must be a non-empty [n, d_in] tensor, got shape {tuple(acts.shape)}.")
    if acts.shape[1] != sae.cfg.d_in:
        raise ValueError(f"acts have width {acts.shape[1]} but the SAE's d_in is {sae.cfg.d_in}.")
    was_training = sae.training
    sae.eval()
    x64 = acts.double()
    mean = x64.mean(0)
    total_var = (x64 - mean).pow(2).sum().item()
    err = l0 = norm = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    for i in range(0, acts.shape[0], chunk):
        e, z, n, f = _metric_sums(sae, acts[i:i + chunk])
        err, l0, norm = err + e, l0 + z, norm + n
        fired |= f.cpu()
    sae.train(was_training)
    n = acts.shape[0]
    return SAEMetrics(
        n_tokens=n, mse=err / (n * acts.shape[1]),
        explained_variance=1.0 - err / total_var if total_var > 0 else float("nan"),
        l0=l0 / n, dead_fraction=float((~fired).float().mean()), mean_norm=norm / n,
    )


# ------------------------------------------------------------------------------- construction


def build_training_sae(config: SAETrainConfig):
    """A fresh SAELens TrainingSAE for `config` (seeded).

    Args:
        config: the training config.

    Returns:
        (sae_lens.TrainingSAE): A SAELens `StandardTrainingSAE` or `TopKTrainingSAE`.
    """
    from sae_lens.registry import get_sae_training_class
    from sae_lens.saes.sae import SAEMetadata

    sae_cls, cfg_cls = get_sae_training_class(config.architecture)
    kw = dict(d_in=config.d_in, d_sae=config.d_sae, dtype="float32", device="cpu",
              normalize_activations="expected_average_only_in",
              metadata=SAEMetadata(model_name=config.model_name, hook_name=config.hook_name,
                                   hook_head_index=None, context_size=config.context_size,
                                   prepend_bos=True))
    if config.architecture == "standard":
        kw.update(l1_coefficient=config.l1_coefficient, l1_warm_up_steps=config.l1_warm_up_steps)
    else:
        kw.update(k=config.k)
    torch.manual_seed(config.seed)
    return sae_cls(cfg_cls(**kw))


def _trainer(config: SAETrainConfig, sae, data):
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    tcfg = SAETrainerConfig(
        total_training_samples=config.total_steps * config.batch_size,
        train_batch_size_samples=config.batch_size, lr=config.lr, lr_end=config.lr / 10,
        lr_warm_up_steps=config.lr_warm_up_steps, lr_decay_steps=config.lr_decay_steps,
        device="cpu", dead_feature_window=config.dead_feature_window,
        autocast=config.autocast_bf16,
        feature_sampling_window=10**9, logger=LoggingConfig(log_to_wandb=False),
    )
    return SAETrainer(cfg=tcfg, sae=sae, data_provider=data)


# ------------------------------------------------------------------------------- checkpoints

_TRAINER_TENSORS = ("act_freq_scores", "n_forward_passes_since_fired")


def _save_checkpoint(run_dir: Path, trainer, config: SAETrainConfig) -> Path:
    """Replace `run_dir/checkpoint/` (state.safetensors + trainer.json) in one commit."""
    step = trainer.n_training_steps
    opt = trainer.optimizer.state_dict()
    tensors = {f"sae.{k}": v.detach().contiguous() for k, v in trainer.sae.state_dict().items()}
    for idx, st in opt["state"].items():
        for name, v in st.items():
            tensors[f"opt.{idx}.{name}"] = torch.as_tensor(v).detach().contiguous()
    for name in _TRAINER_TENSORS:
        tensors[f"trainer.{name}"] = getattr(trainer, name).contiguous()
    meta = json.dumps({
        "config": config.to_dict(),
        "step": step,
        "n_training_samples": trainer.n_training_samples,
        "n_frac_active_samples": trainer.n_frac_active_samples,
        "param_groups": opt["param_groups"],
        "lr_scheduler": trainer.lr_scheduler.state_dict(),
        "coefficient_schedulers": {k: s.state_dict()
                                   for k, s in trainer.coefficient_schedulers.items()},
        "scaling_factor": trainer.activation_scaler.scaling_factor,
    })

    def write(ck: Path) -> None:
        ck.mkdir()
        (ck / "state.safetensors").write_bytes(save_bytes(tensors))  # save_file would be 0600
        (ck / "trainer.json").write_text(meta, encoding="utf-8")

    legacy = [p.name for p in run_dir.glob("ckpt-*") if _LEGACY_CKPT.match(p.name)]
    if (run_dir / "latest.json").exists():
        legacy.append("latest.json")
    commit_entries(run_dir, {CHECKPOINT_DIR: write}, remove=legacy,
                   stray=lambda n: bool(_LEGACY_TEMP.match(n)))
    return run_dir / CHECKPOINT_DIR


def _checkpoint_path(run_dir: Path) -> Path | None:
    """The checkpoint directory to resume from: the committed one, else an older-layout one."""
    ck = resolve_entry(run_dir, CHECKPOINT_DIR)
    if ck.is_dir():
        return ck
    latest = run_dir / "latest.json"
    if not latest.exists():
        return None
    try:
        name = json.loads(read_bounded(latest, 1 << 16, "checkpoint pointer"))["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"Checkpoint pointer {latest} is corrupt ({e}); delete {run_dir} to "
                         "train from scratch.") from e
    if not isinstance(name, str) or not _LEGACY_CKPT.match(name):
        raise ValueError(f"Checkpoint pointer {latest} names {name!r}, not a checkpoint; delete "
                         f"{run_dir} to train from scratch.")
    return run_dir / name


def _load_checkpoint(run_dir: Path, trainer, config: SAETrainConfig) -> int:
    ck = _checkpoint_path(run_dir)
    if ck is None:
        return 0
    try:
        meta = json.loads(read_bounded(ck / "trainer.json", MAX_TRAINER_JSON_BYTES,
                                       "checkpoint metadata file"))
        tensors = load_file(str(ck / "state.safetensors"))
        if not isinstance(meta, dict):
            raise ValueError("trainer.json is not a JSON object")
    except Exception as e:  # noqa: BLE001 - any failure here means a corrupt checkpoint
        raise ValueError(f"Checkpoint {ck} is corrupt ({e}); delete {run_dir} to "
                         "train from scratch.") from e
    if meta.get("config") != config.to_dict():
        raise ValueError(f"Checkpoint in {run_dir} was made with a different config; delete it "
                         "or use another output directory.")
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise NonFiniteError(f"Checkpoint {ck} holds non-finite values in {bad[:5]}; training "
                             f"diverged before it was written. Delete {run_dir} and train again "
                             "(e.g. with a lower lr).")
    trainer.sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    trainer.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    trainer.lr_scheduler.load_state_dict(meta["lr_scheduler"])
    for k, s in meta["coefficient_schedulers"].items():
        trainer.coefficient_schedulers[k].load_state_dict(s)
    for name in _TRAINER_TENSORS:
        setattr(trainer, name, tensors[f"trainer.{name}"])
    trainer.n_training_steps = meta["step"]
    trainer.n_training_samples = meta["n_training_samples"]
    trainer.n_frac_active_samples = meta["n_frac_active_samples"]
    trainer.activation_scaler.scaling_factor = meta["scaling_factor"]
    return meta["step"]


# ---------------------------------------------------------------------------------- training


class TrainingInterrupted(RuntimeError):
    """Raised by a step callback to stop training (the last checkpoint stays on disk)."""


def split_shards(cache: ActivationCache | MixedCache,
                 eval_shards: int) -> tuple[list[int], list[int]]:
    """The training and held-out shard indices of a cache (the last `eval_shards` are held out).

    Args:
        cache: the activation cache (or a `MixedCache`).
        eval_shards: how many shards to hold out.

    Returns:
        (training shard indices, evaluation shard indices).

    Raises:
        ValueError: if no shard would remain for training.
    """
    if cache.n_shards <= eval_shards:
        raise ValueError(f"The activation cache has {cache.n_shards} shards; need more than "
                         f"eval_shards={eval_shards} so that some remain for training.")
    n = cache.n_shards - eval_shards
    return list(range(n)), list(range(n, cache.n_shards))


def eval_activations(cache: ActivationCache | MixedCache, eval_shards: int) -> Tensor:
    """The held-out activations of a cache, in float32.

    Args:
        cache: the activation cache (or a `MixedCache`).
        eval_shards: how many final shards are held out.

    Returns:
        The held-out activations, [n, d_model].

    Raises:
        ValueError: as `split_shards`, or if eval_shards is 0 (nothing held out).
    """
    if eval_shards < 1:
        raise ValueError("eval_shards is 0, so the cache holds no held-out shards; pass held-out "
                         "activations to train_sae as eval_acts.")
    _, ev = split_shards(cache, eval_shards)
    return torch.cat([cache.load_shard(i) for i in ev]).float()


def train_sae(
    cache: ActivationCache | MixedCache,
    config: SAETrainConfig,
    out_dir: str | Path,
    *,
    max_steps: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
    show_progress: bool = True,
    eval_acts: Float[Tensor, "n d_in"] | None = None,
) -> TrainResult:
    """Train (or resume) an SAE on `cache`; checkpoints and the final SAE go to `out_dir`.

    The final SAE is saved in SAELens format under `out_dir/sae` (fp32) with `metrics.json`.
    `max_steps` stops early after that many total steps (checkpointing first), which is how a run
    is split; `on_step(step, loss)` is called after every step and may raise to interrupt.

    Args:
        cache: the activation cache to train on (its last `config.eval_shards` shards are held
            out), or a `MixedCache` of several (e.g. docs and chat).
        config: the training config.
        out_dir: the run directory; an existing checkpoint there is resumed.
        max_steps: stop after this many total steps (None: train to the end).
        on_step: called as `on_step(step, loss)` after every step.
        show_progress: show a progress bar.
        eval_acts: held-out activations to compute the metrics on (None: the cache's last
            `config.eval_shards` shards, which must then be >= 1).

    Returns:
        A `TrainResult`; metrics are on `eval_acts` or the held-out shards.

    Raises:
        ValueError: if the cache does not match the config (width, hook), has too few shards, or a
            checkpoint in `out_dir` is corrupt or from another config.
    """
    from sae_lens.training.activation_scaler import ActivationScaler

    if cache.spec.d_model != config.d_in:
        raise ValueError(f"The activation cache has width {cache.spec.d_model} but the config's "
                         f"d_in is {config.d_in}.")
    if cache.spec.hook_name != config.hook_name:
        raise ValueError(f"The activation cache is for {cache.spec.hook_name!r} but the config "
                         f"names {config.hook_name!r}.")
    if eval_acts is None and config.eval_shards < 1:
        raise ValueError("config.eval_shards is 0 and no eval_acts were given: there is nothing "
                         "to evaluate on. Pass held-out activations or set eval_shards >= 1.")
    train_shards, _ = split_shards(cache, config.eval_shards)
    run_dir = Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(config.to_dict(), indent=1))
    sae = build_training_sae(config)

    state = {"start": 0}

    def provider():
        yield from iter_batches(cache, train_shards, config.batch_size, config.seed,
                                start_batch=state["start"])

    data = provider()
    trainer = _trainer(config, sae, data)
    start = _load_checkpoint(run_dir, trainer, config)
    state["start"] = start
    if trainer.activation_scaler.scaling_factor is None:
        est = ActivationScaler()
        est.estimate_scaling_factor(
            config.d_in, iter_batches(cache, train_shards, config.batch_size, config.seed + 1),
            n_batches_for_norm_estimate=min(20, max(1, config.total_steps)))
        trainer.activation_scaler.scaling_factor = est.scaling_factor
    stop = config.total_steps if max_steps is None else min(max_steps, config.total_steps)
    losses: list[float] = []
    t0 = time.perf_counter()
    from ..progress import progress

    steps = range(trainer.n_training_steps, stop)
    for _ in progress(steps, desc="training SAE", enabled=show_progress):
        out = trainer.step(next(data))
        trainer.n_training_steps += 1
        loss = float(out.loss.detach())
        if not math.isfinite(loss):
            raise NonFiniteError(f"The SAE training loss became {loss} at step "
                                 f"{trainer.n_training_steps}; nothing from this step was saved "
                                 f"(the last checkpoint in {run_dir} stays). Lower lr, or check "
                                 "the activation cache for extreme values.")
        losses.append(loss)
        if trainer.n_training_steps % config.checkpoint_every == 0:
            _save_checkpoint(run_dir, trainer, config)
        if on_step is not None:
            on_step(trainer.n_training_steps, loss)
    seconds = time.perf_counter() - t0
    if trainer.n_training_steps % config.checkpoint_every != 0:
        _save_checkpoint(run_dir, trainer, config)
    final = _finalise(trainer)
    held = eval_acts if eval_acts is not None else eval_activations(cache, config.eval_shards)
    metrics = sae_metrics(final, held.float())
    result = TrainResult(config, metrics, trainer.n_training_samples, trainer.n_training_steps,
                         seconds, tuple(losses), start, run_dir)
    if trainer.n_training_steps >= config.total_steps:
        save_sae(final, run_dir / "sae", dtype=torch.float32)
        atomic_write_text(run_dir / "metrics.json", json.dumps(result_dict(result), indent=1))
    return result


def checkpoint_sae(config: SAETrainConfig, out_dir: str | Path) -> tuple[object, int]:
    """The inference SAE of a run's latest checkpoint, e.g. of a run stopped before the end.

    Args:
        config: the run's training config.
        out_dir: the run directory.

    Returns:
        (sae_lens.SAE with the activation scale folded in, the checkpoint's step).

    Raises:
        ValueError: if the run has no checkpoint, or it is corrupt or from another config.
    """
    trainer = _trainer(config, build_training_sae(config), iter(()))
    step = _load_checkpoint(Path(out_dir), trainer, config)
    if step == 0:
        raise ValueError(f"{out_dir} holds no checkpoint of this config; train first.")
    return _finalise(trainer), step


def _finalise(trainer):
    """An inference copy of the trained SAE with the activation scale folded into the weights.

    A TopK SAE trained with `rescale_acts_by_decoder_norm` (SAELens' default) decodes f / |W_dec|;
    its decoder norms are folded into the encoder too, so the saved SAE has unit decoder rows and
    plain `f @ W_dec` semantics: a feature's activation times W_dec[i] is exactly what it writes,
    which `v @ W_enc` readings, decoder-column vectors and clamp matching rely on. Same function.
    """
    from sae_lens.saes.sae import SAE

    sae = trainer.sae
    sd = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    cfg = sae.cfg.get_inference_sae_cfg_dict()
    cfg["normalize_activations"] = "expected_average_only_in"
    inf = SAE.from_dict(cfg)
    inf.load_state_dict(sd)
    if trainer.activation_scaler.scaling_factor is not None:
        inf.fold_activation_norm_scaling_factor(trainer.activation_scaler.scaling_factor)
    return fold_decoder_norms(inf).eval()


def save_sae(sae, path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Save an inference SAE in SAELens format (cfg.json + sae_weights.safetensors), crash-safely.

    The directory is replaced in one commit (`io.commit_entries`): readers (`load_sae`) see the
    old SAE or the new one even if the process dies mid-save.

    Args:
        sae (sae_lens.SAE): the SAE; it is returned to float32 afterwards.
        path: the directory to write (replaced if it exists).
        dtype: the dtype of the saved weights.

    Returns:
        The directory written.

    Raises:
        NonFiniteError: (a ValueError) if the SAE's weights are not all finite, or overflow
            `dtype`; nothing is written.
    """
    path = Path(path)
    bad = [k for k, v in sae.state_dict().items()
           if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise NonFiniteError(f"Refusing to save an SAE with non-finite weights ({bad[:5]}) to "
                             f"{path}.")

    def write(tmp: Path) -> None:
        sae_d = sae.to(dtype)
        old = sae_d.cfg.dtype
        sae_d.cfg.dtype = str(dtype).removeprefix("torch.")
        try:
            over = [k for k, v in sae_d.state_dict().items()
                    if v.is_floating_point() and not torch.isfinite(v).all()]
            if over:
                raise NonFiniteError(f"The SAE's weights {over[:5]} do not fit in {dtype} "
                                     f"(they overflow to inf); nothing was written to {path}.")
            sae_d.save_model(tmp)
        finally:
            sae_d.cfg.dtype = old
            sae.to(torch.float32)
        apply_umask(tmp)  # SAELens writes the weights with safetensors' fixed 0600

    commit_entries(path.parent, {path.name: write},
                   stray=lambda n: n == f".{path.name}.tmp")
    return path


def result_dict(r: TrainResult) -> dict:
    """A training result as a JSON-ready dict (written as `metrics.json`).

    Args:
        r: the result.

    Returns:
        A dict with the config, metrics, counts, timing and the final loss.
    """
    return {"config": r.config.to_dict(), "metrics": asdict(r.metrics),
            "n_train_tokens": r.n_train_tokens, "steps": r.steps,
            "train_seconds_last_call": r.train_seconds, "resumed_from_step": r.resumed_from_step,
            "final_loss": r.losses[-1] if r.losses else None}

