"""Steering arena: streaming generation, the HTTP API on a real server, bad input, hook hygiene,
client disconnects and isolation of concurrent requests (tiny random model)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from scipy.stats import entropy

from steerlens.arena.engine import MAX_STRENGTH, Arena, parse_pairs
from steerlens.arena.server import check_host, make_server, start_in_thread
from steerlens.backend import runtime
from steerlens.cli import main as cli_main
from steerlens.generate import generate, generate_stream
from steerlens.methods import build_vector
from steerlens.pairs import load_behaviour
from steerlens.steer import steer

PROMPT = "Tell me a story"
CUSTOM_PAIRS = "I adore it ||| I loathe it\nWhat a joy ||| What a pain\nQ: mood? ||| great ||| awful"


def hooks(model) -> int:
    return sum(len(h._forward_hooks) + len(h._backward_hooks) for h in model.hook_dict.values())


@pytest.fixture(scope="module")
def arena(tiny):
    return Arena(tiny, "tiny-random")


@pytest.fixture(scope="module")
def server(arena):
    srv = make_server(arena, "127.0.0.1", 0)
    start_in_thread(srv)
    yield srv
    srv.shutdown()
    srv.server_close()


def post(server, payload, raw: bytes | None = None, ctype="application/json", host=None):
    """(status, events or error dict) of a POST /api/generate."""
    data = raw if raw is not None else json.dumps(payload).encode()
    req = urllib.request.Request(server.url + "api/generate", data=data,
                                 headers={"Content-Type": ctype}, method="POST")
    if host:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            body = resp.read().decode()
            return resp.status, [json.loads(x) for x in body.splitlines() if x.strip()]
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read().decode())


def request(**kw):
    base = dict(behaviour="sentiment", layer=1, strengths="3, -6", prompt=PROMPT,
                max_new_tokens=12, temperature=0, seed=0)
    base.update(kw)
    return base


def by_type(events, kind):
    return [e for e in events if e["type"] == kind]


# ---------------------------------------------------------------------------- generate_stream
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_stream_matches_generate(tiny, sentiment, temperature):
    vec = build_vector(tiny, sentiment.train, [1], show_progress=False)
    prompts = ["Hello", "Tell me about cats please"]
    kw = dict(max_new_tokens=10, temperature=temperature, seed=3)
    for steering, strength in ((None, None), (vec, 4.0)):
        ref = generate(tiny, prompts, steering, strength, **kw)
        steps = list(generate_stream(tiny, prompts, steering, strength, **kw))
        assert steps[-1].texts == ref.texts
        assert steps[-1].token_ids == ref.tokens
        assert [s.step for s in steps] == list(range(len(steps)))
        for i in range(len(prompts)):  # deltas add up to the text, new ids to the tokens
            assert "".join(s.deltas[i] for s in steps) == ref.texts[i]
            assert all(s.finished[i] for s in steps[-1:])
    assert hooks(tiny) == 0


def test_stream_closed_early_removes_hooks(tiny, sentiment):
    # read_at="mean": at layer 0 (embeddings) the pairs' last tokens coincide, a zero direction
    vec = build_vector(tiny, sentiment.train, [0, 1], read_at="mean", show_progress=False)
    stream = generate_stream(tiny, "Hello", vec, strength=2.0, max_new_tokens=20)
    next(stream)
    assert hooks(tiny) == 2 == runtime.attached_hook_count(tiny)
    stream.close()
    assert hooks(tiny) == 0


def test_stream_bad_input_raises(tiny):
    with pytest.raises(ValueError, match="context length"):
        next(generate_stream(tiny, "x" * 300, max_new_tokens=5))
    assert hooks(tiny) == 0


def test_per_row_strengths_match_separate_runs(tiny, sentiment):
    """The arena's one-batch [0, s1, s2] rows equal separate unsteered / steered generations."""
    vec = build_vector(tiny, sentiment.train, [1], show_progress=False)
    rows = (0.0, 5.0, -8.0)
    with steer(tiny, vec, 1.0) as st:
        st.set_strength(0, rows)
        batched = list(generate_stream(tiny, [PROMPT] * 3, st, max_new_tokens=12))[-1]
    assert batched.texts[0] == generate(tiny, PROMPT, max_new_tokens=12).texts[0]
    for i, s in enumerate(rows[1:], 1):
        assert batched.texts[i] == generate(tiny, PROMPT, vec, strength=s,
                                            max_new_tokens=12).texts[0]
    assert batched.texts[1] != batched.texts[0]


# ---------------------------------------------------------------------------- pairs and hosts
def test_parse_pairs():
    cs = parse_pairs(CUSTOM_PAIRS + "\n\n")
    assert len(cs) == 3 and cs.pairs[2].prompt == "Q: mood?" and cs.pairs[0].negative == "I loathe it"
    for bad, msg in [("", "No contrast pairs"), ("  \n ", "No contrast pairs"),
                     ("only one side", "line 1"), ("a ||| ", "line 1"), ("a|||b|||c|||d", "line 1")]:
        with pytest.raises(ValueError, match=msg):
            parse_pairs(bad)


def test_check_host_and_cli_refuse_remote_without_flag(capsys):
    assert check_host("127.0.0.1", False) and check_host("localhost", False)
    with pytest.raises(ValueError, match="--allow-remote"):
        check_host("0.0.0.0", False)
    assert check_host("0.0.0.0", True) is False
    assert cli_main(["arena", "--host", "0.0.0.0", "--model", "tiny-random"]) == 2
    assert "--allow-remote" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the HTTP API
def test_static_page_and_options(server, tiny):
    html = urllib.request.urlopen(server.url, timeout=30).read().decode()
    assert '<script src="/static/app.js">' in html and 'id="panes"' in html
    for name in ("app.js", "style.css"):
        body = urllib.request.urlopen(server.url + "static/" + name, timeout=30).read().decode()
        assert "://" not in body  # everything is served locally, no CDN
    assert "://" not in html
    opts = json.loads(urllib.request.urlopen(server.url + "api/options", timeout=30).read())
    assert opts["n_layers"] == 2 and opts["n_ctx"] == tiny.cfg.n_ctx
    assert "sentiment" in opts["behaviours"] and opts["max_strength"] == MAX_STRENGTH
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(server.url + "static/../engine.py", timeout=30)
    assert err.value.code == 404


def test_generate_streams_rows_kl_and_lens(server, tiny, sentiment):
    status, events = post(server, request())
    assert status == 200
    kinds = [e["type"] for e in events]
    assert kinds[:3] == ["vector", "lens", "start"] and kinds[-1] == "done"
    steps = by_type(events, "step")
    assert 1 <= len(steps) <= 12 and len(steps[0]["texts"]) == 3
    done = events[-1]
    assert done["texts"] == steps[-1]["texts"] and all(done["texts"])
    # independent check of the rows: separate generate() calls
    vec = build_vector(tiny, sentiment.train, [1], show_progress=False)
    assert done["texts"][0] == generate(tiny, PROMPT, max_new_tokens=12).texts[0]
    assert done["texts"][2] == generate(tiny, PROMPT, vec, strength=-6.0,
                                        max_new_tokens=12).texts[0]
    lens = by_type(events, "lens")[0]
    vals = [t["value"] for t in lens["promoted"]]
    assert vals == sorted(vals, reverse=True) and len(vals) == 12
    # float32 norm of the same 64-vector, maybe summed in another order: ~1e-7 relative
    assert by_type(events, "vector")[0]["norm"] == pytest.approx(float(vec[1].norm()), rel=1e-5)
    # per-token KL against an independent computation: two full forwards + scipy entropy
    kl = {e["row"]: e for e in by_type(events, "kl")}
    assert sorted(kl) == [1, 2]
    row = kl[2]
    batch = runtime.encode(tiny, [done["texts"][2]], [PROMPT], chat=True)
    with torch.no_grad():
        base = runtime.forward(tiny, batch)[0].double().softmax(-1).numpy()
        with steer(tiny, vec, -6.0):
            steered = runtime.forward(tiny, batch)[0].double().softmax(-1).numpy()
    head = len(runtime.prompt_ids(tiny, PROMPT, True))
    want = [entropy(base[t], steered[t], base=2) for t in range(head - 1, batch.tokens.shape[1] - 1)]
    assert len(row["tokens"]) == len(row["bits"]) == len(want)
    # KV-cached float32 decode vs two full forwards: logits ~1e-6 relative; a KL between close
    # distributions amplifies that to ~1e-5 relative (rtol 1e-4), atol for KLs near 0
    np.testing.assert_allclose(row["bits"], want, rtol=1e-4, atol=1e-7)
    assert row["mean"] == pytest.approx(float(np.mean(want)), rel=1e-4)
    assert max(want) > 0
    assert hooks(tiny) == 0


def _project_out(direction):
    unit = direction / direction.norm()

    def hook(act, hook):
        return act - (act @ unit)[..., None] * unit

    return hook


def test_ablation_row_matches_an_independent_projection(server, tiny, sentiment):
    status, events = post(server, request(ablate=True))
    assert status == 200 and events[-1]["type"] == "done"
    start = by_type(events, "start")[0]
    assert start["kinds"] == ["baseline", "add", "add", "ablate"]
    assert start["strengths"] == [0.0, 3.0, -6.0, 0.0]
    texts = events[-1]["texts"]
    vec = build_vector(tiny, sentiment.train, [1], show_progress=False)
    # the added rows are unchanged by the extra ablation row in the batch
    assert texts[2] == generate(tiny, PROMPT, vec, strength=-6.0, max_new_tokens=12).texts[0]
    # independent ablation: a hand-written projection hook at every layer and residual site,
    # greedy decoding by full forwards (no KV cache, no steerlens steering code)
    names = [f"blocks.{la}.hook_{c}" for la in range(2)
             for c in ("resid_pre", "resid_mid", "resid_post")]
    hook = _project_out(vec[1].double().float())
    ids = runtime.prompt_ids(tiny, PROMPT, True)
    head = len(ids)
    with torch.no_grad():
        for _ in range(12):
            logits = tiny.run_with_hooks(torch.tensor([ids]), fwd_hooks=[(n, hook) for n in names])
            nxt = int(logits[0, -1].argmax())
            ids.append(nxt)
            if nxt in runtime.eos_ids(tiny):
                break
    want = runtime.decode(tiny, [t for t in ids[head:] if t not in runtime.eos_ids(tiny)])
    assert texts[3] == want
    kl = {e["row"]: e for e in by_type(events, "kl")}
    assert sorted(kl) == [1, 2, 3] and kl[3]["kind"] == "ablate"
    assert hooks(tiny) == 0


def test_custom_pairs_request(server, tiny):
    status, events = post(server, request(behaviour="custom", pairs=CUSTOM_PAIRS, strengths="10"))
    assert status == 200 and events[-1]["type"] == "done"
    assert by_type(events, "vector")[0]["n_pairs"] == 3
    assert len(events[-1]["texts"]) == 2
    assert hooks(tiny) == 0


BAD = [
    (dict(behaviour="custom", pairs=""), "No contrast pairs"),
    (dict(behaviour="custom", pairs="   \n  "), "No contrast pairs"),
    (dict(behaviour="custom", pairs="no separator here"), "Pair line 1"),
    (dict(layer=999), "valid layers are 0..1"),
    (dict(layer=-1), "valid layers are 0..1"),
    (dict(layer="two"), "Layer must be an integer"),
    (dict(layer=1.5), "Layer must be an integer"),
    (dict(strengths="1e6"), f"at most {MAX_STRENGTH:g}"),
    (dict(strengths="-250"), "valid range"),
    (dict(strengths="3, big"), "must be a number"),
    (dict(strengths="nan"), "finite"),
    (dict(strengths=""), "at least one strength"),
    (dict(strengths="1,2,3,4,5"), "At most 4 strengths"),
    (dict(prompt="x" * 400), "context length of 256"),
    (dict(prompt="x" * 200, max_new_tokens=100), "over the model's context length"),
    (dict(prompt="   "), "prompt"),
    (dict(max_new_tokens=0), "Max new tokens must be in 1..128"),
    (dict(max_new_tokens="lots"), "Max new tokens must be an integer"),
    (dict(temperature=-1), "Temperature must be in"),
    (dict(seed=-3), "Seed must be in"),
    (dict(behaviour="happiness"), "Valid behaviours are ['calendar_json'"),
    (dict(chat="yes"), "chat must be"),
    (dict(ablate="yes"), "ablate must be true or false"),
]


@pytest.mark.parametrize("change,message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_gets_clear_error_and_never_runs(server, arena, tiny, change, message):
    runs = arena.n_runs
    status, body = post(server, request(**change))
    assert status == 400
    assert message in body["error"]
    assert arena.n_runs == runs  # refused before the model ran
    assert hooks(tiny) == 0


def test_malformed_requests(server, tiny):
    assert post(server, None, raw=b"{not json")[0] == 400
    status, body = post(server, None, raw=b"[1, 2]")
    assert status == 400 and "JSON object" in body["error"]
    assert post(server, request(), ctype="text/plain")[0] == 415
    status, body = post(server, request(), host="evil.example:8765")
    assert status == 403 and "localhost" in body["error"]
    assert hooks(tiny) == 0


def test_client_disconnect_mid_stream_cleans_up(server, arena, tiny):
    aborted = arena.n_aborted
    body = json.dumps(request(max_new_tokens=120, prompt="Hi")).encode()
    sock = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=60)
    sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                 + body)
    stream = sock.makefile("rb")
    assert b" 200 " in stream.readline()
    while stream.readline().strip():  # headers
        pass
    while json.loads(stream.readline())["type"] != "step":
        pass
    stream.close()
    sock.close()  # the user closed the tab mid-generation
    deadline = time.monotonic() + 60
    while arena.n_aborted == aborted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert arena.n_aborted == aborted + 1  # the run was stopped early, not run to the end
    assert arena.lock.acquire(timeout=60)
    arena.lock.release()
    assert hooks(tiny) == 0
    state = json.loads(urllib.request.urlopen(server.url + "api/status", timeout=30).read())
    assert state["hooks_attached"] == 0 and not state["busy"]
    status, events = post(server, request(max_new_tokens=4))  # and the server still works
    assert status == 200 and events[-1]["type"] == "done"


def test_concurrent_requests_are_isolated(server, arena, tiny):
    """Two users at once each get exactly what they get alone (their vectors never mix)."""
    reqs = [request(strengths="9", max_new_tokens=16),
            request(behaviour="custom", pairs=CUSTOM_PAIRS, strengths="-12", max_new_tokens=16)]
    alone = [post(server, r)[1] for r in reqs]
    results: list = [None, None]

    def worker(i):
        results[i] = post(server, reqs[i])

    arena.lock.acquire()  # hold the model so both requests are in flight together
    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        assert all(r is None for r in results)
    finally:
        arena.lock.release()
    for t in threads:
        t.join(120)
    for i in range(2):
        status, events = results[i]
        assert status == 200 and events[0]["type"] == "queued"
        assert events[-1]["texts"] == alone[i][-1]["texts"]
        # mixed-up vectors would move KL by O(1); float32-path tolerance loses nothing
        np.testing.assert_allclose(by_type(events, "kl")[0]["bits"],
                                   by_type(alone[i], "kl")[0]["bits"], rtol=1e-5, atol=1e-7)
    assert alone[0][-1]["texts"][1] != alone[1][-1]["texts"][1]
    assert hooks(tiny) == 0


def test_behaviour_vector_cache_is_read_only(arena, tiny):
    req = arena.parse_request(request())
    list(arena.run(req))
    cached = arena._vectors[("sentiment", 1)]
    fresh = build_vector(tiny, load_behaviour("sentiment").train, [1], show_progress=False)
    assert cached.layers == [1]
    torch.testing.assert_close(cached[1], fresh[1], rtol=0, atol=0)  # same inputs, same ops
