"""Sparse autoencoders: corpus, activation cache, SAELens training, loading, and SAE-based vectors."""

from .load import SAEHubUnavailable, check_sae, list_shipped_saes, load_sae  # noqa: F401
from .train import SAEMetrics, SAETrainConfig, TrainResult, sae_metrics, train_sae  # noqa: F401
