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
# # 3. Logit lens of vectors and residual streams
#
# The **logit lens** (nostalgebraist, 2020) reads an intermediate activation in the model's
# output vocabulary: put it through the final norm and the unembedding matrix W_U, as if the
# remaining layers did nothing, and look at the top tokens. It is a cheap, model-free-ish look
# inside, and it comes in two flavours here:
#
# - **Vector lens**: what does a steering vector "say"? Adding v to the residual changes the
#   final logits, to first order, by (g ⊙ v) W_U, where g is the final RMSNorm's scale. The tokens
#   with the largest positive entries are the ones v *promotes*, the most negative ones it
#   *suppresses*. For a sentiment vector we hope to see positive words on one side and negative
#   words on the other, and we expect the reading to be cleaner at late layers, whose basis is
#   closer to the output's.
# - **Residual lens**: for one prompt, the model's "current guess" for the next token after each
#   layer. The last row is exactly the model's output. Watching where the correct answer's rank
#   drops to 1 shows at which depth the model has "decided".
#
# Caveat: the lens ignores everything the later layers do to the direction, so it is a
# hypothesis generator, not a measurement of what steering will do. We check it against a random
# direction of the same norm, whose top tokens should look like noise.
#
# Runtime: under a minute on 2 CPU cores (no generation).

# %%
import steerlens as sl

model = sl.load_model()

# %% [markdown]
# ## The vector lens of a sentiment vector
#
# We build the CAA sentiment vector (36 train pairs) at five depths and read the top-8 promoted
# and suppressed tokens per layer. `norm="scale"` (the default) applies the final norm's scale
# to the vector, which is what the first-order argument above says; the ranking does not depend
# on the vector's norm.

# %%
sentiment = sl.load_behaviour("sentiment")
layers = [3, 9, 15, 21, 27]
vector = sl.build_vector(model, sentiment.train, layers=layers, show_progress=False)
lens = sl.vector_lens(model, vector, k=8)
sl.figures.vector_lens_table(lens, title="Sentiment vector (positive - negative): promoted / "
                             "suppressed tokens").show()
for layer in (layers[0], layers[-1]):
    print(f"L{layer} promotes: {[t.token for t in lens.promoted[layer]]}")
    print(f"L{layer} suppresses: {[t.token for t in lens.suppressed[layer]]}")

# %% [markdown]
# ## The control: a random direction
#
# A random Gaussian direction with the same per-layer norm (`random_like`, seeded). If its table
# looked as "meaningful" as the real one, the lens would be telling us about W_U, not about the
# vector.

# %%
control_lens = sl.vector_lens(model, sl.random_like(vector, seed=0), k=8)
sl.figures.vector_lens_table(control_lens, title="Random direction of equal norm (control)").show()

# %% [markdown]
# ## The residual lens of a prompt
#
# `residual_lens` runs one prompt and reads the residual stream entering every block (plus the
# final one) at one token, `read_at=-1` (the default: the last position). With a `target` token it
# also reports the target's rank and probability per layer. The prompt is a sentence to complete,
# not a question, so we pass `chat=False`: like every steerlens function, `residual_lens` applies
# the chat template on instruct models by default (`chat=None`), and inside the template the next
# token would be the assistant's reply, not " Paris". **What to look for:** early layers guess
# frequent tokens (punctuation, " the"); the answer appears at some depth and climbs to rank 1.

# %%
prompt = "The capital of France is"
clean = sl.residual_lens(model, prompt, k=5, read_at=-1, target=" Paris", chat=False)
sl.figures.residual_lens_heatmap(clean, title=f"Residual lens: {prompt!r}").show()
first = next((i for i, r in enumerate(clean.target_rank) if r == 0), None)
print("target rank per layer:", list(clean.target_rank))
print("first layer where ' Paris' is the top guess:",
      clean.labels[first] if first is not None else "never")

# %% [markdown]
# ## The residual lens under steering
#
# The same prompt with the sentiment vector added at layer 15 (strength 0.3 × the median residual
# norm there, via `scale_to_residual`), passed like every steered measure's vector and strength:
# `residual_lens(model, prompt, vector, strength, ...)`. Layers before 15 are unchanged by
# construction; from layer 15 on we can watch the push move the guesses, and whether the model
# recovers its answer by the last layer.

# %%
norms = sl.measures.residual_norms(model, list(sentiment.eval_prompts[:6]), [15])
push = sl.measures.scale_to_residual(vector.select([15]), norms)
steered = sl.residual_lens(model, prompt, push, 0.3, k=5, target=" Paris", chat=False)
sl.figures.residual_lens_heatmap(steered, title="Residual lens, steered at L15 by +0.3 x residual "
                                 "norm").show()
print("target rank per layer, clean:  ", list(clean.target_rank))
print("target rank per layer, steered:", list(steered.target_rank))

# %% [markdown]
# ## Per-token view of the same push
#
# The lens looks at one position. The circuitsvis view below colours every token of a short
# text by the KL divergence (bits) between the clean and steered next-token distributions at
# that position: where does the push matter most along a sentence? The text is raw (no
# `prompt=`, so no chat template). The view is HTML, shown with IPython's display helpers.

# %%
from IPython.display import HTML, display

text = "The capital of France is Paris. I visited it last spring and the food was"
token_kl = sl.per_token_kl(model, text, push, 0.3)
display(HTML(sl.figures.token_kl_view(token_kl).local_src))
print({tok: round(bits, 2) for tok, bits in zip(token_kl.tokens, token_kl.bits)})

# %% [markdown]
# ## What we measured, and caveats
#
# - One vector (36 pairs), five layers, one prompt: the lens is qualitative. Read it as "which
#   tokens lie along this direction", not as a prediction of steered text.
# - The lens is linear in the vector, so it cannot see non-linear effects of later layers. The
#   residual lens at early layers is known to be unreliable (the residual basis drifts with depth;
#   tuned lenses learn a per-layer correction, which steerlens does not implement).
# - In the full-size analyses (`results/FINDINGS.md`) the sentiment direction's
#   effect on text was clearest at mid-to-late layers (e.g. L21) and absent at L2; compare that
#   with where the vector lens above starts to show sentiment words.
