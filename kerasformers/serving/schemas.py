"""Request bodies (OpenAI's field names where OpenAI has the endpoint) and the error shape.

Every body is checked strictly: a wrong type is not coerced (``"max_tokens": "5"`` is an error)
and an unknown field is an error naming it, never ignored. Errors use OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``, with ``param`` naming the field.

>>> CompletionRequest.model_validate({"prompt": "Hi", "max_tokens": 4}).max_tokens
4
>>> api_error_from_validation(EmbeddingRequest, {"input": "x", "dimension": 8}).param
'dimension'
"""

from typing import List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_INPUTS = 2048  # texts per request, as OpenAI's embeddings endpoint
UNION_TAGS = ("str", "list[str]", "int", "float", "bool", "none")


class ApiError(Exception):
    """An HTTP error answered as ``{"error": {...}}`` (OpenAI's shape)."""

    def __init__(self, status, message, param=None, type=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def body(self):
        return {
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": None}
        }


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: Optional[str] = None
    user: Optional[str] = None  # OpenAI's end-user id: accepted, not used


Texts = Union[str, List[str]]


class EmbeddingRequest(_Request):
    """POST /v1/embeddings: ``input`` a text or a list of texts."""

    input: Texts
    encoding_format: Literal["float", "base64"] = "float"


class CompletionRequest(_Request):
    """POST /v1/completions. temperature 0 is greedy (token-identical to `generate`);
    top_k and repetition_penalty are extensions (as vLLM's)."""

    prompt: Texts
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stop: Optional[Union[str, List[str]]] = None
    seed: Optional[int] = None
    repetition_penalty: float = Field(1.0, gt=0.0)


class FillMaskRequest(_Request):
    """POST /v1/fill-mask: texts with the tokenizer's mask token (``[MASK]``)."""

    input: Texts
    top_k: int = Field(5, ge=1, le=100)


class TokenizeRequest(_Request):
    """POST /v1/tokenize."""

    input: Texts


def texts(value, field):
    """A request's texts as a list, checked: 1..MAX_INPUTS non-empty strings."""
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        raise ApiError(422, f"{field} is an empty list", param=field)
    if len(items) > MAX_INPUTS:
        raise ApiError(
            422, f"{field} has {len(items)} texts; at most {MAX_INPUTS} per request", param=field
        )
    for i, text in enumerate(items):
        if not text:
            where = field if isinstance(value, str) else f"{field}[{i}]"
            raise ApiError(422, f"{where} is an empty string", param=field)
    return items


def api_error_from_validation(schema, data):
    """The ApiError for a body that does not validate (None if it does)."""
    try:
        schema.model_validate(data)
    except ValidationError as error:
        return _validation_error(error)
    return None


def parse(schema, data):
    """The validated request, or an ApiError (422) naming every bad field."""
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        raise _validation_error(error) from None


def _validation_error(error):
    problems, first = [], None
    for e in error.errors():
        # Union members add their type to loc ("input.list[str].1"); keep the field path
        loc = [str(p) for p in e["loc"] if str(p) not in UNION_TAGS]
        field = ".".join(loc) or "body"
        first = first or (loc[0] if loc else None)
        message = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        problems.append(f"{field}: {message}")
    unique = list(dict.fromkeys(problems))
    return ApiError(422, "; ".join(unique), param=first)
