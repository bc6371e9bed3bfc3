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
# # 2. Where to steer: the layer × strength sweep
#
# A steering vector exists at every layer, and any strength can be applied. Both choices matter
# more than the method used to build the vector: too early and the push is washed out, too
# strong and the model produces gibberish. The honest way to choose is to **sweep** a grid of
# (layer, strength) cells on held-out prompts and measure, per cell:
#
# - **behaviour shift**: the scorer's value (VADER sentiment) minus the same prompt's unsteered
#   value (paired, so prompt difficulty cancels);
# - **change rate**: the fraction of prompts whose greedy continuation changed at all;
# - **coherence**: the perplexity of the steered continuation *under the unsteered model*; a
#   continuation the clean model finds very unlikely is usually broken text;
# - **next-token KL** (bits): how far the steered next-token distribution moved from the clean
#   one, a cheap, generation-free measure of "how hard did we push".
#
# Every cell is run again with a **norm-matched random direction**. Any large vector changes text
# and raises perplexity; only what the sentiment vector does *beyond* the random one is evidence
# that the direction matters.
#
# `sl.sweep(model, prompts, vectors, SweepConfig(...))` runs the whole grid in a few batched
# passes: the unsteered prefix below the steered layer is computed once, all strengths of a layer
# share one forward (as rows of one batch), and the unsteered continuation is generated once per
# prompt. The grid and its settings are one frozen `SweepConfig` (or its fields as keywords:
# `sl.sweep(model, prompts, vectors, layers=..., strengths=...)`). With `out_dir=` the sweep
# streams results to disk and resumes after an interruption.
#
# Runtime: about 2-3 minutes on 2 CPU cores, with n = 5 prompts and 12 generated tokens per cell.

# %%
import steerlens as sl

model = sl.load_model()

# %% [markdown]
# ## The vector, on a residual-norm scale
#
# As in notebook 1, we build the CAA mean-difference vector on the sentiment *train* pairs and
# rescale it per layer to the median residual norm there, so strength 0.1 means "add 10% of a
# typical residual" at every layer. Without this, a fixed raw strength is a tiny push at early
# layers and a huge one at late layers, and the sweep mostly measures the vector's norm.

# %%
sentiment = sl.load_behaviour("sentiment")
prompts = list(sentiment.eval_prompts[:5])
kl_layers = list(range(1, 30, 3))  # 10 layers for the cheap KL scan
gen_layers = [4, 13, 22]  # 3 layers for the (more expensive) generation sweep
vector = sl.build_vector(model, sentiment.train, layers=kl_layers + gen_layers, show_progress=False)
vector = sl.measures.scale_to_residual(vector, sl.measures.residual_norms(model, prompts,
                                                                         vector.layers))
print(vector)

# %% [markdown]
# ## Step 1: how hard does each layer push? Next-token KL by layer
#
# KL needs only one forward pass per prompt, so we can afford every third layer. Next-token KL is
# what a sweep always measures (`measures=("kl",)`, the default), so the grid is just layers and
# strengths, passed as keywords, plus two random directions per cell. **What to look for:**
# whether the sentiment vector disturbs the next-token distribution more than random directions
# of the same norm, and at which depth.
# A bigger KL is *not* better steering; it says where the model is sensitive to this direction.

# %%
kl = sl.sweep(model, prompts, {"sentiment": vector.select(kl_layers)}, layers=kl_layers,
              strengths=[0.1], n_random=2, random_seed=0, show_progress=False)
sl.figures.kl_by_layer_at_strength(kl, strength=0.1, title="Next-token KL at 0.1 x residual "
                                   f"norm (n={len(prompts)} prompts)").show()
sl.layer_effect(kl, "kl_bits", 0.1).round(3)

# %% [markdown]
# ## Step 2: the generation sweep
#
# Now 3 layers (early, middle, late) × 4 strengths, greedy 12-token continuations, plus one
# random direction per cell. That is 2 × 3 × 4 × 5 = 120 steered continuations. This time the
# grid is written as a `SweepConfig`: it validates every field when it is built, and it is what
# the sweep saves next to its results (`to_dict()`), so a results directory says exactly how it
# was made. The scorer (VADER, from the behaviour) is passed to `sweep` itself.

# %%
grid = sl.SweepConfig(layers=gen_layers, strengths=[-0.3, -0.1, 0.1, 0.3],
                      measures=("kl", "generate"), generation=sl.GenerationConfig(max_new_tokens=12),
                      n_random=1, random_seed=0)
result = sl.sweep(model, prompts, {"sentiment": vector.select(gen_layers)}, grid,
                  scorer=sentiment.scorer, show_progress=False)
print(f"{result.n_cells} cells; model passes: {dict(result.passes)}")
result.table[["vector", "layer", "strength", "prompt_idx", "score", "changed", "perplexity",
              "text"]].head(8)

# %% [markdown]
# ## Zones
#
# `zones` labels each (layer, strength) cell: **unstable** when the continuation's perplexity is
# more than 2× the unsteered one, **frozen** when fewer than 10% of continuations changed, and
# otherwise **sweet spot** (the thresholds are arguments). The heatmap shows the zones with the
# behaviour shift in each cell. A sweet spot is a cell where steering *can* work; whether it
# does is the behaviour shift and its comparison with random.

# %%
sl.figures.zone_heatmap(result, "sentiment").show()
sl.zones(result)[["vector", "layer", "strength", "change_rate", "perplexity_ratio", "zone"]]

# %% [markdown]
# ## Strength curves with the random control
#
# For each layer, the mean behaviour shift (and perplexity) against strength, with bootstrap CIs
# over prompts and the random direction's curve. **What to look for:** a monotone score curve
# that separates from the random curve, at strengths where perplexity has not yet blown up.

# %%
sl.figures.strength_curves(result, "score", "sentiment").show()
sl.figures.strength_curves(result, "perplexity", "sentiment").show()

# %% [markdown]
# ## Is the vector better than random, cell by cell?
#
# `compare_random` puts each real cell against its random controls. With k random directions the
# smallest achievable p-value is 1/(k+1): with the single control used here, p can never go
# below 0.5. That is the point of showing it: one random direction can tell you the vector is
# *not* special (when random does as much), but never that it is. Use many more controls (and
# more prompts) before claiming specificity.

# %%
sl.compare_random(result, "score").round(3)

# %% [markdown]
# ## What we measured, and caveats
#
# - n = 5 prompts per cell, 12 tokens, one random direction: a demonstration, not a result.
#   Cells with CIs that touch 0 are "not shown", and selecting the best of 12 cells inflates it.
# - Full-size runs (`results/FINDINGS.md`): with 12 prompts × 40 cells
#   (`python -m analyses.mid_layer_sweep`) the best cell (layer 21, −0.2 × residual norm) shifted
#   VADER by −0.98 [−1.25, −0.66] vs −0.04 for a random direction; layer 2 showed no shift;
#   "frozen" cells did not occur at all (0 of 40), so the frozen-late-layers story did not
#   reproduce.
# - The mid vs late KL comparison depends on the strength scale
#   (`python -m analyses.kl_diversity_by_layer`, 20 prompts): on the residual-norm scale mid
#   layers (11-19) disturb next-token predictions 2.5-3.6× more than late layers (25-29), but at
#   fixed *raw* strengths the ratio is 0.95-1.23, i.e. null or reversed. How you normalise
#   strength decides the answer.
# - Sampling diversity under steering (distinct-2 of 6 samples) did not change beyond what a
#   random direction does: a null result.
