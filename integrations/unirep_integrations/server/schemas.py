"""Request and response bodies of every facade (pydantic v2), which also make the OpenAPI schema.

Requests ignore unknown fields (clients such as Milvus or Weaviate send extras like ``user`` or
``dims``). Inputs are checked with one clear message per problem: token-id arrays are refused
by name, a wrong type says which item and what was expected.
"""
from __future__ import annotations

from typing import Any, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "InputItem", "EmbeddingRequest", "EmbeddingResponse", "MultimodalEmbeddingRequest",
    "MultimodalEmbeddingResponse", "ModelCard", "ModelList", "TEIEmbedRequest", "TEIRerankRequest", "TEIRank",
    "TEIInfo", "RerankRequest", "RerankResponse", "ScoreRequest", "ScoreResponse", "VectorizeRequest",
    "VectorizeResponse", "VectorsRequest", "VectorsConfig", "OpenAIErrorBody", "SimpleError", "TEIError",
    "FEATURE_TYPES",
]

FEATURE_TYPES = ("cls", "mean", "last_layer", "multi_layer")


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class InputItem(_Request):
    """One input: text, one image, several images, or text with image(s) fused into one vector."""

    text: Optional[str] = Field(None, description="text of the item")
    image: Optional[str] = Field(None, description="an image as a base64 data URL (data:image/png;base64,...) "
                                                   "or bare base64; URLs are not fetched")
    images: Optional[List[str]] = Field(None, description="several images of the item, same encoding as `image`")

    def image_list(self) -> list[str]:
        return ([self.image] if self.image is not None else []) + list(self.images or [])


ItemLike = Union[str, InputItem]


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_items(value: Any, *, objects: bool = True, single_object: bool = False) -> Any:
    """A string, or a list of strings (and item objects when ``objects``): checked with clear errors."""
    if isinstance(value, str):
        return value
    if single_object and isinstance(value, dict):
        return value
    if isinstance(value, list):
        if not value:
            raise ValueError("must not be empty")
        if all(_is_int(x) for x in value) or all(isinstance(x, list) and x and all(_is_int(t) for t in x)
                                                 for x in value):
            raise ValueError("token-id arrays are not supported: send the text as strings "
                             "(this server tokenizes with its own model's tokenizer)")
        for i, x in enumerate(value):
            if isinstance(x, str) or (objects and isinstance(x, dict)):
                continue
            want = "a string or an object {text, image, images}" if objects else "a string"
            raise ValueError(f"item {i} is {_kind(x)}; expected {want}")
        return value
    want = "a string or a list of strings/objects" if objects else "a string or a list of strings"
    raise ValueError(f"got {_kind(value)}; expected {want}")


# -- OpenAI ----------------------------------------------------------------------------------
class EmbeddingRequest(_Request):
    input: Union[str, List[ItemLike]] = Field(
        ..., description="a string, a list of strings, or items {text, image, images} (images as base64 data URLs)")
    model: Optional[str] = Field(None, description="accepted for compatibility; the server serves one model")
    dimensions: Optional[int] = Field(None, description="Matryoshka size; one of the model's sizes (GET /info)")
    encoding_format: Optional[Literal["float", "base64"]] = Field(
        "float", description="base64: little-endian float32 bytes, as OpenAI")
    task: Optional[str] = Field(None, description="query, document (default), or another task of the model")
    input_type: Optional[str] = Field(None, description="alias of task (Cohere/Voyage style: query, document)")
    user: Optional[str] = None

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, v: Any) -> Any:
        return check_items(v)


class EmbeddingObject(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[List[float], str]


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: List[EmbeddingObject]
    model: str
    usage: Usage


class MultimodalEmbeddingRequest(EmbeddingRequest):
    input: Union[str, InputItem, List[ItemLike]] = Field(
        ..., description="items {text, image, images}, strings, or one item")
    embedding_type: Literal["matryoshka", "cls", "mean", "last_layer", "multi_layer"] = Field(
        "matryoshka",
        description="matryoshka: the calibrated UniRep embedding (as /v1/embeddings). The others are raw, "
                    "UNCALIBRATED backbone features, not Matryoshka (no `dimensions`): cls = first token, "
                    "mean = mask-weighted mean, last_layer = last real token, all of the last layer; "
                    "multi_layer = first-token states of the last layers, concatenated")
    normalize: bool = Field(True, description="L2-normalise raw features (the matryoshka type is always unit norm)")

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, v: Any) -> Any:
        return check_items(v, single_object=True)


class MultimodalEmbeddingResponse(EmbeddingResponse):
    embedding_type: str
    calibrated: bool
    dimensions: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "unirep"
    dimensions: List[int] = []


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: List[ModelCard]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class OpenAIErrorBody(BaseModel):
    error: OpenAIErrorDetail


# -- TEI -------------------------------------------------------------------------------------
class TEIEmbedRequest(_Request):
    inputs: Union[str, List[str]]
    normalize: bool = Field(True, description="vectors are always unit norm; false is accepted and changes nothing")
    truncate: Optional[bool] = Field(False, description="false: inputs over the model's token limit are refused (413)")
    truncation_direction: Literal["right", "Right"] = "right"
    prompt_name: Optional[str] = Field(None, description="task: query or document (default)")
    dimensions: Optional[int] = None

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs(cls, v: Any) -> Any:
        return check_items(v, objects=False)


class TEIRerankRequest(_Request):
    query: str
    texts: List[str] = Field(..., min_length=1)
    return_text: bool = False
    raw_scores: bool = Field(False, description="true: cosine similarities instead of calibrated probabilities")
    truncate: Optional[bool] = Field(False, description="accepted; texts are cut at the model's token limit")


class TEIRank(BaseModel):
    index: int
    score: float
    text: Optional[str] = None


class TEIInfo(BaseModel):
    model_id: str
    model_sha: Optional[str] = None
    model_dtype: str
    model_type: dict
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    dimensions: List[int]


class TEIError(BaseModel):
    error: str
    error_type: str


# -- rerank / score --------------------------------------------------------------------------
class RerankRequest(_Request):
    query: Union[str, InputItem]
    documents: List[ItemLike] = Field(..., min_length=1)
    top_n: Optional[int] = Field(None, ge=1)
    return_documents: bool = False
    model: Optional[str] = None
    dimensions: Optional[int] = Field(None, description="Matryoshka size used for scoring (default: full)")

    @field_validator("documents", mode="before")
    @classmethod
    def _documents(cls, v: Any) -> Any:
        return check_items(v)


class RerankDocument(BaseModel):
    text: Optional[str] = None


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: Optional[RerankDocument] = None


class RerankResponse(BaseModel):
    results: List[RerankResult]
    model: str
    usage: Usage


class ScoreRequest(_Request):
    queries: Union[str, List[ItemLike]]
    documents: Union[str, List[ItemLike]]
    dimensions: Optional[int] = None
    model: Optional[str] = None

    @field_validator("queries", "documents", mode="before")
    @classmethod
    def _items(cls, v: Any) -> Any:
        return check_items(v)


class ScoreResponse(BaseModel):
    object: Literal["score_matrix"] = "score_matrix"
    scores: List[List[float]] = Field(..., description="calibrated P(relevant), rows = queries")
    similarities: List[List[float]] = Field(..., description="cosine similarities, rows = queries")
    dimensions: int
    model: str
    usage: Usage


# -- Weaviate module API -----------------------------------------------------------------------
class VectorsConfig(_Request):
    pooling_strategy: Optional[str] = Field(None, description="accepted and ignored: UniRep pools as its config says")
    task_type: Optional[str] = Field(None, description="passage (default) or query")
    dimensions: Optional[int] = None


class VectorizeRequest(_Request):
    texts: Optional[List[str]] = None
    images: Optional[List[str]] = Field(None, description="base64 images (Weaviate blob properties)")
    config: Optional[VectorsConfig] = None


class VectorizeResponse(BaseModel):
    textVectors: List[List[float]]
    imageVectors: List[List[float]]


class VectorsRequest(_Request):
    text: Optional[str] = None
    texts: Optional[List[str]] = None
    config: Optional[VectorsConfig] = None


class SingleVectorResponse(BaseModel):
    text: str
    vector: List[float]
    dim: int
    dims: int


class BatchVectorsResponse(BaseModel):
    vectors: List[List[float]]
    dims: int


class SimpleError(BaseModel):
    error: str
