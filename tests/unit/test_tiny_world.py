"""The tiny world: data, prompts, text side, pretraining determinism, adapter."""
from __future__ import annotations

import json

import pytest
import torch

from pcpo.tiny import data as tdata
from pcpo.tiny import prompts as tprompts
from pcpo.tiny.pretrain import TinyPretrainConfig, pretrain
from pcpo.tiny.text import build_text_encoder, build_tokenizer, encode_text, tokenize


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- data


def test_split_is_fixed_stratified_and_scaled():
    train, held = tdata.load_split("train"), tdata.load_split("heldout")
    assert len(train) + len(held) == 1797
    assert abs(len(held) / 1797 - 0.2) < 0.01
    assert train.images.shape[1:] == (1, 16, 16) and train.images.dtype == torch.float32
    assert train.images.min() >= -1.0 and train.images.max() <= 1.0
    # every class on both sides, in about the same proportions
    for k in range(10):
        assert (held.labels == k).sum() >= 30
    # the split is a function of its seed only
    again = tdata._split_indices.__wrapped__(0, 0.2)
    assert (again[1] == tdata._split_indices(0, 0.2)[1]).all()
    assert set(train.thickness_word) == {"", "thin", "bold"}
    assert set(train.slant_word) == {"", "upright", "slanted"}


def test_attributes_measure_what_they_say():
    ones = torch.zeros(1, 1, 8, 8)
    ones[..., 2:6, 3:5] = 1.0
    assert tdata.measure_thickness(ones).item() == pytest.approx(8 / 64)
    # a stroke leaning right (top to the right of the bottom) has positive slant
    lean = torch.zeros(1, 1, 8, 8)
    for r in range(8):
        lean[0, 0, r, 7 - r // 2 - 2] = 1.0
    assert tdata.measure_slant(lean).item() > 0.2
    assert tdata.measure_slant(tdata.resize(ones, 16)).abs().item() < 1e-6


def test_offgrid_noise_is_zero_on_real_digits():
    held = tdata.load_split("heldout")
    assert tdata.offgrid_noise(held.unit_images()).max() < 1e-4
    noisy = (held.unit_images()[:4] + 0.2 * torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0)))
    assert (tdata.offgrid_noise(noisy.clamp(0, 1)) > 3.0).all()


# --------------------------------------------------------------------------- prompts


def test_prompts_parse_and_sets():
    for k in range(10):
        for t in range(len(tprompts.TEMPLATES)):
            p = tprompts.format_prompt(k, t, ("bold", "slanted"))
            assert tprompts.parse_digit(p) == k
    assert tprompts.parse_digit("A Drawing of the number 7") == 7
    assert tprompts.parse_digit("a handwritten digit") is None
    assert tprompts.format_prompt(3, 0, ("upright",)).startswith("an upright")

    ev = tprompts.eval_prompts(3)
    assert ev == tprompts.eval_prompts(3) and len(ev) == 30
    assert [m["digit"] for _, m in ev] == [k for k in range(10) for _ in range(3)]
    tr = tprompts.training_prompts()
    assert len(tr) == 10 * len(tprompts.TEMPLATES)
    assert all(tprompts.parse_digit(p) == m["digit"] for p, m in tprompts.training_prompts(attributes=True))

    g = torch.Generator().manual_seed(0)
    caps = tprompts.captions([1] * 400, ["bold"] * 400, [""] * 400, g, attribute_prob=0.5, dropout=0.1)
    empty = sum(c == "" for c in caps) / 400
    assert 0.04 < empty < 0.2
    assert any("bold" in c for c in caps) and any(c and "bold" not in c for c in caps)


# --------------------------------------------------------------------------- text side


def test_tokenizer_and_text_encoder_round_trip(tmp_path):
    from transformers import CLIPTextModel, PreTrainedTokenizerFast

    tok = build_tokenizer()
    prompts = ["a bold slanted drawing of the number 7", "", "an upright handwritten nine", "a zebra"]
    ids = tokenize(tok, prompts)
    assert ids.shape == (4, 12)
    assert ids[1, :2].tolist() == [tok.bos_token_id, tok.eos_token_id] and (ids[1, 2:] == tok.pad_token_id).all()
    assert tok.unk_token_id in ids[3].tolist()  # an unknown word maps to [UNK]
    enc = build_text_encoder(tok, hidden_size=16, num_layers=1, num_heads=2, seed=0).eval()
    assert enc.config.eos_token_id == tok.eos_token_id != 2  # CLIP pools at the first EOS id
    assert enc.config.vocab_size == len(tok)

    tok.save_pretrained(tmp_path / "tokenizer")
    enc.save_pretrained(tmp_path / "text_encoder")
    tok2 = PreTrainedTokenizerFast.from_pretrained(tmp_path / "tokenizer")
    enc2 = CLIPTextModel.from_pretrained(tmp_path / "text_encoder").eval()
    assert torch.equal(tokenize(tok2, prompts), ids)
    with torch.no_grad():
        a, b = encode_text(tok, enc, prompts), encode_text(tok2, enc2, prompts)
        assert torch.equal(a, b)
        pooled = enc(input_ids=ids).pooler_output
        eos_pos = (ids == tok.eos_token_id).int().argmax(1)
        assert torch.equal(pooled, a[torch.arange(4), eos_pos])


# --------------------------------------------------------------------------- pretraining


def _weights(path):
    from safetensors.torch import load_file

    return {**load_file(str(path / "unet" / "diffusion_pytorch_model.safetensors")),
            **{f"te.{k}": v for k, v in load_file(str(path / "text_encoder" / "model.safetensors")).items()}}


@pytest.mark.parametrize("kind", ["eps", "flow"])
def test_pretrain_is_deterministic_per_seed(tmp_path, kind):
    cfg = TinyPretrainConfig.smoke(steps=3)
    a = pretrain(kind, tmp_path / "a", cfg, seed=1)
    b = pretrain(kind, tmp_path / "b", cfg, seed=1)
    c = pretrain(kind, tmp_path / "c", cfg, seed=2)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    meta = json.loads((a / "pcpo_model.json").read_text())
    assert meta["kind"] == kind and meta["resolution"] == 16
    log = json.loads((a / "pretrain_log.json").read_text())
    assert len(log["losses"]) == 3 and all(torch.isfinite(torch.tensor(log["losses"])))
    # written atomically: nothing but the three outputs is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]
    sched = json.loads((a / "scheduler" / "scheduler_config.json").read_text())
    if kind == "eps":
        assert sched["_class_name"] == "DDIMScheduler"
        assert sched["steps_offset"] == 1 and sched["set_alpha_to_one"] is False
    else:
        assert sched["_class_name"] == "FlowMatchEulerDiscreteScheduler" and sched["shift"] == cfg.flow_shift


def test_pretrain_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"pretrain\.eps\.stepz"):
        TinyPretrainConfig.from_dict({"stepz": 3}, where="pretrain.eps")
    cfg = TinyPretrainConfig.from_dict({"steps": 7, "block_out_channels": [8, 16, 16]})
    assert cfg.steps == 7 and cfg.block_out_channels == (8, 16, 16)
    assert TinyPretrainConfig.from_dict(cfg.to_dict()) == cfg
    flow = TinyPretrainConfig.from_dict({"lr": 5e-4}, kind="flow")
    assert flow.lr == 5e-4 and flow.steps == TinyPretrainConfig.for_kind("flow").steps
    assert TinyPretrainConfig.for_kind("eps").steps > flow.steps  # the eps model needs more steps


def test_pretrain_cli_reads_yaml_sections(tmp_path):
    from pcpo.tiny.cli import PretrainConfigError, read_pretrain_section

    f = tmp_path / "exp.yaml"
    f.write_text("model: {kind: tiny-eps}\npretrain:\n  eps: {steps: 5}\n  classifier: {epochs: 2}\n")
    assert read_pretrain_section(str(f), "eps") == {"steps": 5}
    assert read_pretrain_section(str(f), "flow") == {}
    f.write_text("pretrain:\n  epz: {steps: 5}\n")
    with pytest.raises(PretrainConfigError, match=r"pretrain\.epz"):
        read_pretrain_section(str(f), "eps")


def test_pretrain_cli_subcommand(tmp_path):
    import argparse

    from pcpo.tiny.cli import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["pretrain", "--model", "flow", "--out", str(tmp_path / "m"), "--seed", "3"])
    assert args.func.__name__ == "_run" and args.model == "flow" and args.seed == 3


# --------------------------------------------------------------------------- adapter


@pytest.fixture(scope="module")
def random_models(tiny_models):
    """The session's tiny random eps and flow models (tests/conftest.py), built once for the run."""
    return tiny_models


@pytest.mark.parametrize("kind", ["eps", "flow"])
def test_adapter_loads_and_predicts(random_models, kind):
    from pcpo.models import load_model

    a = load_model(f"tiny-{kind}", str(random_models[kind]))
    assert a.family == ("ddim" if kind == "eps" else "flow")
    assert a.latent_shape() == (1, 16, 16)
    cond = a.encode_prompts(["a handwritten digit seven", "digit 3", ""])
    assert cond["encoder_hidden_states"].shape[:2] == (3, 12)
    assert not cond["encoder_hidden_states"].requires_grad
    x = torch.randn(3, 1, 16, 16)
    t = torch.tensor([999, 500, 1]) if kind == "eps" else torch.tensor([1.0, 0.5, 0.01])
    out = a.predict(x, t, cond)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    g = a.predict_guided(x, t, cond, a.null_cond(3), 3.0)
    assert g.shape == x.shape
    img = a.decode(torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 5))
    assert img.flatten().tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert set(a.lora_target_modules) == {"to_q", "to_k", "to_v", "to_out.0"}
    names = [n for n, _ in a.denoiser.named_modules()]
    assert all(any(n.endswith(t) for n in names) for t in a.lora_target_modules)

    spec = a.schedule()
    if kind == "eps":
        assert spec.family == "ddim" and spec.alphas_cumprod.shape == (1000,)
        assert spec.steps_offset == 1 and spec.final_alpha_cumprod == pytest.approx(spec.alphas_cumprod[0].item())
    else:
        assert spec.family == "flow" and spec.shift == 3.0


def test_adapter_kind_mismatch_and_missing_folder(random_models, tmp_path):
    from pcpo.models import load_model

    with pytest.raises(ValueError, match="tiny-flow"):
        load_model("tiny-eps", str(random_models["flow"]))
    with pytest.raises(FileNotFoundError, match="pcpo pretrain"):
        load_model("tiny-eps", str(tmp_path / "nowhere"))


def test_adapter_save_round_trip_merges_lora(random_models, tmp_path):
    from peft import LoraConfig

    from pcpo.models import load_model

    a = load_model("tiny-eps", str(random_models["eps"]))
    a.denoiser.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=a.lora_target_modules))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in a.denoiser.named_parameters():
            if "lora_B" in n:
                p.normal_()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([700, 30])
    cond = a.encode_prompts(["digit 4", "the number two"])
    with torch.no_grad():
        want = a.predict(x, t, cond)
    a.save_pretrained(tmp_path / "saved")
    b = load_model("tiny-eps", str(tmp_path / "saved"))
    base = load_model("tiny-eps", str(random_models["eps"]))
    with torch.no_grad():
        assert torch.allclose(b.predict(x, t, cond), want, atol=1e-5)
        assert not torch.allclose(base.predict(x, t, cond), want, atol=1e-3)
        # the UNet (without LoRA) round-trips exactly
        base.save_pretrained(tmp_path / "plain")
        again = load_model("tiny-eps", str(tmp_path / "plain"))
        assert torch.equal(again.predict(x, t, cond), base.predict(x, t, cond))


def test_adapter_samples_with_project_sampler(random_models):
    from pcpo.models import load_model
    from pcpo.rollout import make_grid, rollout

    a = load_model("tiny-flow", str(random_models["flow"]))
    grid = make_grid(a.schedule(), sampler="flow-dance", steps=3, noise_level=0.3)
    traj = rollout(a, ["digit 1", "digit 2"], grid, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert traj.images.shape == (2, 1, 16, 16)
    assert traj.images.min() >= 0.0 and traj.images.max() <= 1.0
