"""Sparse autoencoders: corpus, activation cache, SAELens training, loading, and SAE-based vectors.

- `corpus`, `activations`, `train`: build an offline corpus, cache a site's activations, train a
  SAELens SAE on them (resumable), and measure MSE / explained variance / L0 / dead features.
- `load`: shipped SAEs, SAELens-format directories and SAELens pretrained releases; `check_sae`.
- `decompose`: a steering vector in feature space (diffusion, top-k, domain features, overlap).
- `features`: feature identities (top-activating tokens and contexts).
- `targeted`: steering vectors built from decoder columns (by activation difference, by output
  score, single features), norm-matched, as ordinary `SteeringVector`s.
- `random`: `random_sae`, a seeded random-init SAE (controls and tests).
"""

from .corpus import Corpus, CorpusProvenance, build_corpus, cached_corpus, corpus_from_texts
from .decompose import (
    DomainFeatures,
    FeatureSelection,
    OverlapTable,
    VectorDecomposition,
    behaviour_domain,
    decompose,
    decompose_pairs,
    domain_features,
    encode_direction,
    encode_texts,
    overlap,
    overlap_table,
)
from .features import FeatureContexts, FeatureExample, feature_contexts
from .load import SAEHubUnavailable, check_sae, list_shipped_saes, load_sae
from .random import random_sae
from .targeted import (
    feature_vector,
    output_scores,
    select_by_activation_diff,
    select_by_output_score,
    single_feature_vector,
    word_token_ids,
)
from .train import SAEMetrics, SAETrainConfig, TrainResult, sae_metrics, train_sae

__all__ = [
    "Corpus",
    "CorpusProvenance",
    "DomainFeatures",
    "FeatureContexts",
    "FeatureExample",
    "FeatureSelection",
    "OverlapTable",
    "SAEHubUnavailable",
    "SAEMetrics",
    "SAETrainConfig",
    "TrainResult",
    "VectorDecomposition",
    "behaviour_domain",
    "build_corpus",
    "cached_corpus",
    "check_sae",
    "corpus_from_texts",
    "decompose",
    "decompose_pairs",
    "domain_features",
    "encode_direction",
    "encode_texts",
    "feature_contexts",
    "feature_vector",
    "list_shipped_saes",
    "load_sae",
    "output_scores",
    "overlap",
    "overlap_table",
    "random_sae",
    "sae_metrics",
    "select_by_activation_diff",
    "select_by_output_score",
    "single_feature_vector",
    "train_sae",
    "word_token_ids",
]
