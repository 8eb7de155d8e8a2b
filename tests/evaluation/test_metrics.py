"""FID / KID / IS / diversity on small CPU workloads (32x32 images, upsampled to 299 inside)."""

import json
import math

import numpy as np
import pytest
import torch

from evaluation import inception as inc
from evaluation import metrics as M

N = 12
NOISE = (0.01, 0.03, 0.1)
NET_FIELDS = ("network", "weights", "sha256")


def _blobs(n, seed, size=32, lo=4):
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(n, 3, lo, lo, generator=g)
    return torch.nn.functional.interpolate(z, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def _rel(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(cache):
    x = _blobs(N, 1)
    g = torch.Generator().manual_seed(11)
    noisy = [(x + s * torch.randn(x.shape, generator=g)).clamp(0, 1) for s in NOISE]
    ref = M.reference_statistics("unit-base", x, batch_size=N)
    feats = [M.inception_features(n, batch_size=N) for n in noisy]
    return {"x": x, "noisy": noisy, "ref": ref, "fx": ref["features"], "fn": feats}


def _has_net(r):
    return all(r.get(k) for k in NET_FIELDS)


# ----------------------------------------------------------------------------- FID / KID


def test_reference_cache_roundtrip(data, cache, monkeypatch):
    ref = data["ref"]
    assert ref["path"] and ref["path"].startswith(str(cache)) and f"unit-base-32px-n{N}" in ref["path"]
    with np.load(ref["path"]) as z:  # the cache file records which network made it
        meta = json.loads(str(z["meta"]))
    assert _has_net(ref) and meta["sha256"] == ref["sha256"] and meta["network"] == ref["network"]
    again = M.reference_statistics("unit-base", resolution=32, count=N)  # lookup without images
    assert torch.equal(again["features"], ref["features"]) and np.array_equal(again["sigma"], ref["sigma"])
    with pytest.raises(FileNotFoundError):
        M.reference_statistics("unit-base", resolution=32, count=N + 1)
    with monkeypatch.context() as mp:  # same images: served from the cache, no network call
        mp.setattr(M, "inception_features", lambda *a, **k: pytest.fail("recomputed"))
        assert M.reference_statistics("unit-base", data["x"])["fingerprint"] == ref["fingerprint"]
    # same (name, resolution, count) but other pixels: recomputed and replaced, with a warning
    M.reference_statistics("tiny", data["x"][:2], batch_size=2)
    with pytest.warns(UserWarning, match="changed"):
        changed = M.reference_statistics("tiny", data["x"][2:4], batch_size=2)
    assert torch.equal(M.reference_statistics("tiny", resolution=32, count=2)["features"], changed["features"])
    assert not list(cache.rglob("*.tmp"))
    # a reference made with other weights is refused
    with pytest.raises(ValueError, match="weights"):
        M.fid(data["x"][:2], {**ref, "sha256": "0" * 64}, batch_size=2)


def test_fid_self_zero_and_monotone_in_noise(data):
    r = M.fid(data["x"], data["ref"], batch_size=N)  # recomputes the fake side through the API
    assert _has_net(r) and r["real_name"] == "unit-base"
    assert abs(r["value"]) < 1e-6  # torch-fidelity's eigvals route gives ~-5e-5 here (round-off)
    fids = [M.fid_from_features(f, data["fx"]) for f in data["fn"]]
    print("FID self", r["value"], "noise", dict(zip(NOISE, fids)))
    assert 1.0 < fids[0] < fids[1] < fids[2]


@pytest.mark.parametrize("n1,n2,d", [(12, 9, 64), (200, 150, 64)])  # low-rank SVD route, covariance route
def test_fid_formula_matches_torch_fidelity(n1, n2, d):
    g = torch.Generator().manual_seed(n1)
    a = torch.randn(n1, d, generator=g).abs()
    b = (1.3 * torch.randn(n2, d, generator=g) + 0.2).abs()
    ours, theirs = M.fid_from_features(a, b), M.fid_from_features(a, b, method="torch_fidelity")
    assert _rel(ours, theirs) < 1e-6
    assert abs(M.fid_from_features(a, a)) < 1e-9


def test_kid_finite_and_monotone_in_noise(data):
    kids = [M.kid_from_features(f, data["fx"], subsets=50) for f in data["fn"]]
    self_kid = M.kid_from_features(data["fx"], data["fx"], subsets=50)
    vals = [k["mean"] for k in kids]
    print("KID self", self_kid["mean"], "noise", dict(zip(NOISE, vals)))
    assert all(math.isfinite(k["mean"]) and math.isfinite(k["std"]) for k in kids + [self_kid])
    assert kids[0]["subset_size"] == N  # min(1000, N)
    # identical sets: the unbiased estimator is slightly negative (-(2/m) * (mean k(x,x) - mean k(x,y)))
    assert abs(self_kid["mean"]) < vals[0] < vals[1] < vals[2]


def test_fid_kid_deterministic_and_batch_size_independent(data):
    fake = data["noisy"][1][:8]
    r4a = M.fid_kid(fake, data["ref"], batch_size=4, kid_subsets=20)
    r4b = M.fid_kid(fake, data["ref"], batch_size=4, kid_subsets=20)
    r16 = M.fid_kid(fake, data["ref"], batch_size=16, kid_subsets=20)
    for m in ("fid", "kid"):
        assert r4a[m]["value"] == r4b[m]["value"]
        assert _rel(r4a[m]["value"], r16[m]["value"]) < 1e-5, (m, r4a[m]["value"], r16[m]["value"])
        assert _has_net(r16[m])
    assert r16["kid"]["subset_size"] == 8


def test_equals_torch_fidelity_calculate_metrics(data):
    k = 6  # our side reuses the fixture's features (computed in a batch of N; batch-size effects ~1e-7)
    fake, real = data["noisy"][2][:k], data["x"][:k]
    tf = M.torch_fidelity_reference(fake, real, batch_size=k, kid_subsets=20)
    ours_fid = M.fid_from_features(data["fn"][2][:k], data["fx"][:k])
    ours_kid = M.kid_from_features(data["fn"][2][:k], data["fx"][:k], subsets=20)
    print("torch-fidelity", tf, "ours", ours_fid, ours_kid)
    assert _rel(ours_fid, tf["frechet_inception_distance"]) < 1e-5
    assert _rel(ours_kid["mean"], tf["kernel_inception_distance_mean"]) < 1e-5


def test_grayscale_replicated():
    gray = torch.rand(2, 1, 8, 8)
    assert torch.equal(M.to_uint8_rgb(gray), M.to_uint8_rgb(gray.expand(-1, 3, -1, -1)))


def test_to_uint8_rgb_quantisation():
    x = torch.tensor([0.0, 0.6 / 255, 0.49, 1.0, 1.7, -0.2]).view(1, 1, 1, 6)
    u = M.to_uint8_rgb(x)
    assert u.dtype == torch.uint8 and u.shape == (1, 3, 1, 6)
    assert u[0, 0, 0].tolist() == [0, 1, 125, 255, 255, 0]  # round(clamp(x) * 255)
    with pytest.raises(ValueError):
        M.to_uint8_rgb(torch.rand(1, 4, 8, 8))


def test_load_png_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    arrs = {n: rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for n in ("b.png", "a.png", "c10.png")}
    for n, a in arrs.items():
        Image.fromarray(a).save(tmp_path / n)
    (tmp_path / "notes.txt").write_text("x")
    x, names = M.load_png_folder(tmp_path)
    assert names == ["a.png", "b.png", "c10.png"] and x.shape == (3, 3, 8, 8) and x.dtype == torch.float32
    for i, n in enumerate(names):
        assert torch.equal(M.to_uint8_rgb(x[i : i + 1])[0], torch.from_numpy(arrs[n]).permute(2, 0, 1))
    gdir = tmp_path / "gray"
    gdir.mkdir()
    Image.fromarray(arrs["a.png"][..., 0]).save(gdir / "g.png")
    xg, _ = M.load_png_folder(gdir)
    assert xg.shape == (1, 1, 8, 8)


# ----------------------------------------------------------------------------- Inception Score


class _Toy(torch.nn.Module):
    """Confident toy classifier: class = (fixed label per image) with margin 40."""

    name = "toy-classifier"

    def __init__(self, labels, k):
        super().__init__()
        self.labels, self.k = labels, k

    def forward(self, x):
        idx = (x[:, 0, 0, 0] * 1000).round().long()  # image i carries i/1000 in pixel (0,0,0)
        return 40.0 * torch.nn.functional.one_hot(self.labels[idx], self.k).double()


def _indexed_images(n):
    x = torch.zeros(n, 1, 4, 4)
    x[:, 0, 0, 0] = torch.arange(n) / 1000.0  # n <= 1000
    return x


def test_inception_score_toy_classifier():
    k, n = 10, 1000
    x = _indexed_images(n)
    uniform = _Toy(torch.arange(n) % k, k)
    r = M.inception_score(x, uniform, splits=1)
    assert r["value"] == pytest.approx(k, rel=1e-6) and r["network"] == "toy-classifier"
    r = M.inception_score(x, uniform, splits=10, shuffle=False)  # each split holds every class once
    assert r["value"] == pytest.approx(k, rel=1e-6) and r["std"] < 1e-6
    r = M.inception_score(x, uniform)  # torch-fidelity default: shuffled splits -> uneven class counts
    assert 0.9 * k < r["value"] <= k + 1e-6  # ~ exp(log K - (K-1)/(2*100)) = 9.56
    const = _Toy(torch.zeros(n, dtype=torch.long), k)
    assert M.inception_score(x, const, splits=5)["value"] == pytest.approx(1.0, abs=1e-9)
    a = M.inception_score(x, uniform, batch_size=4)
    b = M.inception_score(x, uniform, batch_size=16)
    assert a["value"] == b["value"] and a["std"] == b["std"]
    uniform.train()
    M.inception_score(x, uniform, splits=1)
    assert uniform.training  # mode restored
    r = M.inception_score(x, lambda t: uniform(t), classifier_name="digit-cnn", splits=2)
    assert r["network"] == "digit-cnn" and "weights" in r and "sha256" in r


def test_inception_score_refuses_fake_logits():
    x = torch.rand(4, 3, 8, 8)
    if inc.has_real_logits():
        pytest.fail("this test expects the offline environment (no torch-fidelity classifier weights)")
    with pytest.raises(RuntimeError, match="classifier"):
        M.inception_score(x)
    with pytest.raises(RuntimeError):
        inc.load_feature_extractor(("logits_unbiased",))


def test_class_coverage_against_a_float64_histogram_entropy():
    k, n = 10, 200
    x = _indexed_images(n)
    r = M.class_coverage(x, _Toy(torch.arange(n) % k, k))
    assert r["value"] == pytest.approx(1.0, abs=1e-12) and r["modes"] == k and r["counts"] == [20] * k
    assert r["network"] == "toy-classifier" and r["mean_confidence"] == pytest.approx(1.0)
    assert M.class_coverage(x, _Toy(torch.zeros(n, dtype=torch.long), k))["value"] == 0.0
    # an uneven histogram: three classes 100 / 60 / 40, recomputed independently in float64
    labels = torch.tensor([3] * 100 + [7] * 60 + [1] * 40)
    r = M.class_coverage(x, _Toy(labels, k), batch_size=7)
    p = np.array([100, 60, 40], dtype=np.float64) / n
    assert r["value"] == pytest.approx(float(-(p * np.log(p)).sum() / np.log(k)), rel=1e-12)
    assert r["modes"] == 3 and r["counts"][3] == 100 and sum(r["counts"]) == n
    # hard labels: an unsure classifier (near-uniform soft output, arg-max always class 0) scores 0
    def unsure(t):
        logits = torch.zeros(t.shape[0], k, dtype=torch.float64)
        logits[:, 0] = 1e-3
        return logits
    r = M.class_coverage(x, unsure, classifier_name="unsure")
    assert r["value"] == 0.0 and r["mean_confidence"] < 0.11
    with pytest.raises(ValueError, match="2 classes"):
        M.class_coverage(x, lambda t: torch.zeros(t.shape[0], 1))


# ----------------------------------------------------------------------------- diversity


def test_diversity_identical_zero_and_distinct_positive(data):
    x = data["x"]
    same = torch.cat([x[:1].repeat(3, 1, 1, 1), x[1:2].repeat(3, 1, 1, 1)])
    r = M.diversity(same, ["p0"] * 3 + ["p1"] * 3, backbone="inception", batch_size=4)
    assert r["value"] == 0.0 and r["n_groups"] == 2 and r["n_pairs"] == 6
    # the Inception-feature distance is its own metric, never reported as (LPIPS) diversity
    assert r["metric"] == "diversity_inception" and r["network"] == "inception_feature_distance"
    assert _has_net(r)

    imgs = torch.cat([x[2:6], x[6:7].repeat(2, 1, 1, 1)])
    labels = [0, 0, 0, 0, 1, 1]
    d2 = M.diversity(imgs, labels, backbone="inception", batch_size=2)
    d4 = M.diversity(imgs, labels, backbone="inception", batch_size=4)
    print("diversity", d4["value"], d4["per_group"])
    assert d4["per_group"][0]["value"] > 0 and d4["per_group"][1]["value"] == 0.0
    assert d4["value"] == pytest.approx(d4["per_group"][0]["value"] / 2)
    assert _rel(d2["value"], d4["value"]) < 1e-5
    d_idx = M.diversity(imgs, [[0, 1, 2, 3], [4, 5], [0]], backbone="inception", batch_size=4)  # index lists
    assert d_idx["value"] == d4["value"] and d_idx["n_groups"] == 2
    with pytest.raises(ValueError):
        M.diversity(imgs[:2], ["a", "b"], backbone="inception")


def test_diversity_memo_feeds_fid_without_a_second_pass(data, monkeypatch):
    """evaluate_folder's single Inception pass: diversity leaves pool3 features in the memo, and
    fid_kid with that memo runs the network only on images diversity did not see."""
    x = data["noisy"][0]
    groups = [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4]  # group 4 has one image: diversity skips it
    memo: dict = {}
    M.diversity(x, groups, backbone="inception", batch_size=4, memo=memo)
    assert len(memo) == N - 1
    calls = []
    real_load = inc.load_feature_extractor

    def counting_load(*a, **k):
        fe = real_load(*a, **k)

        def run(batch):
            calls.append(int(batch.shape[0]))
            return fe(batch)
        return run

    monkeypatch.setattr(inc, "load_feature_extractor", counting_load)
    with_memo = M.fid_kid(x, data["ref"], batch_size=N, kid_subsets=20, memo=memo)
    assert calls == [1]  # only the image of the singleton group
    without = M.fid_kid(x, data["ref"], batch_size=N, kid_subsets=20)
    assert calls == [1, N]
    for m in ("fid", "kid"):
        assert _rel(with_memo[m]["value"], without[m]["value"]) < 1e-5, (m, with_memo[m]["value"], without[m]["value"])
    feats = M.inception_features(x, batch_size=N, memo=memo)
    assert calls == [1, N] and torch.allclose(feats, data["fn"][0], rtol=1e-4, atol=1e-5)


def test_lpips_path_matches_lpips_package():
    """Exercise the real-LPIPS code path offline with a random AlexNet trunk (linear heads are real)."""
    dist = M._make_distance("_lpips_alex_random_trunk", "cpu")
    assert "RANDOM" in dist.name
    x = _blobs(3, 5)
    xp = dist.prepare(x)
    assert xp.shape[-1] == M.LPIPS_MIN_SIZE
    feats = dist.features(xp)
    with torch.inference_mode():
        for i, j in ((0, 1), (0, 2), (1, 2)):
            ours = dist.pair([f[i] for f in feats], [f[j] for f in feats])
            ref = dist.model(xp[i : i + 1], xp[j : j + 1], normalize=True).item()
            assert ours == pytest.approx(ref, rel=1e-5)


def test_lpips_alexnet_weight_mapping(tmp_path):
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.alexnet(weights=None)
    p = tmp_path / M.ALEXNET_WEIGHTS_NAME
    torch.save(tv.state_dict(), p)
    dist = M._LpipsAlexDistance("cpu", str(p))
    assert dist.name == "lpips_alex" and dist.sha256 == inc.file_sha256(p)
    for k, v in dist.model.net.state_dict().items():
        assert torch.equal(v, tv.state_dict()["features." + k.split(".", 1)[1]])


def test_lpips_diversity_without_alexnet_fails_in_one_line(monkeypatch):
    """No quiet substitute: without torchvision's AlexNet weights, LPIPS diversity refuses and names the fetch."""
    monkeypatch.setattr(M, "find_alexnet_weights", lambda: None)
    x = _blobs(4, 1)
    with pytest.raises(M.MissingNetwork) as e:
        M.diversity(x, [0, 0, 1, 1])
    msg = str(e.value)
    assert "\n" not in msg and f"pcpo data fetch {M.FETCH_LPIPS_ALEXNET}" in msg and M.ALEXNET_WEIGHTS_NAME in msg
    with pytest.raises(ValueError, match="unknown diversity backbone"):
        M.diversity(x, [0, 0, 1, 1], backbone="auto")


def test_lpips_diversity_with_alexnet_is_named_lpips(tmp_path, monkeypatch):
    import torchvision

    torch.manual_seed(0)
    p = tmp_path / M.ALEXNET_WEIGHTS_NAME
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), p)
    monkeypatch.setattr(M, "find_alexnet_weights", lambda: str(p))
    x = _blobs(4, 2)
    r = M.diversity(x, [0, 0, 1, 1])
    assert r["metric"] == "diversity" and r["network"] == "lpips_alex" and r["sha256"] == inc.file_sha256(p)
    assert r["value"] > 0
