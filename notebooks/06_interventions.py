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
# # 6. Interventions beyond addition
#
# Adding a vector is one intervention. The causal claims of interpretability lean on others:
#
# - **directional ablation** removes a direction from the residual stream at every layer
#   (`x ← x − (x·r̂) r̂`), the test of "refusal is mediated by a single direction" (Arditi et al.
#   2024); **weight orthogonalisation** bakes the same edit into the weights;
# - **SAE feature clamping** pins chosen SAE features to a value (AxBench-style steering);
# - **per-head edits** change one attention head's output;
# - **conditional steering** (CAST, Lee et al. 2024) steers only the prompts a condition
#   direction matches.
#
# In steerlens each is an *intervention* that `sl.steer()` accepts, alone or mixed in one list,
# with the same `strength`, `positions`, schedules and save/load as a steering vector. Runtime:
# a few minutes on 2 CPU cores. n is small everywhere (n = 8 prompts per set), so the numbers
# illustrate the methods; `python -m analyses.refusal` and `python -m analyses.conditional_steering`
# run the same experiments at their full n with random controls.

# %%
import pandas as pd
from IPython.display import display

import steerlens as sl

model = sl.load_model()  # SmolLM2-135M-Instruct
train = sl.measures.refusal_prompts("train")
test = sl.measures.refusal_prompts("test")
print(f"harmful / harmless prompts: train {len(train.harmful)}/{len(train.harmless)}, "
      f"test {len(test.harmful)}/{len(test.harmless)}")
print("e.g.", repr(test.harmful[0]), "vs", repr(test.harmless[0]))

# %% [markdown]
# ## A refusal direction from two prompt sets
#
# The refusal direction is a mean difference of *prompts*, not of completions: the residual
# stream at the last prompt token (the position that predicts the first answer token) over
# harmful prompts, minus the same over harmless ones. `extract_prompts` encodes prompts exactly
# as generation does (chat template and generation prompt).

# %%
LAYERS = [12, 18]
harm = sl.extract_prompts(model, train.harmful, LAYERS, show_progress=False)
safe = sl.extract_prompts(model, train.harmless, LAYERS, show_progress=False)
refusal = sl.SteeringVector.from_tensors(
    {la: harm[la].mean(0) - safe[la].mean(0) for la in LAYERS}, model=model, method="mean_diff")
print({la: round(norm, 2) for la, norm in refusal.norms.items()}, "(norm per layer)")

# %% [markdown]
# ## Ablation next to addition, in one batch
#
# `Ablation(refusal.layer(12))` projects the layer-12 direction out of every layer and every
# residual site (`resid_pre`, `resid_mid`, `resid_post`). `Injection(refusal.layer(18), 2.0)` adds
# the layer-18 direction at layer 18 (the layer and strength `analyses.conditional_steering` chose
# on train prompts). Both go
# into one `steer()` block; per-row strengths choose which rows get which edit, so the baseline,
# the ablated and the added rows decode in one batch. At one hook, ablations always run before
# additions, whatever the list order.

# %%
harmful = list(test.harmful[:8])
harmless = list(test.harmless[:8])
prompts = harmful + harmless
n = len(harmful)
cfg = sl.GenerationConfig(max_new_tokens=16)
runs = {}
with sl.steer(model, [sl.Ablation(refusal.layer(12), name="ablate"),
                      sl.Injection(refusal.layer(18), 2.0, name="add")]) as s:
    for label, ablate, add in [("baseline", 0.0, 0.0), ("ablated", 1.0, 0.0),
                               ("added (strength 2)", 0.0, 2.0)]:
        s.set_strength("ablate", ablate)
        s.set_strength("add", add)
        runs[label] = sl.generate(model, prompts, s, config=cfg).texts

is_refusal = sl.measures.is_refusal
rows = []
for label, texts in runs.items():
    for part, sl_ in (("harmful", slice(0, n)), ("harmless", slice(n, None))):
        rate = sl.measures.refusal_rate(texts[sl_])
        rows.append({"condition": label, "prompts": part, "refusal rate": rate.estimate,
                     "95% CI": f"[{rate.low:.2f}, {rate.high:.2f}]", "n": rate.n})
display(pd.DataFrame(rows))

# %%
for label in runs:
    print(f"{label:>20}: {runs[label][0][:70]!r}")

# %% [markdown]
# ## Weight orthogonalisation is the same model
#
# `orthogonalised(model, r)` replaces every weight that writes to the residual stream by
# `W − (W r̂) r̂ᵀ` and restores the weights bit-exactly when the block exits. For a pre-norm model
# this *is* directional ablation at every layer and site: the logits agree to float rounding.
# `orthogonalisation_equivalence` measures the largest logit difference next to the ablation's own
# effect on the logits (so agreement is not vacuous).

# %%
eq = sl.interventions.orthogonalisation_equivalence(model, refusal.layer(12), harmful[:4])
print(f"n = {len(eq.prompts)} prompts: max |Δlogit| orthogonalised vs ablated = "
      f"{eq.max_dlogit.max():.2e} (logits up to {eq.logit_scale.max():.1f}; the ablation itself "
      f"moves them by up to {eq.ablation_effect.max():.1f})")

# %% [markdown]
# ## SAE feature clamping
#
# `FeatureClamp(sae, features, value=v)` encodes the SAE's site, moves the chosen features to `v`
# and adds only the change of their decoder contribution, so the SAE's reconstruction error is
# kept: clamping nothing leaves the model's output unchanged, bit for bit. Here we clamp the
# feature that separates negative from positive sentiment completions most (as
# `analyses.sae_clamping` does) to twice its largest observed activation.

# %%
import torch  # noqa: E402

sae = sl.sae.load_sae("smollm2-135m-instruct-l12-resid_pre-4608")
sentiment = sl.load_behaviour("sentiment")
batch_prompts = sentiment.eval_prompts[:4]
base = sl.generate(model, batch_prompts, config=cfg).texts
nothing = sl.interventions.FeatureClamp(sae, [], value=0.0)
same = sl.generate(model, batch_prompts, nothing, config=cfg).texts
print("clamping no feature changes nothing:", same == base)

neg = [p.negative for p in sentiment.train]
pos = [p.positive for p in sentiment.train]
asked = [p.prompt for p in sentiment.train]
sel = sl.sae.select_by_activation_diff(model, sae, neg, pos, k=1, domain_prompts=asked,
                                       neutral_prompts=asked)
feature = int(sel.features[0])
acts = sl.extract(model, neg, [12], prompts=asked, read_at="all", show_progress=False)
with torch.no_grad():
    peak = float(sae.encode(acts[12])[:, feature].max())
print(f"feature {feature}: largest activation on negative completions {peak:.2f}")
clamp = sl.interventions.FeatureClamp(sae, [feature], value=2 * peak)
clamped = sl.generate(model, batch_prompts, clamp, config=cfg).texts
for b, c in zip(base[:2], clamped[:2]):
    print(f"  base:    {b[:70]!r}\n  clamped: {c[:70]!r}")

# %% [markdown]
# ## One attention head
#
# `HeadSteer(layer, head, vector)` adds a `d_head` vector to one head's output `z` before the
# output projection, so the block's attention output changes by exactly `vector @ W_O[head]` and
# nothing else in that layer. Here we compare the next-token KL (bits) of the same random
# perturbation written into each of layer 12's nine query heads.

# %%
n_heads, _, d_head = sl.backend.runtime.attention_shape(model)
g = torch.Generator().manual_seed(0)
v = torch.randn(d_head, generator=g)
v = v / v.norm() * 5.0
kl = []
for head in range(n_heads):
    res = sl.next_token_kl(model, harmless[:4], sl.interventions.HeadSteer(12, head, v))
    kl.append({"head": head, "KL (bits)": res.mean})
display(pd.DataFrame(kl))

# %% [markdown]
# ## Conditional steering (CAST)
#
# `Conditional(inner, condition, threshold)` applies `inner` only to rows whose prompt matches the
# condition direction: cosine similarity of the prompt's mean activation at the condition layer
# with the condition vector, above a threshold chosen on the train split. As in CAST, the
# condition is read as the mean over the prompt (harmful minus harmless mean activations at layer
# 18), and the behaviour is adding the refusal direction at layer 18, so the model should refuse
# harmful requests more and leave harmless ones alone. The gate is read before the addition at the
# same hook, on the prompt pass, and kept for the whole generation.

# %%
harm_mean = sl.extract_prompts(model, train.harmful, [18], read_at="mean", show_progress=False)
safe_mean = sl.extract_prompts(model, train.harmless, [18], read_at="mean", show_progress=False)
condition = sl.SteeringVector.from_tensors({18: harm_mean[18].mean(0) - safe_mean[18].mean(0)},
                                           model=model)
train_sim = sl.interventions.condition_similarity(model, list(train.prompts), condition)
choice = sl.interventions.choose_threshold(train_sim, list(train.labels))
print(f"threshold {choice.threshold:.3f} chosen on n = {len(train_sim)} train prompts")
test_sim = sl.interventions.condition_similarity(model, prompts, condition)
gate = test_sim > choice.threshold
print(f"gate opens on {gate[:n].sum()}/{n} harmful and {gate[n:].sum()}/{n} harmless test prompts")

add = sl.Injection(refusal.layer(18), 2.0)
gated = sl.interventions.Conditional(add, condition, choice.threshold)
rates = []
for label, steering in (("unconditional", add), ("conditional", gated)):
    texts = sl.generate(model, prompts, steering, config=cfg).texts
    for part, sl_ in (("harmful", slice(0, n)), ("harmless", slice(n, None))):
        rate = sl.measures.refusal_rate(texts[sl_])
        rates.append({"addition": label, "prompts": part, "refusal rate": rate.estimate,
                      "95% CI": f"[{rate.low:.2f}, {rate.high:.2f}]", "n": rate.n})
display(pd.DataFrame(rates))

# %% [markdown]
# ## Saving an intervention
#
# Every intervention saves as safetensors + JSON (no pickle) and loads back equal.

# %%
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

with tempfile.TemporaryDirectory() as tmp:
    path = sl.interventions.save_intervention(gated, Path(tmp) / "cast")
    back = sl.interventions.load_intervention(path, model=model)
    print(type(back).__name__, back.threshold == gated.threshold)
