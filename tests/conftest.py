"""Shared fixtures. ``tiny_clip_dir``: a tiny random CLIP saved with ``save_pretrained`` (no downloads)."""

from __future__ import annotations

import os
import string

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network

import pytest

TINY_CLIP_IMAGE_SIZE = 32
TINY_CLIP_PROJECTION_DIM = 16


def build_tiny_clip(path, image_size: int = TINY_CLIP_IMAGE_SIZE, seed: int = 0) -> str:
    """Save a randomly initialised tiny ``CLIPModel`` + ``CLIPImageProcessor`` + tokenizer to ``path``.

    Vision: hidden 32, 2 layers, 2 heads, patch 8, ``image_size`` px input; text: hidden 32,
    2 layers, a character-level BPE vocabulary (a-z, digits, punctuation; ~100 tokens);
    projection 16-d. The image processor resizes the shorter side to ``image_size`` (bicubic) and
    centre-crops ``image_size``. Returns the directory as a string.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(seed)
    chars = string.ascii_lowercase + string.digits + ".,!?'-"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=image_size, patch_size=8,
        ),
        projection_dim=TINY_CLIP_PROJECTION_DIM,
    )
    model = CLIPModel(config).eval()
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> str:
    """Directory of a tiny random CLIP (32 px input, 16-d embeddings) loadable with
    ``geosolver.encoders.load_encoder(dir)`` and ``transformers.CLIPModel.from_pretrained(dir)``."""
    import torch

    torch.set_num_threads(1)
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_dir):
    """The tiny CLIP of :func:`tiny_clip_dir`, loaded once on the CPU (float32). Tests that change
    its weights load their own copy."""
    from geosolver.encoders import load_encoder

    return load_encoder(tiny_clip_dir, device="cpu", precision="fp32")


@pytest.fixture
def geosolver_cache(tmp_path, monkeypatch):
    """A fresh ``GEOSOLVER_CACHE_DIR`` (text embeddings, label sets on disk, downloads) for one test."""
    path = tmp_path / "cache"
    monkeypatch.setenv("GEOSOLVER_CACHE_DIR", str(path))
    return path


# ------------------------------------------------------------------------------------------------
# `geosolver serve` (tests/test_serve*.py, test_hostile_text_play.py): one world per test module
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(request, tmp_path_factory, tiny_clip_dir) -> dict:
    """The serve test world of the requesting module (:func:`helpers_serve.build_world`: a tiny-CLIP
    gallery embedded from the very photos the tests upload). A module serving another gallery
    overrides this fixture with a dict holding at least ``store`` (the gallery) and ``encoder``."""
    from helpers_serve import build_world

    return build_world(tmp_path_factory.mktemp(request.module.__name__), tiny_clip_dir)


@pytest.fixture(scope="module")
def geoloc(world):
    """A :class:`~geosolver.locate.Geolocator` over the module's ``world``."""
    from geosolver.locate import Geolocator

    return Geolocator.from_store(world["store"], encoder=world["encoder"])


@pytest.fixture(scope="module")
def serve_options() -> dict:
    """``create_app`` keywords of the module's ``client`` (a module overrides this to change them)."""
    return {}


@pytest.fixture(scope="module")
def client(geoloc, serve_options):
    """A FastAPI ``TestClient`` of ``create_app(geoloc, **serve_options)``, open for the module."""
    from helpers_serve import serve_client

    with serve_client(geoloc, **serve_options) as c:
        yield c
