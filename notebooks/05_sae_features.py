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
# # 5. Steering vectors through a sparse autoencoder
#
# A **sparse autoencoder** (SAE) rewrites a residual-stream activation `x` (576 numbers for
# SmolLM2) as a sparse, non-negative code over many more *features* (here 4608):
# `f = ReLU((x - b_dec) W_enc + b_enc)` (a TopK SAE, like the shipped one, then keeps only the k
# largest entries of f), and reconstructs `x ≈ f W_dec + b_dec`. Each row of
# `W_dec` is a direction in the residual stream, and with luck each feature fires on one
# recognisable thing (a token, a topic, a style).
#
# That gives two questions about steering vectors:
#
# 1. **Decomposition.** Which features does a contrastive (CAA) vector move? Is it a few
#    "sentiment" features, or a little of everything (diffuse)? Do its top features match the
#    features that are specific to the behaviour's text?
# 2. **Feature-targeted vectors.** Can we steer with a few decoder rows instead, chosen either
#    by what the features *read* (they fire more on the target text) or by what they *write*
#    (their decoder direction raises the logits of target words)?
#
# A subtlety first: a steering vector is a *difference* of activations, not an activation, so
# "encode the vector" has no single meaning. steerlens offers three readings and always records
# which one it used:
#
# - `encoder`: `v @ W_enc`, the exact change of every feature's pre-activation when `v` is added
#   to the residual stream (the biases cancel in a difference);
# - `raw`: `sae.encode(v)`, as if `v` were an activation (biased by `b_enc` and `b_dec`; shown for
#   comparison with work that did this);
# - `decompose_pairs`: the mean SAE code of the positive texts minus that of the negative texts,
#   i.e. what the contrast means in feature space (the SAE only sees real activations).
#
# We use the SAE that ships with steerlens (TopK, k = 128, trained on docs and chat text at
# SmolLM2's `blocks.12.hook_resid_pre`, see `python -m analyses.train_sae`). Runtime: about 2-3
# minutes on 2 CPU cores; n is small everywhere
# (n = 6 prompts for generation), so numbers illustrate the method and establish nothing.

# %%
import pandas as pd
from IPython.display import HTML, display

import steerlens as sl

model = sl.load_model()  # SmolLM2-135M-Instruct
print("shipped SAEs:", sl.sae.list_shipped_saes())
sae = sl.sae.load_sae("smollm2-135m-instruct-l12-resid_pre-4608")
site = sl.sae.check_sae(model, sae)  # the hook is a residual site of this model, d_in matches
print(f"SAE at {site} ({sae.cfg.metadata.hook_name}), d_in={sae.cfg.d_in}, d_sae={sae.cfg.d_sae}")

# %% [markdown]
# ## A sentiment vector at the SAE's layer
#
# The CAA vector: mean over the 36 train pairs of (positive − negative) residual activations at
# the last token, at the layer the SAE reads (12). A random direction of the same norm is our
# control throughout.

# %%
sentiment = sl.load_behaviour("sentiment")
vec = sl.build_vector(model, sentiment.train, [site.layer], show_progress=False)
rnd = sl.random_like(vec, seed=0)
print(f"vector norm at layer {site.layer}: {vec.norms[site.layer]:.2f}")

# %% [markdown]
# ## How diffuse is it?
#
# **Diffusion** is the fraction of the SAE's features whose |value| is above a threshold. The
# default threshold is relative, 10% of the largest |value|: a feature "takes part" when its
# coefficient is at least a tenth of the dominant one's. The **participation ratio**
# `(Σv²)² / Σv⁴`, divided by d_sae, is a threshold-free version of the same idea. For the raw
# reading we count every feature the encoder fires (threshold 0). Compare each with the random
# direction: a number only means something next to its control.

# %%
decompose = sl.sae.decompose
decs = {
    "sentiment (encoder)": decompose(model, sae, vec, encoding="encoder", label="sentiment"),
    "random (encoder)": decompose(model, sae, rnd, encoding="encoder", label="random"),
    "sentiment (raw, >0)": decompose(model, sae, vec, encoding="raw", threshold=0.0,
                                     relative=False, label="sentiment"),
    "random (raw, >0)": decompose(model, sae, rnd, encoding="raw", threshold=0.0, relative=False,
                                  label="random"),
    "pair feature difference": sl.sae.decompose_pairs(model, sae, sentiment.train, read_at="last",
                                                      label="sentiment pairs"),
}
display(pd.DataFrame([{"decomposition": k, "active": d.n_active, "diffusion": round(d.diffusion, 3),
                       "participation": round(d.participation, 4), "threshold": d.threshold}
                      for k, d in decs.items()]))
sl.figures.diffusion_bar(decs).show()
sl.figures.decomposition_bar(decs["pair feature difference"], k=15).show()

# %% [markdown]
# ## Domain features and overlap
#
# Which features are *specific* to the behaviour's text? `behaviour_domain` ranks features by the
# mean activation difference between the positive completions and the negative completions
# (each text's code averaged over its completion tokens); with `neutral=...` it compares against
# neutral prose instead. The overlap of two top-20 lists is then compared with what two random
# 20-subsets of 4608 features share on average (20²/4608 ≈ 0.09).

# %%
prose = sl.spectral.load_heldout(n=12, max_words=120)  # shipped neutral prose
dom = sl.sae.behaviour_domain(model, sae, sentiment.train)
dom_prose = sl.sae.behaviour_domain(model, sae, sentiment.train, neutral=prose)
table = sl.sae.overlap_table(
    {"vector (encoder)": decs["sentiment (encoder)"],
     "pair feature difference": decs["pair feature difference"],
     "random (encoder)": decs["random (encoder)"]},
    {"positive vs negative": dom, "positive vs prose": dom_prose}, k=20)
display(table.frame())
sl.figures.overlap_heatmap(table).show()

# %% [markdown]
# ## What are these features?
#
# A feature is known by the contexts where it fires most. `feature_contexts` runs texts through
# the model, encodes every token, and keeps each feature's strongest examples with a window of
# context (at most one example per window of a text). The circuitsvis view below colours each
# token by the feature's activation; pick a feature from the drop-down. Here the texts are the
# sentiment pairs plus the neutral prose, a small corpus, so the examples are suggestive only.

# %%
top = list(dom.top(6))
texts = sentiment.train.positives + sentiment.train.negatives + prose
ctx = sl.sae.feature_contexts(model, sae, texts, top, k=5, window=6)
for f, toks in zip(ctx.features, ctx.top_tokens):
    print(f"feature {f}: fires on {ctx.frequency[ctx.features.index(f)]:.1%} of tokens; "
          f"top tokens {[t for t, _ in toks[:6]]}")
display(HTML(sl.figures.feature_view(ctx).local_src))

# %% [markdown]
# ## Feature-targeted vectors
#
# A feature-targeted vector is a weighted sum of decoder rows, `Σ w_i W_dec[f_i]`, and it is an
# ordinary `SteeringVector`: it can be saved, loaded, steered with and swept. Two ways to choose
# the features:
#
# - **input side** (activation difference): the top-k domain features above;
# - **output side** (output score): the features whose decoder row most raises the logits of
#   target words (`W_dec @ W_U`, through the final norm's weight), minus avoid words.
#
# For a fair comparison every vector is rescaled to the same norm: the median residual norm at
# layer 12, so `strength` is "fractions of a typical residual". We steer towards *negative*
# sentiment, because SmolLM2's unsteered answers are already positive.

# %%
neg_words, _ = sl.sae.word_token_ids(model, ["terrible", "awful", "hate", "sad", "horrible",
                                             "miserable", "worst", "bad", "boring", "gloomy"])
pos_words, _ = sl.sae.word_token_ids(model, ["great", "wonderful", "love", "happy", "beautiful",
                                             "amazing", "excellent", "good", "lovely", "fantastic"])
sel_out = sl.sae.select_by_output_score(model, sae, list(neg_words.values()), k=10,
                                        avoid_tokens=list(pos_words.values()))
sel_act = dom.selection(10)  # the top-10 positive-side domain features from above
prompts = sentiment.eval_prompts[:6]
norms = sl.measures.residual_norms(model, prompts, [site.layer])
conditions = {
    "contrastive": -vec,
    "act top-10 (negated)": -sl.sae.feature_vector(model, sae, sel_act),
    "out-score top-10": sl.sae.feature_vector(model, sae, sel_out),
    "random": sl.random_like(vec, seed=1),
}
conditions = {k: sl.measures.scale_to_residual(v, norms) for k, v in conditions.items()}
print({k: round(v.norms[site.layer], 1) for k, v in conditions.items()})

# %% [markdown]
# Note that "act top-10 (negated)" subtracts the *positive*-sentiment features, which is not the
# same as adding negative-sentiment ones; `python -m analyses.sae_steering` selects features on
# the target side directly. Now generate (greedy, 24 tokens) with each vector at strength 0.2 and
# score the answers with VADER (compound sentiment in [−1, 1]).

# %%
vader = sl.measures.get_scorer(sentiment.scorer)
base = sl.generate(model, prompts, max_new_tokens=24)
rows = [{"condition": "unsteered", "mean VADER": sum(map(vader, base.texts)) / len(prompts),
         "example": base.texts[0]}]
for name, v in conditions.items():
    out = sl.generate(model, prompts, v, 0.2, max_new_tokens=24)
    rows.append({"condition": name, "mean VADER": sum(map(vader, out.texts)) / len(prompts),
                 "example": out.texts[0]})
pd.set_option("display.max_colwidth", 120)
display(pd.DataFrame(rows))

# %% [markdown]
# ## What we measured / caveats
#
# - Diffusion depends on the reading and the threshold; always compare with the random
#   direction's value at the same setting, as above.
# - The overlap numbers are counts out of 20 against a chance level of about 0.09.
# - Generation here uses n = 6 prompts and one strength, with no confidence intervals: it shows
#   how to use the API, not which method is better. The full comparison (3 behaviours, a strength
#   sweep, perplexity and KL, bootstrap CIs over 14 prompts, a random control) is
#   `python -m analyses.sae_steering`; its numbers are in `results/sae_steering/findings.json`
#   and `results/FINDINGS.md`.
