"""The UniRep API: shapes, Matryoshka truncation, batching, tasks, pooling, scoring, saving."""
import numpy as np
import pytest
import torch

import unirep_core
from unirep_core import Calibrator, MatryoshkaHead, UniRep, list_models
from unirep_core.device import pick_device
from tests.tiny_models import TINY_DIMS, build_tiny_text_encoder, make_image, tiny_fusion_config

TEXTS = ["hello world", "xin chào thế giới", "a dog on the beach with a red ball", "cat", "the man in blue"]


def test_public_surface_is_pinned():
    assert set(unirep_core.__all__) >= {"UniRep", "MatryoshkaHead", "Calibrator", "list_models", "ModelConfig"}


def test_shapes_norms_dims(tiny_model):
    assert tiny_model.dims == TINY_DIMS and tiny_model.dim == 32
    v = tiny_model.encode(text=TEXTS, task="query")
    assert v.shape == (5, 32) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    for d in TINY_DIMS:
        vd = tiny_model.encode(text=TEXTS, embedding_dim=d)
        assert vd.shape == (5, d)
        np.testing.assert_allclose(np.linalg.norm(vd, axis=1), 1.0, atol=1e-5)


def test_truncation_is_exactly_normalised_prefix(tiny_model):
    full = tiny_model.encode(text=TEXTS, images=[make_image(i) for i in range(5)])
    for d in TINY_DIMS:
        expect = full[:, :d] / np.linalg.norm(full[:, :d], axis=1, keepdims=True)
        got = tiny_model.encode(text=TEXTS, images=[make_image(i) for i in range(5)], embedding_dim=d)
        np.testing.assert_allclose(got, expect, atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 64])
def test_results_do_not_depend_on_batch_size_or_order(tiny_model, batch_size):
    texts = TEXTS * 2 + ["a much longer sentence about a dog running in the park with a frisbee"]
    reference = np.stack([tiny_model.encode(text=t)[0] for t in texts])
    got = tiny_model.encode(text=texts, batch_size=batch_size)
    np.testing.assert_allclose(got, reference, atol=1e-5)


def test_images_are_decoded_one_batch_at_a_time(tiny_model, monkeypatch):
    import unirep_core.model as model_module

    seen = []
    real = model_module.decode_items

    def spy(chunk, max_pixels):
        seen.append(len(chunk))
        return real(chunk, max_pixels)

    monkeypatch.setattr(model_module, "decode_items", spy)
    tiny_model.encode(images=[make_image(i) for i in range(7)], batch_size=3)
    assert seen == [3, 3, 1]


def test_progress_bar_when_asked(tiny_model, capsys):
    tiny_model.encode(text=TEXTS, batch_size=2, show_progress=True)
    assert "encode" in capsys.readouterr().err
    tiny_model.encode(text=TEXTS, batch_size=2, show_progress=False)
    assert capsys.readouterr().err == ""


def test_convert_to(tiny_model):
    t = tiny_model.encode(text=TEXTS, convert_to="torch")
    assert isinstance(t, torch.Tensor) and t.shape == (5, 32) and not t.requires_grad
    lst = tiny_model.encode(text=TEXTS[:2], convert_to="list")
    assert isinstance(lst, list) and len(lst) == 2 and len(lst[0]) == 32


def test_task_prefix_comes_from_config(tiny_model):
    # tiny config: query -> "query: ", text_pair -> "" (no prefix)
    q = tiny_model.encode(text="a dog", task="query")
    manual = tiny_model.encode(text="query: a dog", task="text_pair")
    np.testing.assert_allclose(q, manual, atol=1e-6)
    d = tiny_model.encode(text="a dog", task="document")
    assert not np.allclose(q, d, atol=1e-3)
    for task in ("query", "document", "text_pair", "instr", "ocr", "vqa_single", "vqa_multi"):
        assert tiny_model.encode(text="x", task=task).shape == (1, 32)


def test_pick_device():
    assert pick_device(None).type in {"cuda", "mps", "cpu"}
    if not torch.cuda.is_available():
        assert pick_device(None).type in {"cpu", "mps"}
    assert pick_device("cpu").type == "cpu"


def test_similarity_and_score(tiny_model):
    a = tiny_model.encode(text=TEXTS[:2], task="query")
    b = tiny_model.encode(text=TEXTS, task="document")
    sim = tiny_model.similarity(a, b)
    assert sim.shape == (2, 5)
    np.testing.assert_allclose(sim, a @ b.T, atol=1e-5)
    s = tiny_model.score(a, b)
    assert s.shape == (2, 5) and np.all((s >= 0) & (s <= 1))
    # calibrated score is a monotonic map of similarity
    order_sim = np.argsort(sim.ravel())
    assert np.all(np.diff(s.ravel()[order_sim]) >= -1e-7)
    # truncated vectors work, and picking a size with no calibration is an error
    a8, b8 = tiny_model.encode(text=TEXTS[:2], embedding_dim=8), tiny_model.encode(text=TEXTS, embedding_dim=8)
    assert tiny_model.similarity(a8, b8).shape == (2, 5)
    with pytest.raises(ValueError, match="different sizes"):
        tiny_model.similarity(a8, b)
    with pytest.raises(ValueError, match=r"allowed sizes: \[8, 16, 32\]"):
        tiny_model.score(np.ones((1, 5)), np.ones((1, 5)))


def test_calibrator_per_size_monotonic_bounded():
    cal = Calibrator({"8": [5.0, -1.0], "16": [30.0, -20.0]}, dims=(8, 16))
    cos = np.linspace(-1, 1, 101)
    for d in (8, 16):
        p = cal(cos, d)
        assert np.all((p >= 0) & (p <= 1)) and np.all(np.diff(p) >= 0)
    np.testing.assert_allclose(cal(np.array([0.2]), 8), 1 / (1 + np.exp(-(5 * 0.2 - 1))), rtol=1e-6)
    assert not np.allclose(cal(cos, 8), cal(cos, 16))
    assert cal.fitted
    with pytest.raises(ValueError, match="slope must be > 0"):
        Calibrator({"8": [-1.0, 0.0]}, dims=(8,))
    # extreme inputs do not overflow
    assert np.all(np.isfinite(Calibrator({"8": [1e4, 0.0]}, dims=(8,))(np.array([-1.0, 1.0]), 8)))


def test_score_uses_the_calibration_of_the_vectors_size(tiny_model):
    saved = tiny_model.calibrator
    try:
        tiny_model.calibrator = Calibrator({"8": [1.0, 0.0], "16": [1.0, 0.0], "32": [50.0, -25.0]}, TINY_DIMS)
        v8 = tiny_model.encode(text=TEXTS, embedding_dim=8)
        v32 = tiny_model.encode(text=TEXTS)
        s8, s32 = tiny_model.score(v8, v8), tiny_model.score(v32, v32)
        np.testing.assert_allclose(s8, 1 / (1 + np.exp(-tiny_model.similarity(v8, v8))), atol=1e-5)
        np.testing.assert_allclose(s32, 1 / (1 + np.exp(-(50 * tiny_model.similarity(v32, v32) - 25))), atol=1e-5)
    finally:
        tiny_model.calibrator = saved


def test_matryoshka_head_identity_init():
    head = MatryoshkaHead(16, (4, 8, 16))
    x = torch.randn(3, 16)
    torch.testing.assert_close(head(x), x)
    with pytest.raises(ValueError, match="identity head init needs"):
        MatryoshkaHead(12, (4, 8, 16))


def test_save_and_load_round_trip(tiny_model, tmp_path):
    tiny_model.calibrator = Calibrator({"8": [7.0, -3.0], "16": [8.0, -4.0], "32": [9.0, -5.0]}, TINY_DIMS)
    try:
        out = tiny_model.save_pretrained(tmp_path / "saved")
        assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
        again = UniRep.from_pretrained(out, device="cpu")
    finally:
        tiny_model.calibrator = Calibrator(None, TINY_DIMS)
    texts, imgs = TEXTS[:3], [make_image(1), None, [make_image(2), make_image(3)]]
    np.testing.assert_allclose(again.encode(text=texts, images=imgs), tiny_model.encode(text=texts, images=imgs), atol=1e-6)
    assert again.calibrator.params[16] == (8.0, -4.0)
    # only the trained parts are saved: head + projector, not the text encoder
    from safetensors.torch import load_file

    keys = set(load_file(str(out / "model.safetensors")))
    assert keys and all(k.startswith(("head.", "backbone.projector.")) for k in keys)


def test_unknown_model_names_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'no-such-model'; registered names"):
        UniRep.from_pretrained("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no config.json"):
        UniRep.from_pretrained(tmp_path / "empty")


def test_registry_lists_json_configs():
    names = list_models()
    assert "unirep-mini" in names
    from unirep_core.registry import registered_config_path
    from unirep_core.config import ModelConfig

    for name in names:
        path = registered_config_path(name)
        if path is not None:
            assert ModelConfig.from_file(path).name == name


def test_config_validation(tmp_path):
    from unirep_core.config import ModelConfig

    base = tiny_fusion_config(tmp_path)
    with pytest.raises(ValueError, match="prefixes missing"):
        ModelConfig.from_dict({**base, "prefixes": {"query": ""}})
    with pytest.raises(ValueError, match="unknown pooling mode"):
        ModelConfig.from_dict({**base, "pooling": {"mode": "max"}})
    with pytest.raises(ValueError, match="unknown keys"):
        ModelConfig.from_dict({**base, "colour": "red"})


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    return build_tiny_text_encoder(tmp_path_factory.mktemp("enc"))


@pytest.mark.parametrize("mode", ["mean", "cls", "last", "multi_layer"])
def test_pooling_modes(text_dir, mode):
    layers = [1, 2]
    pooling = {"mode": mode, "layers": layers} if mode == "multi_layer" else {"mode": mode}
    head = {"input_dim": 64 if mode == "multi_layer" else 32, "dims": [8, 32] if mode != "multi_layer" else [16, 64],
            "init": "identity"}
    torch.manual_seed(0)
    model = UniRep.from_config(tiny_fusion_config(text_dir, pooling=pooling, head=head), device="cpu")
    texts = ["a dog", "the red cat on the mat with a hat"]
    got = model.encode(text=texts, task="text_pair", convert_to="torch")
    from unirep_core import Item

    # reference: each text alone (no padding), pooled by hand
    for i, t in enumerate(texts):
        batch = model.prepare([Item(t, [])])
        with torch.inference_mode():
            out = model.backbone.encode_tokens(batch, output_hidden_states=True)
        states = out.last_hidden_state[0]
        expect = {
            "mean": states.mean(0),
            "cls": states[0],
            "last": states[-1],
            "multi_layer": torch.cat([out.hidden_states[k][0, 0] for k in layers]),
        }[mode]
        torch.testing.assert_close(got[i], torch.nn.functional.normalize(expect, dim=0), atol=1e-5, rtol=1e-4)


def test_untrained_projector_is_identical_across_builds(tmp_path):
    """Two processes building the same untrained model must embed images identically."""
    text_dir = build_tiny_text_encoder(tmp_path / "enc")
    torch.manual_seed(1)
    a = UniRep.from_config(tiny_fusion_config(text_dir), device="cpu")
    torch.manual_seed(2)
    b = UniRep.from_config(tiny_fusion_config(text_dir), device="cpu")
    img = make_image(4)
    np.testing.assert_allclose(a.encode(images=img), b.encode(images=img), atol=1e-6)
