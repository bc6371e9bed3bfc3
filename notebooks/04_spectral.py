# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4. Spectral analyses: eigengap layer scoring and spectral weight edits
#
# Two ideas from the steering literature that look at *spectra* instead of activations.
#
# **Eigengap weakest-link scoring.** Read each attention head as kernel ridge regression over
# its keys: the better conditioned the key Gram matrix K Kᵀ / d_head, the more "stable" the head.
# The score of a head is the relative eigengap Δ = (λ1 − λ2) / λ1 of that matrix, and a layer is
# scored by its **weakest link**, the minimum Δ over its heads. The claim to test, as stated: small
# gaps (≤ 0.77) mark unstable heads that are *susceptible* to steering, a layer is as steerable as
# its weakest head, so gating should select the layers with min gap ≤ 0.77, and the spectrum
# *predicts* where to steer without running a sweep.
#
# **Spectral weight steering.** Instead of adding a vector, edit a weight: take the SVD of a
# layer's MLP output matrix W_out = U S Vᵀ and rescale each singular value s by 1 + α·z(s), where
# z is its z-score in the spectrum. α > 0 makes the spectrum more peaked (lower effective rank),
# α < 0 flatter (α is the edit's own parameter, not a steering strength). The claim to test:
# some edit improves a behaviour "for free", without raising perplexity. steerlens applies the
# edit inside a context manager that restores the weights bit-exactly.
#
# Both are tested here the same way as everything else: against a measured effect, with CIs, and
# with a control. Runtime: about 2 minutes on 2 CPU cores (n = 6 prompts, 4 held-out texts).

# %%
import steerlens as sl

model = sl.load_model()

# %% [markdown]
# ## Eigengaps per layer
#
# `eigengaps` collects the keys of every layer for a batch of prompts (padding excluded exactly),
# per key/value head (SmolLM2 has 3 KV heads per layer, shared by 9 query heads), before and after
# the rotary embedding, and computes all the Gram spectra in one batched `eigvalsh` call. It also
# computes the same gaps for the post-softmax attention patterns. The profile plot shows the
# weakest link (min), mean and median per layer; layers under the threshold (0.77) are flagged.
# `gated_layers` implements the claim as stated by default (`reading="stated"`: the flagged
# layers, smallest gap first) and the opposite reading on request (`reading="inverse"`: the
# unflagged layers, largest gap first), so a result never hangs on which way round it was read.

# %%
sentiment = sl.load_behaviour("sentiment")
prompts = list(sentiment.eval_prompts[:6])
gaps = sl.eigengaps(model, prompts)
sl.figures.eigengap_profile(gaps).show()
print("flagged layers (weakest link <= threshold), rotated keys:", gaps.rotated_keys.flagged())
print("gated as stated (min gap <= 0.77, smallest first):", sl.spectral.gated_layers(gaps.rotated_keys))
print("inverse reading (min gap > 0.77, largest first):",
      sl.spectral.gated_layers(gaps.rotated_keys, reading="inverse"))

# %% [markdown]
# ## Does the weakest link predict where steering works?
#
# We need a measured per-layer effect to test the prediction against. The cheapest is next-token
# KL at a fixed relative strength (0.1 × the median residual norm) on the same prompts, from a
# KL-only sweep over every second layer, with one norm-matched random direction as the control.
# `predict_steering` correlates the per-layer gaps with the effect (Pearson and Spearman, a
# bootstrap CI over layers and a permutation p-value) and ranks the gated layers.
#
# **What to look for:** the claim as stated predicts a *negative* correlation (low gap, big
# effect); the inverse reading a positive one. `reading_verdicts` judges both from the same
# interval; an interval that spans 0 means neither reading predicts the effect at this n.

# %%
layers = list(range(1, 30, 2))
vector = sl.build_vector(model, sentiment.train, layers=layers, show_progress=False)
vector = sl.measures.scale_to_residual(vector, sl.measures.residual_norms(model, prompts, layers))
kl = sl.sweep(model, prompts, {"sentiment": vector}, layers=layers, strengths=[0.1], n_random=1,
              show_progress=False)
sl.figures.kl_by_layer_at_strength(kl, strength=0.1).show()
effect = sl.layer_effect(kl, "kl_bits", 0.1)
real = effect[~effect["is_random"].astype(bool)]
prediction = sl.spectral.predict_steering(gaps, dict(zip(real["layer"], real["effect"])),
                                          kind="rotated_keys", effect_label="next-token KL (bits)",
                                          n_boot=500, n_perm=500)
sl.figures.gap_vs_effect(prediction).show()
c = prediction.min_pearson
print(f"r(min gap, KL) = {c.r:+.2f} [{c.ci_low:+.2f}, {c.ci_high:+.2f}], p_perm = {c.p_perm:.3f}, "
      f"n = {c.n} layers; predicted layer {prediction.predicted_layer}, "
      f"largest measured effect at layer {prediction.best_layer}")
print("verdict per reading:", sl.spectral.reading_verdicts(c))

# %% [markdown]
# 0.77 flags almost nothing on SmolLM2 (only layer 0), so a fixed threshold cannot be tested
# here. A per-model threshold is a quantile of the model's own min gaps: `quantile_gate` gates the
# layers at or below it, and `gating_test` compares them with *every* random layer set of the
# same size, as precision@k against the k layers with the largest measured effect (exact
# hypergeometric p) and as the gated layers' mean effect (the random-layer baseline). The
# analysis (`python -m analyses.eigengap_layers`) chooses the quantile on half the prompts and
# tests it on the other half (`split_gating`); here, descriptively, q = 0.3 on all prompts.

# %%
min_gap = dict(zip(prediction.layers, prediction.min_gap))
kl_effect = dict(zip(prediction.layers, prediction.effect))
for reading in ("stated", "inverse"):
    threshold, _ = sl.spectral.quantile_gate(min_gap, 0.3, reading)
    g = sl.spectral.gating_test(min_gap, kl_effect, threshold, reading, quantile=0.3)
    print(f"{reading}: gated {list(g.gated)}, top-{g.k} measured {list(g.top_k)}, precision "
          f"{g.precision:.2f} (random {g.expected_precision:.2f}, p = {g.p_precision:.2f}); mean "
          f"KL {g.mean_effect:.3f} vs random sets [{g.random_low:.3f}, {g.random_high:.3f}], "
          f"p = {g.p_mean_effect:.2f}")

# %% [markdown]
# ## The spectrum of an MLP output matrix
#
# `mlp_out_svd` gives the singular values of a layer's W_out; `spectral_steering` applies an edit
# for the duration of a `with` block and reports what it did (how many factors were clamped, the
# effective rank before and after). Below: layer 15 with α = +0.3 (peaked) and the check that
# the weights come back bit-exactly afterwards.

# %%
svd = sl.spectral.mlp_out_svd(model, 15)
print(f"layer 15 W_out: {len(svd.s)} singular values, top {float(svd.s[0]):.2f}, "
      f"smallest {float(svd.s[-1]):.3g}")
energy = (svd.s ** 2).cumsum(0) / (svd.s ** 2).sum()
print(f"share of squared singular values in the top 10%: {float(energy[len(energy) // 10]):.2f}")
before = [p.detach().clone() for p in model.parameters()]
with sl.spectral.spectral_steering(model, sl.spectral.SpectralEdit(15, 0.3)) as edit:
    print(f"inside the block: {edit.n_clamped} factors clamped")
restored = all(bool((a == b).all()) for a, b in zip(before, model.parameters()))
print("weights restored bit-exactly:", restored)
sl.figures.spectrum_before_after(edit).show()

# %% [markdown]
# ## Does any edit improve the behaviour for free?
#
# `evaluate_configs` measures each configuration against the unedited model: the change in
# held-out NLL (paired per text), next-token KL after each prompt, and the change in the
# sentiment score of greedy continuations (paired per prompt), each with a bootstrap CI. A
# configuration "improves" only if its score-change CI is above 0 *and* its perplexity stays inside
# the baseline's CI. With `controls=True` each configuration is also run with the same factors
# shuffled over the singular values, the spectral analogue of a random direction.
#
# The grid is 2 layers × 2 α on n = 4 texts and 6 prompts, for speed.

# %%
configs = sl.spectral.grid_configs([9, 21], [-0.3, 0.3])
texts = sl.spectral.load_heldout(4, max_words=60)
edits = sl.spectral.evaluate_configs(model, configs, texts=texts, prompts=prompts,
                                     scorer=sentiment.scorer, max_new_tokens=12, n_boot=500,
                                     show_progress=False)
sl.figures.alpha_curves(edits).show()
table = edits.table()
table[["label", "perplexity", "delta_nll", "delta_nll_low", "delta_nll_high", "delta_score",
       "delta_score_low", "delta_score_high", "improves"]].round(3)

# %% [markdown]
# The shuffled control for the strongest edit: the same multiset of factors, randomly permuted
# over the singular values. If the real edit's effect is no bigger than the control's, its
# *shape* (which singular values grow) is not what matters.

# %%
strongest = max(edits.points, key=lambda p: abs(p.delta_nll.estimate))
control = sl.spectral.evaluate_configs(model, [strongest.config], texts=texts, prompts=prompts,
                                       scorer=sentiment.scorer, max_new_tokens=12, controls=True,
                                       n_boot=500, show_progress=False)
control.table()[["label", "control", "perplexity", "delta_nll", "delta_score"]].round(3)

# %% [markdown]
# ## What we measured, and caveats
#
# - n here is tiny: 6 prompts, 15 layers for the correlation, 4 texts and 6 prompts for the edits.
#   Correlations over layers have few points and neighbouring layers are not independent.
# - Full-size runs (`results/FINDINGS.md`, README): **eigengap gating is not supported under
#   either reading**: the min gap vs the per-layer sentiment-score effect gave Pearson +0.39
#   [−0.29, +0.74], p_perm = 0.15 on SmolLM2 (14 layers × 12 prompts) and +0.01 [−0.69, +0.78],
#   p_perm = 0.99 on Gemma 3 270M (8 layers × 12 prompts), intervals that span 0 for both the
#   stated (r < 0) and the inverse (r > 0) reading; 0.77 gates no swept layer on either model, and
#   a per-model quantile threshold chosen on half the prompts picks layers no better than random
#   layer sets on the other half (precision@k p ≥ 0.46, mean-effect p ≥ 0.11, both readings, both
#   models).
#   The premise that post-softmax pattern gaps collapse to ~0.99 did not hold (0.40-0.995), and the
#   KRR formula did not reproduce head outputs (median R² −0.42).
# - Spectral weight steering (`python -m analyses.spectral_weights`, 4 layers × 4 α plus the published
#   "hybrid" configuration, 12 texts, 10 prompts) found **no** configuration that improves the
#   score without a perplexity cost (best Δscore +0.10 [−0.04, +0.26]); the hybrid raised held-out
#   perplexity from 21.8 to 32.4. A null result.
