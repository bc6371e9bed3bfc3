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
# # 1. Steering vectors from contrast pairs
#
# **Activation steering** changes what a language model does by adding a vector to its residual
# stream while it runs, without touching its weights. The simplest recipe is *contrastive
# activation addition* (CAA, Rimsky et al. 2024):
#
# 1. Write **contrast pairs**: two texts that differ only in the behaviour you care about
#    (here: a cheerful and a miserable answer to the same prompt).
# 2. Run the model on both texts and read the residual stream at one layer, at the last token.
# 3. The **steering vector** is the mean over pairs of (positive − negative) activations.
# 4. At inference, add `strength × vector` to the residual stream at that layer. Positive
#    strength pushes towards the positive side, negative strength away from it.
#
# In this notebook we build a sentiment vector for SmolLM2-135M-Instruct (the model that ships
# with steerlens, 30 layers, d_model 576), steer its generations, score them, and compare the
# vector with a **random direction of the same norm**. That last step is the one most write-ups
# skip, and it is the one that tells you whether the vector carries anything specific: adding
# *any* large vector changes the text.
#
# One import gives the whole toolkit: `sl` holds the names a study needs (`sl.load_model`,
# `sl.build_vector`, `sl.generate`, ...) and its subpackages are attributes loaded on first use
# (`sl.measures`, `sl.stats`, `sl.figures`, ...).
#
# Runtime: about 2 minutes on 2 CPU cores. All sizes are small (n = 6 prompts) so that it runs
# on a laptop; the numbers here illustrate the method, they do not establish anything.

# %%
import pandas as pd

import steerlens as sl

model = sl.load_model()  # SmolLM2-135M-Instruct, from the embedded GGUF (cached after the first load)

# %% [markdown]
# ## Contrast pairs
#
# steerlens ships a few behaviours, each with fixed **train** and **test** splits of contrast
# pairs and a list of held-out evaluation prompts. We build the vector on the train pairs only
# and evaluate on prompts the vector never saw; otherwise we would partly measure memorisation of
# the training texts.

# %%
sentiment = sl.load_behaviour("sentiment")
print(f"{len(sentiment.train)} train pairs, {len(sentiment.test)} test pairs, "
      f"{len(sentiment.eval_prompts)} evaluation prompts; scorer: {sentiment.scorer}")
pair = sentiment.train[0]
print("prompt:  ", pair.prompt)
print("positive:", pair.positive)
print("negative:", pair.negative)

# %% [markdown]
# ## Building the vector
#
# `build_vector` extracts the residual stream entering each requested layer (`resid_pre`) for
# all pairs and all layers in one batched pass, and applies a method per layer (`mean_diff` is
# CAA). `read_at` says **where the activations are read**: `"last"` (the default) is the last
# token of each completion; `"first"` and `"mean"` are the alternatives. The pairs are formatted
# with the model's chat template (the prompt as the user turn, the text as the assistant's
# answer; `chat=None`, the default everywhere, does this on instruct models), so the activations
# come from the same kind of context the model sees when it answers.
#
# **What to look for:** the vector's norm grows steeply with depth, and so does the norm of the
# residual stream itself. A "strength of 4" therefore means very different pushes at different
# layers. We compare both norms below.

# %%
layers = [2, 6, 10, 14, 18, 22, 26]
vector = sl.build_vector(model, sentiment.train, layers=layers, method="mean_diff",
                         read_at="last", show_progress=False)
print(vector)
prompts = list(sentiment.eval_prompts[:6])
resid = sl.measures.residual_norms(model, prompts, layers)  # median per-token residual norm
norms = pd.DataFrame({"layer": layers,
                      "vector norm": [vector.norms[layer] for layer in layers],
                      "median residual norm": [resid[layer] for layer in layers]})
norms["vector / residual"] = norms["vector norm"] / norms["median residual norm"]
norms.round(3)

# %% [markdown]
# Because the raw vector is between a few percent and ~20% of the residual norm depending on the
# layer, we put strengths on a common scale: `scale_to_residual` rescales the vector at each
# layer to the median residual norm there, so **strength 0.2 adds 20% of a typical residual**
# at whichever layer we steer. (The `mid_layer_sweep` analysis reports both scales; notebook 2
# shows how much the choice matters.)
#
# Directions from neighbouring layers are similar but not identical; the cosine similarity tells
# us how much the "sentiment direction" rotates as it moves through the network.

# %%
scaled = sl.measures.scale_to_residual(vector, resid)
pd.DataFrame({"layers": [f"L{a} vs L{b}" for a, b in zip(layers[:-1], layers[1:])],
              "cosine": [float(vector[a] @ vector[b]) / (vector.norms[a] * vector.norms[b])
                         for a, b in zip(layers[:-1], layers[1:])]}).round(3)

# %% [markdown]
# ## Steered generation
#
# We steer at **layer 18** (about 60% of the depth; notebook 2 shows how we chose it) with
# strength +0.15 × residual norm, greedy decoding, on 6 held-out prompts.
#
# `generate(model, prompts, vector, strength)` adds `strength × vector` while it decodes; the
# keyword `positions` says **where the vector is written** (`"all"`, the default: every prompt
# and generated position; also `"prompt"`, `"generated"`, `"first"`, `"last"`). Decoding
# settings travel together in one `GenerationConfig` (frozen and validated); any of its fields
# can also be passed as a keyword, e.g. `generate(..., max_new_tokens=24)`. Decoding uses a KV
# cache and gives the same tokens as re-running the whole sequence each step.

# %%
LAYER, STRENGTH = 18, 0.15
greedy = sl.GenerationConfig(max_new_tokens=24)  # temperature 0 = greedy
steer_vec = scaled.layer(LAYER)
unsteered = sl.generate(model, prompts, config=greedy)
happier = sl.generate(model, prompts, steer_vec, STRENGTH, config=greedy)
for prompt, before, after in list(zip(prompts, unsteered.texts, happier.texts))[:2]:
    print(f"{prompt}\n  unsteered: {before!r}\n  +{STRENGTH}:     {after!r}")

# %% [markdown]
# ## Several named vectors, one strength per row
#
# We need two more conditions: the negative strength, and the **control**, a random Gaussian
# direction rescaled to exactly the vector's norm (`random_like`, seeded). Both fit in one
# batch. A `SteeringVectorSet` names its vectors; `steer` attaches them all (the hooks are
# removed when the block exits, however it exits), `strengths={...}` sets each by name, and
# `set_strength(name, value)` changes one while the block is open. A list gives **one strength
# per batch row**: below, the first 6 rows get −0.15 of the sentiment vector and the last 6 get
# +0.15 of the random one. This is how the arena decodes a baseline and several strengths at once.

# %%
control = sl.random_like(steer_vec, seed=0)
vset = sl.SteeringVectorSet({"sentiment": steer_vec, "random": control})
n = len(prompts)
with sl.steer(model, vset, strengths={"sentiment": 0.0, "random": 0.0}) as s:
    s.set_strength("sentiment", [-STRENGTH] * n + [0.0] * n)
    s.set_strength("random", [0.0] * n + [STRENGTH] * n)
    both = sl.generate(model, prompts * 2, s, config=greedy)
conditions = {"unsteered": unsteered.texts, f"+{STRENGTH}": happier.texts,
              f"-{STRENGTH}": both.texts[:n], f"random +{STRENGTH}": both.texts[n:]}
rows = [{"prompt": p, "condition": name, "continuation": texts[i]}
        for i, p in enumerate(prompts) for name, texts in conditions.items()]
pd.set_option("display.max_colwidth", 120)
pd.DataFrame(rows).set_index(["prompt", "condition"]).head(8)  # first two prompts

# %% [markdown]
# ## Scoring, with a paired shift and a CI
#
# The behaviour's scorer is VADER's compound sentiment score (−1 … +1), which runs offline. We
# score each continuation and take the **paired shift**: steered score minus the same prompt's
# unsteered score, so prompt-to-prompt variation cancels. `bootstrap_ci` resamples prompts to
# give a 95% interval on the mean shift.
#
# **How to read it:** the vector works if the +/− shifts have opposite signs and their CIs exclude
# 0, *and* the random direction's shift is small by comparison. With n = 6 the intervals are wide;
# a CI that touches 0 here is "not shown", not "no effect".

# %%
score = sl.measures.get_scorer(sentiment.scorer)
scores = {name: [score(text) for text in texts] for name, texts in conditions.items()}
base = scores["unsteered"]
shifts = {name: sl.bootstrap_ci([s - b for s, b in zip(vals, base)], seed=0)
          for name, vals in scores.items() if name != "unsteered"}
for name, ci in shifts.items():
    print(f"{name:>14}: mean shift {ci.estimate:+.3f}  95% CI [{ci.low:+.3f}, {ci.high:+.3f}]  n={ci.n}")
sl.figures.ci_forest(shifts, title=f"VADER shift vs unsteered, layer {LAYER} (n={n} prompts)",
                     x_title="mean paired shift in VADER compound").show()

# %% [markdown]
# ## Where does the vector act? Per-token KL
#
# Text-level scores hide *where* steering changes the model. `per_token_kl` runs one text through
# the model twice (clean and steered) and gives, at every position, the KL divergence in bits
# between the clean and steered next-token distributions. Here the text is the first unsteered
# answer, after its prompt in the chat template (as it was generated). The circuitsvis view
# colours each token by that KL: darker tokens are positions whose prediction the vector disturbs
# most. Typically the disturbance concentrates on a few tokens where a sentiment word could come
# next.

# %%
from IPython.display import HTML, display

token_kl = sl.per_token_kl(model, unsteered.texts[0], steer_vec, STRENGTH, prompt=prompts[0])
print(f"mean KL over {len(token_kl.bits)} tokens: {sum(token_kl.bits) / len(token_kl.bits):.3f} bits")
display(HTML(sl.figures.token_kl_view(token_kl).local_src))
sl.figures.kl_per_token(token_kl).show()

# %% [markdown]
# ## Saving and loading a vector
#
# Vectors are immutable and carry their provenance (method, layers, component, `read_at`, model,
# number of pairs). `save` writes `vector.safetensors` plus a human-readable `vector.json` (no
# pickle); `load(..., model=model)` checks that the vector fits the model.

# %%
import tempfile

with tempfile.TemporaryDirectory() as tmp:
    vector.save(tmp)
    again = sl.SteeringVector.load(tmp, model=model)
print(again, again.allclose(vector))

# %% [markdown]
# ## What we measured, and caveats
#
# - n = 6 held-out prompts, 24 greedy tokens, one layer, one random direction: enough to see the
#   method work, far too little for a claim. Report n, the CI and the random control with every
#   number, as above.
# - The full-size run (`python -m analyses.mid_layer_sweep`, 12 prompts × 40 cells, see
#   `results/FINDINGS.md`) found VADER shifts whose CIs exclude 0 at mid and late
#   layers (e.g. layer 21 at −0.1 × residual norm: −0.55 [−0.84, −0.30], random direction −0.12),
#   but **no** effect at layer 2 (0.01 [−0.24, 0.23]): early layers do not steer sentiment.
# - "Frozen" layers, where steering leaves the greedy text unchanged, did *not* reproduce: every
#   steered cell changed the text. Any large push changes tokens, which is why the random
#   control matters more than the change rate.
# - A score measures a proxy. VADER rewards sentiment words; a degenerate stream of "happy happy"
#   scores high. Notebook 2 adds perplexity as a coherence check.
