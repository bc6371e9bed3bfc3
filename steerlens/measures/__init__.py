"""Measures of what a steering vector does: each takes a model (or texts) and returns a result.

- `logit_lens`: a vector's promoted/suppressed tokens per layer; the residual stream's per-layer
  next-token guesses.
- `kl`: next-token KL (bits) between base and steered model, per prompt and per token.
- `diversity`: distinct fraction / distinct-n of k sampled continuations.
- `change`: how often greedy output changes under steering.
- `perplexity`: coherence of continuations under the unsteered model; held-out text perplexity.
- `residual_scale`: strengths in units of the residual-stream norm at each layer.
- `scorers`: behaviour scorers (sentiment, keywords, regex, JSON) and A/B log-prob scoring.
- `refusal`: the documented refusal scorer (substring list over a short continuation), refusal
  log-odds from teacher-forced prefixes, and the shipped harmful / harmless prompt sets.

Measures never draw; the matching figures live in `steerlens.figures`.
"""

from ..backend.runtime import LENS_NORMS
from .change import ChangeResult, change_rate, first_divergence
from .diversity import DiversityResult, distinct_fraction, distinct_ngrams, sampling_diversity
from .kl import KLResult, TokenKL, kl_bits, next_token_kl, per_token_kl
from .logit_lens import ResidualLens, TokenScore, VectorLens, residual_lens, vector_lens
from .perplexity import (
    PerplexityResult,
    continuation_logprobs,
    continuation_perplexity,
    generation_perplexity,
    text_perplexity,
)
from .refusal import (
    REFUSAL_PATTERNS,
    REFUSAL_PREFIXES,
    RefusalLogOdds,
    RefusalPrompts,
    is_refusal,
    refusal_logodds,
    refusal_prompts,
    refusal_rate,
)
from .residual_scale import residual_norms, scale_to_residual
from .scorers import (
    SCORER_KINDS,
    ABResult,
    ScoreError,
    Scorer,
    ab_logprob,
    ab_logprob_pairs,
    contains_json_object,
    get_scorer,
    json_scorer,
    keyword_scorer,
    regex_scorer,
    safe_score,
    sentiment_scorer,
    words,
)

__all__ = [
    "LENS_NORMS",
    "SCORER_KINDS",
    "ABResult",
    "ChangeResult",
    "DiversityResult",
    "KLResult",
    "PerplexityResult",
    "REFUSAL_PATTERNS",
    "REFUSAL_PREFIXES",
    "RefusalLogOdds",
    "RefusalPrompts",
    "ResidualLens",
    "ScoreError",
    "Scorer",
    "TokenKL",
    "TokenScore",
    "VectorLens",
    "ab_logprob",
    "ab_logprob_pairs",
    "change_rate",
    "contains_json_object",
    "continuation_logprobs",
    "continuation_perplexity",
    "distinct_fraction",
    "distinct_ngrams",
    "first_divergence",
    "generation_perplexity",
    "get_scorer",
    "is_refusal",
    "json_scorer",
    "keyword_scorer",
    "kl_bits",
    "next_token_kl",
    "per_token_kl",
    "residual_norms",
    "scale_to_residual",
    "refusal_logodds",
    "refusal_prompts",
    "refusal_rate",
    "regex_scorer",
    "residual_lens",
    "safe_score",
    "sampling_diversity",
    "sentiment_scorer",
    "text_perplexity",
    "vector_lens",
    "words",
]
