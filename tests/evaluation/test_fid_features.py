"""FID against a scipy reference, the feature network's targets, training, cache and the Inception option."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from covid_ct_cgan.errors import InputError
from covid_ct_cgan.evaluation.fid_features import (
    FEATURE_NET_FILE,
    FeatureExtractor,
    FIDFeatures,
    default_feature_network,
    fid,
    inception_extractor,
    lesion_fractions,
    mask_outside_lung,
    train_feature_network,
)
from covid_ct_cgan.evaluation.image_quality import load_datalist


def reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The Frechet distance written out with numpy and scipy (Heusel et al.)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def test_fid_matches_the_scipy_reference() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (64, 6))
    b = rng.normal(0.5, 1.3, (64, 6))
    assert fid(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(reference_fid(a, b), rel=1e-6)
    assert fid(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(0.0, abs=1e-6)
    assert np.isnan(fid(torch.from_numpy(a[:1]), torch.from_numpy(b)))


def test_lesion_fractions_and_lung_masking() -> None:
    label = np.zeros((10, 10), np.uint8)
    label[2:8, 2:7] = 1  # 30 lung pixels ...
    label[2:4, 2:7] = 2  # ... 10 of them GGO
    label[7, 2:7] = 3  # ... 5 consolidation
    assert lesion_fractions(label).tolist() == pytest.approx([0.3, 10 / 30, 5 / 30])
    assert lesion_fractions(np.zeros((4, 4))).tolist() == [0.0, 0.0, 0.0]
    image = np.full((10, 10), 0.5, np.float32)
    masked = mask_outside_lung(image, label)
    assert (masked[label > 0] == 0.5).all() and (masked[label == 0] == -1.0).all()
    assert torch.equal(mask_outside_lung(torch.from_numpy(image), torch.from_numpy(label)), torch.from_numpy(masked))


def test_extractor_returns_the_pooled_features_before_the_last_linear_layer() -> None:
    torch.manual_seed(0)
    net = default_feature_network()
    extractor = FeatureExtractor(net, 32, "test")
    images = torch.rand(5, 1, 40, 40) * 2 - 1  # resized to 32 on the way in
    features = extractor(images, batch_size=2)
    assert features.shape == (5, net.class_layers.out.in_features)
    with torch.no_grad():
        x = torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
        expected = net.class_layers[:-1](net.features(x))
    assert torch.allclose(features, expected, atol=1e-5)


def test_feature_network_trains_with_supervised_trainer_and_is_cached(dataset: Path, tmp_path: Path) -> None:
    items = load_datalist(dataset, "training")
    cache = tmp_path / "fid_cache"
    first = train_feature_network(items, cache, image_size=32, epochs=1, batch_size=2, seed=0)
    files = list(cache.glob(f"*/{FEATURE_NET_FILE}"))
    assert len(files) == 1 and (files[0].parent / "settings.json").is_file()
    stamp = files[0].stat().st_mtime_ns
    again = train_feature_network(items, cache, image_size=32, epochs=1, batch_size=2, seed=0)
    assert files[0].stat().st_mtime_ns == stamp  # reused, not retrained
    x = torch.zeros(2, 1, 32, 32)
    assert torch.allclose(first(x), again(x), atol=1e-6)
    other = train_feature_network(items, cache, image_size=32, epochs=2, batch_size=2, seed=0)
    assert len(list(cache.glob(f"*/{FEATURE_NET_FILE}"))) == 2  # other settings, other cache entry
    assert other.description != first.description


def test_fid_component_trains_on_first_use_once_and_shares_the_cache(dataset: Path, tmp_path: Path) -> None:
    items = load_datalist(dataset, "training")
    torch.manual_seed(0)
    network_def = default_feature_network()
    before = {k: v.clone() for k, v in network_def.state_dict().items()}
    features = FIDFeatures(tmp_path / "cache", network_def, image_size=32, epochs=1, batch_size=2, seed=0)
    assert not (tmp_path / "cache").exists()  # built lazily: nothing trained when the config is parsed
    first = features.extractor(items)
    assert len(list((tmp_path / "cache").glob(f"*/{FEATURE_NET_FILE}"))) == 1
    assert features.extractor(items) is first  # once per run
    assert all(torch.equal(before[k], v) for k, v in network_def.state_dict().items())  # trained a copy
    # the same cache entry as the function with the same settings (results identical to before the component)
    direct = train_feature_network(items, tmp_path / "cache", default_feature_network(), 32, 1, 2, seed=0)
    assert len(list((tmp_path / "cache").glob(f"*/{FEATURE_NET_FILE}"))) == 1
    assert direct.description == first.description
    other = features.extractor(items, window_level=-500.0)  # another window: another network
    assert other is not first and len(list((tmp_path / "cache").glob(f"*/{FEATURE_NET_FILE}"))) == 2
    x = torch.rand(2, 1, 32, 32)
    assert torch.allclose(first(x), direct(x), atol=1e-6)
    with pytest.raises(InputError, match="not found"):
        FIDFeatures(tmp_path / "cache", inception_weights=tmp_path / "missing.pth").extractor([])


def test_inception_option_fails_with_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        inception_extractor(tmp_path / "missing.pth")
    weights = tmp_path / "pt_inception-2015-12-05.pth"
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, weights)
    if importlib.util.find_spec("torchvision") is None:
        with pytest.raises(InputError, match="needs torchvision"):
            inception_extractor(weights)
    else:
        with pytest.raises(InputError, match="do not fit Inception-v3"):
            inception_extractor(weights)
