"""The timm backbone with the shipped EfficientNet-Lite0 ImageNet weights, and loading from files."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from rlhf import backbone as bb
from rlhf.backbone import (
    BackboneWeightsError,
    classify,
    embed,
    for_inference,
    load_backbone,
    preprocess,
    shipped_lite0_path,
)
from rlhf.images import bundled_photos, load_image, resize

torch.set_num_threads(1)

EGYPTIAN_CAT, ESPRESSO = 285, 967


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return load_backbone()


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {n: load_image(p) for n, p in zip(["chelsea", "coffee", "rocket"],
                                              bundled_photos(["chelsea", "coffee", "rocket"]), strict=True)}


def test_mapped_weights_match_the_reference_model(lite0, photos):
    """Same logits as efficientnet-lite-pytorch's own loader on real photos (input (x-127)/128)."""
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(shipped_lite0_path())).eval()
    crops = [resize(img, 224) for img in photos.values()]
    x_ref = (torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() - 127.0) / 128.0
    with torch.no_grad():
        want = ref(x_ref)
        got = lite0(preprocess(crops, 224))
    assert (got - want).abs().max().item() < 1e-3
    assert torch.equal(got.topk(5).indices, want.topk(5).indices)
    top1 = got.argmax(1).tolist()
    assert top1[0] == EGYPTIAN_CAT and top1[1] == ESPRESSO


def test_classify_names_real_photos(lite0, photos):
    probs = classify(lite0, [photos["chelsea"], photos["coffee"]], 224)
    assert probs.shape == (2, 1000)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert probs[0].argmax() == EGYPTIAN_CAT and probs[0].max() > 0.6
    assert probs[1].argmax() == ESPRESSO and probs[1].max() > 0.8


def test_mapped_state_is_cached_and_models_are_independent(lite0):
    key = next(k for k in bb._state_cache if k[0] == str(shipped_lite0_path().resolve()))
    cached = bb._state_cache[key]
    again = load_backbone()
    assert bb._state_cache[key] is cached  # read and mapped once per process
    with torch.no_grad():
        again.conv_stem.weight.zero_()
    assert lite0.conv_stem.weight.abs().sum() > 0  # one model's changes never reach another
    assert cached["conv_stem.weight"].abs().sum() > 0


def test_features_and_new_heads(photos):
    feats = load_backbone(num_classes=0)
    assert feats.num_classes == 0
    e = embed(feats, [photos["chelsea"], photos["coffee"]], 160)
    assert e.shape == (2, 1280) and np.isfinite(e).all()
    assert embed(feats, np.zeros((0, 32, 32, 3), np.uint8), 160).shape == (0, 1280)
    ten = load_backbone(num_classes=10)
    assert ten.get_classifier().out_features == 10
    # the body keeps the ImageNet weights
    assert torch.equal(ten.conv_stem.weight, feats.conv_stem.weight)


def test_preprocess_scaling_and_sizes():
    grey = np.full((2, 40, 50, 3), 127, np.uint8)
    x = preprocess(grey, 32)
    assert x.shape == (2, 3, 32, 32)
    assert x.abs().max().item() < 1e-5  # (127 - 127) / 128
    mixed = preprocess([np.zeros((20, 30, 3), np.uint8), np.full((64, 64, 3), 255, np.uint8)], 16)
    assert mixed.shape == (2, 3, 16, 16)
    assert mixed[0].max().item() == pytest.approx(-127 / 128, abs=1e-5)
    assert mixed[1].min().item() == pytest.approx(128 / 128, abs=1e-5)
    with pytest.raises(ValueError, match="N×H×W×3"):
        preprocess(np.zeros((4, 4, 3), np.uint8), 8)


def test_any_timm_model_from_a_state_dict_file(tmp_path):
    src = timm.create_model("test_efficientnet", pretrained=False, num_classes=7)
    plain = tmp_path / "plain.pth"
    torch.save(src.state_dict(), plain)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, wrapped)
    for path in (plain, wrapped):
        m = load_backbone("test_efficientnet", weights=str(path))
        assert m.num_classes == 7
        for k, v in src.state_dict().items():
            assert torch.equal(m.state_dict()[k], v), k
    assert load_backbone("test_efficientnet", weights=str(plain), num_classes=0).num_classes == 0


def test_clear_errors(tmp_path):
    with pytest.raises(BackboneWeightsError, match="no such weights file"):
        load_backbone("efficientnet_lite0", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(BackboneWeightsError, match="no local weights ship"):
        load_backbone("resnet18")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneWeightsError, match="garbage.pth"):
        load_backbone("resnet18", weights=str(garbage))
    # Lite0 weights into another architecture: the message names the file and the key mismatch.
    with pytest.raises(BackboneWeightsError, match=r"efficientnet-lite0-57934424\.pth.*fit an EfficientNet-Lite"):
        load_backbone("resnet18", weights=str(shipped_lite0_path()))
    other = tmp_path / "other.pth"
    torch.save(timm.create_model("test_efficientnet", pretrained=False).state_dict(), other)
    with pytest.raises(BackboneWeightsError, match=r"other\.pth: weights do not fit .* missing .* unexpected"):
        load_backbone("test_resnet", weights=str(other))
    with pytest.raises(ValueError, match="unknown timm model"):
        load_backbone("no_such_model_xyz", weights="random")


def test_inference_form_folds_every_batchnorm_and_keeps_the_outputs(lite0, photos):
    """BatchNorm folded into the convolutions (none left), channels-last: the same feature maps and
    logits on real photos, at two aspects (the tf_ variant's SAME padding depends on the input size)."""
    fused = for_inference(load_backbone())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    for name, size in (("chelsea", (240, 320)), ("rocket", (320, 208))):
        img = resize(photos[name], (size[1], size[0]))
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float().div(255.0)
        x = (x - 127.0 / 255.0) / (128.0 / 255.0)
        with torch.inference_mode():
            ref, got = lite0.forward_features(x), fused.forward_features(x.contiguous(memory_format=torch.channels_last))
            assert ref.shape == got.shape
            assert (ref - got).abs().max().item() < 1e-3 * max(1.0, ref.abs().max().item())
            assert torch.equal(lite0(x).argmax(1), fused(x).argmax(1))
