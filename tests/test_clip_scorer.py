"""CLIP-T / CLIP-I / DINO scorers on tiny seeded models, checked against independent computations."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.functional.multimodal import clip_score

from aldar_lit.quality.clip_scorer import TINY_CLIP, ClipScorer
from aldar_lit.quality.dino_scorer import DinoScorer
from aldar_lit.quality.subject_score import SubjectScorer

TEXTS = ["a cat", "a dog", "a man riding a horse", "aldar_kose_man in the steppe", "", "close-up portrait"]


@pytest.fixture(scope="module")
def scorer() -> ClipScorer:
    # seed 3 gives the tiny random CLIP a mix of positive and negative text-image cosines
    return ClipScorer(TINY_CLIP, pretrained=None, seed=3)


@pytest.fixture(scope="module")
def arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (64, 48, 3), dtype=np.uint8) for _ in range(3)]
    flat = [np.full((40, 60, 3), colour, dtype=np.uint8) for colour in ((255, 0, 0), (255, 255, 255), (0, 0, 0))]
    return noise + flat


def pil(arrays: list[np.ndarray]) -> list[Image.Image]:
    return [Image.fromarray(a) for a in arrays]


class OpenClipAsHFClip:
    """The interface torchmetrics' clip_score expects of a transformers CLIPModel + CLIPProcessor,
    answered by the scorer's own open_clip model (the reference computation runs in torchmetrics)."""

    def __init__(self, scorer: ClipScorer):
        self.model, self.preprocess, self.tokenizer = scorer.model, scorer.preprocess, scorer.tokenizer
        self.config = SimpleNamespace()

    def to(self, device):
        return self

    def get_image_features(self, pixel_values):
        return self.model.encode_image(pixel_values)

    def get_text_features(self, input_ids, attention_mask):
        return self.model.encode_text(input_ids)

    def __call__(self, images=None, text=None, return_tensors="pt", padding=True):
        if images is not None:
            pixels = [self.preprocess(Image.fromarray(img.permute(1, 2, 0).numpy())) for img in images]
            return {"pixel_values": torch.stack(pixels)}
        ids = self.tokenizer(text)
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def test_clip_t_matches_torchmetrics_clip_score(scorer, arrays):
    ours = scorer.text_image(pil(arrays), TEXTS)
    adapter = OpenClipAsHFClip(scorer)
    reference = torch.stack([
        clip_score(torch.from_numpy(a).permute(2, 0, 1), text, lambda: (adapter, adapter)).detach()
        for a, text in zip(arrays, TEXTS)
    ]) / 100
    assert (ours > 0.01).any() and (ours < -0.01).any(), "the case needs both signs to be informative"
    # torchmetrics clamps each score at 0
    torch.testing.assert_close(ours.clamp(min=0), reference, atol=1e-5, rtol=1e-4)
    positive = ours > 0
    batch = clip_score([torch.from_numpy(a).permute(2, 0, 1) for a, p in zip(arrays, positive) if p],
                       [t for t, p in zip(TEXTS, positive) if p], lambda: (adapter, adapter)) / 100
    torch.testing.assert_close(ours[positive].mean(), batch.detach(), atol=1e-5, rtol=1e-4)


def test_clip_t_matches_open_clip_forward_logits(scorer, arrays):
    """Through the model's forward (normalised features and logit scale): logits / scale on the diagonal."""
    pixels = torch.stack([scorer.preprocess(img) for img in pil(arrays)])
    with torch.no_grad():
        image_features, text_features, logit_scale = scorer.model(pixels, scorer.tokenizer(TEXTS))
    logits = logit_scale * image_features @ text_features.T
    torch.testing.assert_close(scorer.text_image(pil(arrays), TEXTS), logits.diagonal() / logit_scale,
                               atol=1e-5, rtol=1e-4)


def test_clip_i_is_mean_cosine_to_every_reference(scorer, arrays):
    images, references = pil(arrays[:2]), pil(arrays[2:])
    embeds, ref_embeds = scorer.embed_images(images), scorer.embed_images(references)
    expected = torch.tensor([[torch.nn.functional.cosine_similarity(e, r, dim=0) for r in ref_embeds]
                             for e in embeds]).mean(dim=1)
    torch.testing.assert_close(scorer.image_image(images, references), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scorer.image_image(images, images[:1])[0], torch.tensor(1.0))


def test_embeddings_normalised_and_seeded(scorer, arrays):
    assert scorer.embed_images(pil(arrays)).shape == (len(arrays), 32)
    torch.testing.assert_close(scorer.embed_texts(TEXTS).norm(dim=-1), torch.ones(len(TEXTS)))
    same = ClipScorer(TINY_CLIP, pretrained=None, seed=3).embed_texts(TEXTS)
    other = ClipScorer(TINY_CLIP, pretrained=None, seed=4).embed_texts(TEXTS)
    torch.testing.assert_close(same, scorer.embed_texts(TEXTS))
    assert not torch.allclose(other, same)


def test_bad_input_is_named(scorer, arrays):
    with pytest.raises(ValueError, match="one text per image"):
        scorer.text_image(pil(arrays), TEXTS[:2])
    with pytest.raises(ValueError, match="at least one reference"):
        scorer.image_image(pil(arrays), [])
    with pytest.raises(ValueError, match="scorer.model_name"):
        ClipScorer("no-such-clip", pretrained=None)


def test_dino_subject_fidelity(arrays):
    dino = DinoScorer(pretrained=False, image_size=64)
    images = pil(arrays)
    assert dino.embed_images(images).shape == (len(images), 384)
    scores = dino.image_image(images, images[:1])
    torch.testing.assert_close(scores[0], torch.tensor(1.0))
    assert (scores[1:] < 0.999).all()


def test_subject_score_is_the_weighted_sum_of_the_mean_scores(scorer, arrays):
    """val/score and evaluate.py's score: weights x (mean CLIP-T, mean CLIP-I, mean DINO); per image, the same sum;
    score_se, the standard error of the per-image scores' mean."""
    dino = DinoScorer(pretrained=False, image_size=32)
    images, references, prompts = pil(arrays[:4]), pil(arrays[4:]), TEXTS[:4]
    weights = {"clip_t": 2.0, "clip_i": 0.5, "dino": 0.25}
    subject = SubjectScorer(scorer, references, weights, dino)
    means = {"clip_t": float(scorer.text_image(images, prompts).mean()),
             "clip_i": float(scorer.image_image(images, references).mean()),
             "dino": float(dino.image_image(images, references).mean())}
    scored = subject.score(images, prompts)
    per_image = subject.per_image(images, prompts)
    standard_error = float(per_image["score"].std()) / len(images) ** 0.5  # sample SD (n - 1) / sqrt(n)
    assert scored == pytest.approx({**means, "score": sum(weights[k] * means[k] for k in weights),
                                    "score_se": standard_error}, abs=1e-6)
    assert float(per_image["score"].mean()) == pytest.approx(scored["score"], abs=1e-6)
    without_references = SubjectScorer(scorer, [], weights, dino).per_image(images, prompts)
    assert set(without_references) == {"clip_t"}  # no CLIP-I, DINO or score to report
    with pytest.raises(ValueError, match="one prompt per image"):
        subject.per_image(images, prompts[:1])
