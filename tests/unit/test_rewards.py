"""Rewards: JPEG (in)compressibility and the tiny world's learned rewards."""
from __future__ import annotations

import pytest
import torch

from pcpo.rewards import get_reward, reward_names


pytestmark = pytest.mark.usefixtures("one_thread")


def _noise(n=2, c=1, size=16, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def test_registered():
    names = reward_names()
    for n in ("jpeg_compressibility", "jpeg_incompressibility", "digit_alignment", "digit_boldness"):
        assert n in names


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_signs_and_ranges(channels):
    comp, incomp = get_reward("jpeg_compressibility"), get_reward("jpeg_incompressibility")
    blank = torch.zeros(2, channels, 32, 32)
    noise = _noise(2, channels, 32)
    rb, info = comp(blank, ["a", "b"], [{}, {}])
    rn, _ = comp(noise, ["a", "b"], [{}, {}])
    assert rb.dtype == torch.float32 and rb.shape == (2,)
    assert (rb > rn).all()  # a blank image is more compressible than noise
    assert (rb < 0).all() and torch.equal(info["jpeg_kb"], -rb)
    ib, _ = incomp(blank, None, None)
    inn, _ = incomp(noise, None, None)
    assert (inn > ib).all() and (ib > 0).all()
    assert torch.equal(ib, -rb)
    # deterministic, and independent of the batch it is in
    both, _ = incomp(torch.cat([blank[:1], noise[:1]]), None, None)
    assert torch.equal(both, torch.stack([ib[0], inn[0]]))


def test_jpeg_rejects_bad_shapes():
    with pytest.raises(ValueError, match="B, C, H, W"):
        get_reward("jpeg_compressibility")(torch.zeros(2, 16, 16), None, None)


# --------------------------------------------------------------------------- learned rewards


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    from pcpo.tiny.classifier import TinyClassifierConfig, train_classifier

    out = tmp_path_factory.mktemp("clf") / "classifier"
    return train_classifier(out, TinyClassifierConfig.smoke(epochs=4), seed=0)


def test_missing_classifier_path_names_the_option(monkeypatch, tmp_path):
    monkeypatch.delenv("PCPO_TINY_CLASSIFIER", raising=False)
    for name in ("digit_alignment", "digit_boldness"):
        with pytest.raises(ValueError, match="classifier_path.*pcpo pretrain --model classifier"):
            get_reward(name)
        with pytest.raises(FileNotFoundError, match="classifier_path"):
            get_reward(name, classifier_path=str(tmp_path / "nope"))


def test_classifier_env_var(monkeypatch, classifier_dir):
    monkeypatch.setenv("PCPO_TINY_CLASSIFIER", str(classifier_dir))
    fn = get_reward("digit_alignment")
    r, _ = fn(_noise(1), ["digit 1"], [{"digit": 1}])
    assert r.shape == (1,)


def test_digit_alignment_prefers_the_prompted_digit(classifier_dir):
    from pcpo.tiny.data import load_split

    fn = get_reward("digit_alignment", classifier_path=str(classifier_dir))
    held = load_split("heldout")
    idx = torch.arange(0, len(held), 9)[:40]
    images = held.unit_images()[idx]
    labels = held.labels[idx]
    wrong = (labels + 3) % 10
    right_r, info = fn(images, [f"digit {d}" for d in labels.tolist()], [{} for _ in idx])  # parsed from prompts
    wrong_r, _ = fn(images, ["x"] * len(idx), [{"digit": int(d)} for d in wrong])  # from metadata
    for r in (right_r, wrong_r):
        assert r.dtype == torch.float32 and r.shape == (len(idx),)
        assert (r >= 0).all() and (r <= 1).all()
    assert right_r.mean() > wrong_r.mean() + 0.3
    assert (right_r > wrong_r).float().mean() > 0.8
    assert info["correct"].mean() > 0.5
    with pytest.raises(ValueError, match="no digit"):
        fn(images[:1], ["a handwritten digit"], [{}])


def test_digit_boldness_tracks_ink(classifier_dir):
    from pcpo.tiny.data import load_split

    fn = get_reward("digit_boldness", classifier_path=str(classifier_dir))
    held = load_split("heldout")
    images = held.unit_images()
    r, info = fn(images, None, None)
    assert r.dtype == torch.float32 and r.shape == (len(held),)
    assert torch.isfinite(r).all()
    # a learned proxy of the measured thickness: positively correlated with it
    corr = torch.corrcoef(torch.stack([r, held.thickness]))[0, 1]
    assert corr > 0.5
    assert abs(r.mean().item() - held.thickness.mean().item()) < 0.1
    assert "measured_ink" in info


def test_classifier_round_trip_and_cache(classifier_dir):
    from pcpo.rewards.tiny import get_classifier
    from pcpo.tiny.classifier import load_classifier

    a, b = load_classifier(classifier_dir), load_classifier(classifier_dir)
    x = _noise(3)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        # RGB and other sizes are accepted
        assert a(x.repeat(1, 3, 2, 2)).shape == (3, 10)
    assert get_classifier(classifier_dir) is get_classifier(classifier_dir)
