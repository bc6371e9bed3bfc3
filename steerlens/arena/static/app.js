// steerlens arena front end: reads the form, POSTs /api/generate and renders the NDJSON event
// stream (vector info, logit lens, token-by-token panes, per-token KL). Model text is only ever
// inserted with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let options = null;
let controller = null;
let klRows = [];

function setStatus(text, state) {
  const s = $("status");
  s.textContent = text;
  s.dataset.state = state;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
  setStatus("Error.", "error");
}

function clearError() {
  const box = $("error");
  box.textContent = "";
  box.hidden = true;
}

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

async function loadOptions() {
  try {
    const resp = await fetch("/api/options");
    options = await resp.json();
  } catch (err) {
    showError("Could not reach the arena server: " + err);
    return;
  }
  $("model-name").textContent = `model: ${options.model} · ${options.n_layers} layers · context ${options.n_ctx} tokens`;
  const sel = $("behaviour");
  for (const b of options.behaviours) sel.appendChild(el("option", { value: b }, b));
  sel.appendChild(el("option", { value: options.custom }, "custom pairs..."));
  sel.value = options.behaviours.includes("sentiment") ? "sentiment" : options.behaviours[0];
  $("layer").value = String(options.default_layer);
  $("layer-range").textContent = `(0..${options.n_layers - 1})`;
  $("strength-range").textContent = `(up to ${options.max_strengths}, each in ±${options.max_strength})`;
  $("chat").checked = options.chat_default;
  onBehaviour();
  setStatus("Ready.", "idle");
}

function onBehaviour() {
  const b = $("behaviour").value;
  const custom = options && b === options.custom;
  $("pairs-label").hidden = !custom;
  $("behaviour-desc").textContent = custom
    ? "Your pairs are turned into a mean-difference vector at the chosen layer."
    : (options && options.descriptions[b]) || "";
}

function request() {
  return {
    behaviour: $("behaviour").value,
    pairs: $("pairs").value,
    layer: $("layer").value,
    strengths: $("strengths").value,
    prompt: $("prompt").value,
    max_new_tokens: $("max-new-tokens").value,
    temperature: $("temperature").value,
    seed: $("seed").value,
    chat: $("chat").checked,
    ablate: $("ablate").checked,
  };
}

function paneTitle(kind, s) {
  if (kind === "baseline") return "baseline (strength 0)";
  if (kind === "ablate") return "ablated · direction removed at every layer";
  return `steered · strength ${s}`;
}

function makePanes(strengths, kinds) {
  const panes = $("panes");
  panes.replaceChildren();
  strengths.forEach((s, row) => {
    const kind = kinds ? kinds[row] : (row === 0 ? "baseline" : "add");
    const cls = kind === "baseline" ? "pane baseline" : (kind === "ablate" ? "pane ablated" : "pane steered");
    const pane = el("div", { class: cls, id: `pane-${row}`, "data-row": String(row),
      "data-kind": kind });
    pane.appendChild(el("h2", {}, paneTitle(kind, s)));
    pane.appendChild(el("div", { class: "text running", id: `text-${row}` }));
    if (row > 0) pane.appendChild(el("div", { class: "kl", id: `kl-${row}` }));
    panes.appendChild(pane);
  });
}

function renderLens(ev) {
  for (const [key, id] of [["promoted", "lens-promoted"], ["suppressed", "lens-suppressed"]]) {
    const list = $(id);
    list.replaceChildren();
    for (const t of ev[key]) {
      const li = el("li");
      li.appendChild(el("span", {}, JSON.stringify(t.token)));
      li.appendChild(el("span", { class: "val" }, t.value.toFixed(3)));
      list.appendChild(li);
    }
  }
  $("lens").hidden = false;
}

function renderKL() {
  const top = Math.max(1e-9, ...klRows.filter((r) => r.max !== null).map((r) => r.max));
  for (const ev of klRows) {
    const box = $(`kl-${ev.row}`);
    if (!box) continue;
    box.replaceChildren();
    if (!ev.tokens.length) {
      box.appendChild(el("p", { class: "muted small" }, "No tokens generated: nothing to measure."));
      continue;
    }
    const legend = el("div", { class: "kl-legend muted small" });
    legend.appendChild(el("span", {}, `per-token KL(base‖steered), mean ${ev.mean.toFixed(3)} bits · 0`));
    legend.appendChild(el("span", { class: "bar" }));
    legend.appendChild(el("span", {}, `${top.toFixed(3)} bits`));
    box.appendChild(legend);
    const line = el("div", { class: "tokens" });
    ev.tokens.forEach((tok, i) => {
      const bits = ev.bits[i];
      const span = el("span", { class: "tok", title: `${JSON.stringify(tok)}: ${bits.toFixed(4)} bits`,
        "data-bits": bits.toFixed(6) }, tok);
      span.style.backgroundColor = `rgba(214, 39, 40, ${(0.85 * Math.min(1, bits / top)).toFixed(3)})`;
      line.appendChild(span);
    });
    box.appendChild(line);
  }
}

function handle(ev) {
  switch (ev.type) {
    case "queued":
      setStatus(ev.message, "queued");
      break;
    case "vector":
      $("vector-info").textContent = `vector: ${ev.source} · layer ${ev.layer} · ${ev.component} · ` +
        `${ev.method} over ${ev.n_pairs} pairs · norm ${ev.norm.toFixed(3)}`;
      setStatus("Vector ready; generating...", "running");
      break;
    case "lens":
      renderLens(ev);
      break;
    case "start":
      makePanes(ev.strengths, ev.kinds);
      break;
    case "step":
      ev.texts.forEach((t, row) => {
        const node = $(`text-${row}`);
        if (!node) return;
        node.textContent = t;
        if (ev.finished[row]) node.classList.remove("running");
      });
      setStatus(`Generating... token ${ev.step + 1}`, "running");
      break;
    case "kl":
      klRows.push(ev);
      renderKL();
      break;
    case "done":
      document.querySelectorAll(".pane .text").forEach((n) => n.classList.remove("running"));
      setStatus(`Done in ${ev.elapsed_s.toFixed(2)} s (${ev.n_rows} rows in one batch).`, "done");
      break;
    case "error":
      showError(ev.message);
      break;
  }
}

async function run(evt) {
  evt.preventDefault();
  if (controller) return;
  clearError();
  klRows = [];
  $("lens").hidden = true;
  $("vector-info").textContent = "";
  $("panes").replaceChildren();
  setStatus("Sending...", "running");
  controller = new AbortController();
  $("run").disabled = true;
  $("stop").disabled = false;
  try {
    const resp = await fetch("/api/generate", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request()), signal: controller.signal,
    });
    if (!resp.ok) {
      let message = `HTTP ${resp.status}`;
      try { message = (await resp.json()).error || message; } catch (e) { /* keep status */ }
      showError(message);
      return;
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        if (line.trim()) handle(JSON.parse(line));
      }
    }
    if ($("status").dataset.state === "running") showError("The server closed the stream early.");
  } catch (err) {
    if (err.name === "AbortError") setStatus("Stopped.", "stopped");
    else showError("Request failed: " + err);
  } finally {
    controller = null;
    $("run").disabled = false;
    $("stop").disabled = true;
  }
}

$("controls").addEventListener("submit", run);
$("behaviour").addEventListener("change", onBehaviour);
$("stop").addEventListener("click", () => controller && controller.abort());
loadOptions();
