"""The full-scale adapters (sd1, flux, sd3) on tiny randomly initialised models of
the real diffusers/transformers classes, written in each pipeline's folder
layout and loaded through ``pcpo.models.load_model``.

Checks: rollouts give finite images of the right shape; a deterministic
rollout (eta = 0 / noise level 0) reproduces diffusers' own pipeline on the
folder the adapter saves (conditioning, time units, packing, ids, guidance,
shift and VAE scaling all agree); one epoch of every algorithm of the family
starts at ratio 1 and stays finite; LoRA targets exist; a missing model fails
with the component named.
"""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import yaml

from tests.rehearsal.tiny_hub import (  # noqa: F401  (the shared tiny builders)
    CLIP_LEN,
    RES,
    T5_LEN,
    build_flux,
    build_sd1,
    build_sd3,
    clip_text_config,
    clip_vocab_size,
    t5_encoder,
    t5_tokenizer,
    tiny_vae,
    write_clip_tokenizer,
)

PROMPTS = ["a red cat", "a blue dog", "two birds"]


BUILDERS = {"sd1": build_sd1, "flux": build_flux, "sd3": build_sd3}
OPTIONS = {"sd1": {}, "flux": {"max_sequence_length": T5_LEN, "resolution": RES}, "sd3": {"max_sequence_length": T5_LEN}}
SAMPLER = {"sd1": "ddim", "flux": "flow-dance", "sd3": "flow-grpo"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from pcpo.models.tiny import quiet_hf

    root = tmp_path_factory.mktemp("fullscale")
    with quiet_hf():
        return {k: str(b(root / k)) for k, b in BUILDERS.items()}


def load(kind, folders, **extra):
    from pcpo.models import load_model

    return load_model(kind, folders[kind], **{**OPTIONS[kind], **extra})


# ---------------------------------------------------------------------------
# rollouts
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sd1", "flux", "sd3"])
def test_rollout_gives_finite_images(folders, kind):
    from pcpo.rollout import make_grid, rollout

    m = load(kind, folders)
    assert m.family == ("ddim" if kind == "sd1" else "flow")
    grid = make_grid(m.schedule(), SAMPLER[kind], steps=3, eta=1.0, noise_level=0.7)
    traj = rollout(m, PROMPTS[:2], grid, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert traj.images.shape == (2, 3, RES, RES)
    assert torch.isfinite(traj.images).all() and traj.images.min() >= 0 and traj.images.max() <= 1
    assert traj.states.shape == (2, 4, *m.latent_shape())
    assert torch.isfinite(traj.log_probs).all()
    cond = m.encode_prompts(PROMPTS[:2])
    assert all(v.shape[0] == 2 for v in cond.values())
    if kind == "flux":  # guidance-distilled: no unconditional branch is stored
        assert traj.uncond == {} and m.latent_shape() == (16, 16)
    else:
        assert traj.uncond is not None and set(traj.uncond) == set(cond)
    if kind == "sd3":
        assert cond["encoder_hidden_states"].shape == (2, CLIP_LEN + T5_LEN, 16)
        assert cond["pooled_projections"].shape == (2, 16)


def _pipeline_images(kind, folder, prompts, x_init, steps, scale):
    from diffusers import DDIMScheduler, DiffusionPipeline

    from pcpo.models.tiny import quiet_hf

    with quiet_hf():
        pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=steps, guidance_scale=scale, latents=x_init, output_type="pt",
              height=RES, width=RES)
    if kind == "sd1":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        return pipe(prompts, eta=0.0, **kw).images
    if kind == "sd3":  # the adapter's default time_grid "pipeline" is the pipeline's own default grid
        return pipe(prompts, max_sequence_length=T5_LEN, **kw).images
    # FLUX: the rollout's grid linspace(1, 0, N + 1) shifted = the pipeline's sigmas linspace(1, 1/N, N) shifted, then 0
    sig = np.linspace(1.0, 1.0 / steps, steps).tolist()
    return pipe(prompts, sigmas=sig, max_sequence_length=T5_LEN, **kw).images


@pytest.mark.parametrize("kind", ["sd1", "flux", "sd3"])
def test_deterministic_rollout_matches_diffusers_pipeline(folders, kind, tmp_path):
    """Save through the adapter, load with diffusers' own pipeline class, sample the same ODE."""
    from pcpo.rollout import make_grid, rollout

    m = load(kind, folders)
    saved = tmp_path / "saved"
    m.save_pretrained(saved)
    m2 = load(kind, {kind: str(saved)})
    steps, scale = 3, 3.0
    sampler = "ddim" if kind == "sd1" else "flow-dance"
    grid = make_grid(m2.schedule(), sampler, steps=steps, eta=0.0, noise_level=0.0)
    assert grid.deterministic
    traj = rollout(m2, PROMPTS, grid, guidance_scale=scale, generator=torch.Generator().manual_seed(1))
    ref = _pipeline_images(kind, str(saved), PROMPTS, traj.states[:, 0].clone(), steps, scale)
    assert ref.shape == traj.images.shape
    assert torch.allclose(traj.images, ref.float(), atol=2e-5), float((traj.images - ref).abs().max())
    # and the images depend on the prompt and the guidance (the check is not vacuous)
    assert (traj.images[0] - traj.images[1]).abs().max() > 1e-4


def test_flux_packing_ids_and_shift():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline, calculate_shift

    from pcpo.models.flux import dynamic_mu, flow_shift, latent_image_ids, pack_latents, unpack_latents
    from pcpo.rollout import flow_times

    lat = torch.randn(2, 16, 6, 10)
    packed = pack_latents(lat)
    assert torch.equal(packed, FluxPipeline._pack_latents(lat, 2, 16, 6, 10))
    assert torch.equal(unpack_latents(packed, 6, 10), lat)
    assert torch.equal(latent_image_ids(6, 10), FluxPipeline._prepare_latent_image_ids(1, 3, 5, "cpu", torch.float32))
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    for seq in (16, 1024, 4096):
        mu = dynamic_mu(seq, sched.config)
        assert mu == pytest.approx(calculate_shift(seq, 256, 4096, 0.5, 1.15))
        k, info = flow_shift(sched, seq)
        assert info["shift_rule"] == "dynamic" and k == pytest.approx(math.exp(mu))
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / 8, 8).tolist(), mu=mu)
        ours = flow_times(8, k)
        assert torch.allclose(sched.sigmas.double(), ours, atol=1e-6)
    assert flow_shift(sched, 16, 3)[0] == 3.0


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_pipeline_time_grid_equals_the_schedulers_default(shift):
    """time_grid 'pipeline' = FlowMatchEulerDiscreteScheduler.set_timesteps(N) with no sigmas given
    (StableDiffusion3Pipeline's and Flow-GRPO's grid), for any N; 'uniform' is a different grid."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from pcpo.rollout import flow_times

    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    span = (sched.sigma_max, sched.sigma_min)
    for n in (1, 3, 10, 40):
        sched.set_timesteps(n)
        ours = flow_times(n, shift, "pipeline", span)
        assert ours.shape == sched.sigmas.shape
        assert torch.allclose(sched.sigmas.double(), ours, atol=1e-6), (n, sched.sigmas, ours)
    if shift == 3.0:
        assert float(flow_times(10, shift, "pipeline", span)[-2]) == pytest.approx(3 * 0.001 / (1 + 2 * 0.001) * 3
                                                                                   / (1 + 2 * 0.003), rel=1e-2)
        assert not torch.allclose(flow_times(10, shift), flow_times(10, shift, "pipeline", span))
    with pytest.raises(ValueError, match="spacing"):
        flow_times(4, shift, "karras")


def test_sd3_time_grid_option(folders):
    m = load("sd3", folders)
    spec = m.schedule()
    assert m.time_grid == "pipeline" and spec.flow_spacing == "pipeline"
    assert spec.flow_span[0] == pytest.approx(1.0) and 0 < spec.flow_span[1] < 0.01
    assert m.describe()["time_grid"] == "pipeline"
    u = load("sd3", folders, time_grid="uniform")
    assert u.schedule().flow_spacing == "uniform"
    with pytest.raises(ValueError, match="model.options.time_grid"):
        load("sd3", folders, time_grid="linear")


def test_sd1_bfloat16_option_and_describe(folders):
    from pcpo.rollout import make_grid, rollout

    m = load("sd1", folders, dtype="bfloat16", guidance_scale=5.0)
    assert m.dtype == torch.bfloat16 and m.default_guidance_scale == 5.0
    grid = make_grid(m.schedule(), "ddim", steps=2)
    traj = rollout(m, PROMPTS[:1], grid, generator=torch.Generator().manual_seed(0))
    assert traj.images.dtype == torch.float32 and torch.isfinite(traj.images).all()
    d = m.describe()
    assert d["kind"] == "sd1" and d["prediction_type"] == "epsilon" and d["resolution"] == RES
    json.dumps(d)


@pytest.mark.parametrize("kind", ["sd1", "flux", "sd3"])
def test_lora_targets_exist(folders, kind):
    from pcpo.checkpoint import add_lora

    m = load(kind, folders)
    add_lora(m.denoiser, 2, 2.0, m.lora_target_modules)
    names = [n for n, p in m.denoiser.named_parameters() if p.requires_grad and "lora_A" in n]
    wrapped = {n.split(".lora_A")[0].rsplit(".", 1)[-1] if not n.split(".lora_A")[0].endswith(".0")
               else "to_out.0" for n in names}
    expected = {"to_q", "to_k", "to_v", "to_out.0"}
    if kind == "sd3":  # Flow-GRPO's targets: the joint attention's both streams
        expected |= {"add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"}
    assert wrapped == expected, sorted(wrapped)  # FLUX: DanceGRPO's four, no text-stream add_*
    if kind == "sd3":  # not the dual-attention blocks' attn2 (the tiny SD3 has one)
        assert any(".attn2." in n for n, _ in m.denoiser.named_parameters())
        assert not any(".attn2." in n for n in names), [n for n in names if ".attn2." in n]


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks`")
def test_missing_model_names_the_component(tmp_path, monkeypatch):
    from pcpo.models import load_model
    from pcpo.models.sd import ModelLoadError

    import huggingface_hub.constants

    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="unet.*hf download"):
        load_model("sd1", str(tmp_path / "empty"))
    # huggingface_hub's offline mode: one line naming the repository and the command that fetches it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="transformer.*HF_HUB_OFFLINE.*`hf download pcpo-test-org/no-such-model`") as ei:
        load_model("flux", "pcpo-test-org/no-such-model")
    assert "\n" not in str(ei.value)


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks`")
def test_unreachable_hub_names_the_model_and_the_command(tmp_path, monkeypatch):
    """Downloads are on by default: a hub that refuses the connection gives one line with the fix."""
    from pcpo.models import load_model
    from pcpo.models.sd import ModelLoadError
    from tests.loopback import hub_environment, serve_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with serve_hub(tmp_path) as endpoint:
        pass  # stopped: its port now refuses connections
    with hub_environment(endpoint):
        with pytest.raises(ModelLoadError, match="connection refused.*`hf download pcpo-test-org/gone`") as ei:
            load_model("sd3", "pcpo-test-org/gone")
    assert "\n" not in str(ei.value)


# ---------------------------------------------------------------------------
# one training epoch of every algorithm of the family
# ---------------------------------------------------------------------------

ALGOS = {"ddim": ["ddpo", "pcpo-ddpo", "dancegrpo", "pcpo-dancegrpo"],
         "flow": ["dancegrpo", "pcpo-dancegrpo", "flow_grpo", "pcpo-flow_grpo"]}
TRAIN_CASES = [(k, a) for k in ("sd1", "flux", "sd3") for a in ALGOS["ddim" if k == "sd1" else "flow"]]


@pytest.fixture(scope="module")
def brightness_reward():
    from pcpo.rewards import REWARDS

    def factory(**_):
        def fn(images, prompts, metadata):
            r = images.float().mean(dim=(1, 2, 3))
            return r, {"brightness": r}
        return fn

    REWARDS.register("test_brightness", factory, overwrite=True)
    return "test_brightness"


def run_epoch(folders, reward, tmp_path, kind, algorithm, dtype="float32", device="cpu") -> dict:
    from pcpo.config import load_config
    from pcpo.trainer import Trainer

    cfg = {
        "experiment": "test-fullscale",
        "model": {"kind": kind, "path": folders[kind], "dtype": dtype, "options": OPTIONS[kind]},
        "reward": {"name": reward},
        "prompts": {"source": "list", "options": {"prompts": PROMPTS}},
        "sampling": {"steps": 3, "guidance_scale": 2.0, "batch_size": 4},
        "train": {"epochs": 1, "prompts_per_epoch": 2, "group_size": 2, "train_batch_size": 2,
                  "checkpoint_every": 1, "lr": 1e-3, "device": device},
        "lora": {"enabled": True, "rank": 2, "alpha": 2},
    }
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    Trainer(load_config(p), algorithm, seed=0, out_dir=out, progress=False).run()
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    assert (out / "checkpoints" / "epoch_000000" / "trainable.safetensors").is_file()
    return rows[0]


@pytest.mark.parametrize("kind,algorithm", TRAIN_CASES)
def test_one_epoch_of_every_algorithm(folders, brightness_reward, tmp_path, kind, algorithm):
    r = run_epoch(folders, brightness_reward, tmp_path, kind, algorithm)
    assert float(r["logratio_first_max"]) < 1e-5
    for k in ("loss", "grad_norm", "reward_mean", "approx_kl"):
        assert math.isfinite(float(r[k])), k
    assert float(r["grad_norm"]) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind,algorithm", [("sd1", "pcpo-ddpo"), ("flux", "pcpo-dancegrpo"), ("sd3", "flow_grpo")])
def test_cuda_bfloat16_epoch(folders, brightness_reward, tmp_path, kind, algorithm):
    """On a GPU in bfloat16 the rollout and the first training forward must still agree (ratio 1)."""
    r = run_epoch(folders, brightness_reward, tmp_path, kind, algorithm, dtype="bfloat16", device="cuda")
    print(f"{kind} {algorithm} bf16 cuda: logratio_first_max={r['logratio_first_max']} loss={r['loss']}")
    assert float(r["logratio_first_max"]) < 1e-4
    for k in ("loss", "grad_norm", "reward_mean"):
        assert math.isfinite(float(r[k])), k
