"""Loading SAEs (shipped, SAELens-format directories, pretrained releases) and checking them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from steerlens.sae import SAEHubUnavailable, check_sae, list_shipped_saes, load_sae
from steerlens.sae.train import save_sae
from steerlens.sites import Site

HOOK = "blocks.1.hook_resid_pre"


def make_sae(d_in=64, d_sae=256, hook=HOOK, seed=0):
    from sae_lens import SAE

    torch.manual_seed(seed)
    sae = SAE.from_dict({"architecture": "standard", "d_in": d_in, "d_sae": d_sae,
                         "metadata": {"hook_name": hook, "model_name": "tiny-random"}})
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.1)
    return sae


@pytest.fixture
def saved(tmp_path) -> tuple[Path, object]:
    sae = make_sae()
    return save_sae(sae, tmp_path / "sae"), sae


def test_roundtrip_and_saelens_loader_agree(saved):
    from sae_lens import SAE

    path, sae = saved
    ours = load_sae(path)
    theirs = SAE.load_from_disk(str(path))  # SAELens' own loader, independently
    x = torch.randn(5, 64)
    for other in (ours, theirs):
        for k, v in sae.state_dict().items():
            assert torch.equal(other.state_dict()[k], v)
    # identical weights (checked above) and ops: float32 rounding at most
    torch.testing.assert_close(ours.encode(x), sae.encode(x), rtol=1e-6, atol=1e-6)
    assert ours.cfg.metadata.hook_name == HOOK


def test_topk_decoder_norms_folded_on_load(tmp_path):
    """A TopK SAE saved with rescale_acts_by_decoder_norm loads with the norms folded: unit
    decoder rows, and the same codes and reconstructions as SAELens' own loader gives."""
    from sae_lens import SAE

    torch.manual_seed(1)
    sae = SAE.from_dict({"architecture": "topk", "k": 8, "d_in": 64, "d_sae": 256,
                         "rescale_acts_by_decoder_norm": True,
                         "metadata": {"hook_name": HOOK, "model_name": "tiny-random"}})
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.1)
        sae.W_dec.mul_(torch.rand(256, 1) * 3 + 0.2)
    path = save_sae(sae, tmp_path / "topk")
    ours, theirs = load_sae(path), SAE.load_from_disk(str(path))
    assert theirs.cfg.rescale_acts_by_decoder_norm and not ours.cfg.rescale_acts_by_decoder_norm
    torch.testing.assert_close(ours.W_dec.norm(dim=-1), torch.ones(256))
    x = torch.randn(20, 64)
    with torch.no_grad():  # float32 rounding of the folded products: 1e-5
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.decode(ours.encode(x)), theirs.decode(theirs.encode(x)),
                                   rtol=1e-5, atol=1e-5)


def test_fp16_save_roundtrip(tmp_path):
    sae = make_sae()
    path = save_sae(sae, tmp_path / "h", dtype=torch.float16)
    assert json.loads((path / "cfg.json").read_text())["dtype"] == "float16"
    back = load_sae(path)
    assert back.W_dec.dtype == torch.float32  # load_sae upcasts to the requested dtype
    torch.testing.assert_close(back.W_dec, sae.W_dec.half().float(), rtol=0, atol=0)  # exact
    assert sae.W_dec.dtype == torch.float32  # saving did not change the caller's SAE


def test_check_sae_site(tiny, saved):
    _, sae = saved
    assert check_sae(tiny, sae) == Site(1, "resid_pre")
    assert check_sae(tiny, make_sae(hook="blocks.0.hook_mlp_out")) == Site(0, "mlp_out")


def test_check_sae_d_in_mismatch(tiny):
    with pytest.raises(ValueError, match="d_in is 32 .* width 64"):
        check_sae(tiny, make_sae(d_in=32, d_sae=64))


def test_check_sae_unknown_hook(tiny):
    with pytest.raises(ValueError, match=r"does not exist in the model.*blocks\.<0\.\.1>"):
        check_sae(tiny, make_sae(hook="blocks.7.hook_resid_pre"))
    with pytest.raises(ValueError, match="not a residual-stream site"):
        check_sae(tiny, make_sae(hook="blocks.0.attn.hook_z"))
    with pytest.raises(ValueError, match="names no hook"):
        check_sae(tiny, make_sae(hook=None))


def test_truncated_weights_named(saved):
    path, _ = saved
    w = path / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ValueError, match="sae_weights.safetensors.*corrupt or truncated"):
        load_sae(path)


def test_bad_cfg_named(saved):
    path, _ = saved
    (path / "cfg.json").write_text("{\"d_in\": 64, ")
    with pytest.raises(ValueError, match="cfg.json is not valid JSON"):
        load_sae(path)
    (path / "cfg.json").write_text(json.dumps({"d_in": 64}))
    with pytest.raises(ValueError, match="cfg.json lacks required keys"):
        load_sae(path)


def test_cfg_weights_shape_mismatch(saved):
    path, _ = saved
    cfg = json.loads((path / "cfg.json").read_text())
    (path / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 128}))
    with pytest.raises(ValueError, match="W_enc has shape"):
        load_sae(path)


def test_missing_files_and_unknown_names(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no cfg.json"):
        load_sae(tmp_path / "empty")
    with pytest.raises(ValueError, match="neither a shipped SAE"):
        load_sae("no-such-sae")


def test_unknown_release_and_id_offline():
    with pytest.raises(ValueError, match="Closest releases: .*gpt2-small-res-jb"):
        load_sae("gpt2-small-res-j", "blocks.8.hook_resid_pre")
    with pytest.raises(ValueError, match=r"ID 'blocks\.99\.hook_resid_pre' not found.*Valid IDs"):
        load_sae("gpt2-small-res-jb", "blocks.99.hook_resid_pre")


def test_valid_release_without_hub_says_so(monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(SAEHubUnavailable, match="hub"):
        load_sae("gpt2-small-res-jb", "blocks.8.hook_resid_pre")


def test_list_shipped_saes_are_loadable():
    for name in list_shipped_saes():
        assert (Path(__file__).resolve().parents[1] / "steerlens" / "data" / "saes" / name
                / "sae_weights.safetensors").is_file()


SHIPPED = "smollm2-135m-instruct-l12-resid_pre-4608"
# Explained variance of the shipped SAE on the first 8x127 tokens of heldout.txt (fp32 model) was
# 0.463 when it was shipped (results/sae_training/results.json, "heldout_check"); 0.06 margin.
SHIPPED_MIN_EV = 0.40


@pytest.mark.embedded
def test_shipped_sae_on_smol(smol):
    from steerlens.backend import runtime
    from steerlens.sae.activations import site_activations
    from steerlens.sae.train import sae_metrics

    assert SHIPPED in list_shipped_saes()
    sae = load_sae(SHIPPED)
    site = check_sae(smol, sae)
    assert site == Site(12, "resid_pre") and sae.cfg.d_sae == 4608 and sae.cfg.d_in == 576
    text = (Path(__file__).resolve().parents[1] / "steerlens" / "data" / "heldout.txt").read_text()
    ids = runtime.tokenizer(smol)(text, add_special_tokens=False)["input_ids"]
    bos = runtime.tokenizer(smol).bos_token_id
    rows = [[bos] + ids[i * 127:(i + 1) * 127] for i in range(min(8, len(ids) // 127))]
    acts = site_activations(smol, torch.tensor(rows), site)[:, 1:].reshape(-1, 576)  # fp32 model
    m = sae_metrics(sae, acts)
    assert m.n_tokens == len(rows) * 127
    assert m.explained_variance > SHIPPED_MIN_EV
    assert 1 < m.l0 < 1000
    shipped = Path(__file__).resolve().parents[1] / "steerlens" / "data" / "saes" / SHIPPED
    prov = json.loads((shipped / "corpus_provenance.json").read_text())
    assert prov["n_tokens"] == sum(r["tokens"] for r in prov["records"]) >= 1_000_000
    meta = json.loads((shipped / "metrics.json").read_text())
    assert meta["n_train_tokens"] >= 1_000_000
