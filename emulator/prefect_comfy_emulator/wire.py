"""What the emulator accepts and how it refuses: strict request models and wire-shaped errors.

Request bodies are strict (``extra="forbid"``, no type coercion), so a client that drifts from the
protocol fails in tests. Every error leaves as ``{"error": {"code", "message", "details"}}``.

Example:
    >>> from prefect_comfy_emulator.wire import ApiError
    >>> ApiError(404, "not_found", "job job_x not found").body()
    {'error': {'code': 'not_found', 'message': 'job job_x not found', 'details': []}}
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.responses import JSONResponse

from prefect_comfy.models import MODEL_TYPES

ERROR_CODES = frozenset(
    {
        "invalid_request",
        "validation_error",
        "not_found",
        "unauthorized",
        "forbidden",
        "rate_limited",
        "internal_error",
        "upload_not_found",
        "download_failed",
    }
)

ModelType = Literal[
    "checkpoint",
    "lora",
    "vae",
    "controlnet",
    "embedding",
    "upscaler",
    "clip",
    "unet",
    "diffusion_model",
]
assert set(ModelType.__args__) == set(MODEL_TYPES)  # type: ignore[attr-defined]

Tag = Annotated[str, Field(min_length=1, max_length=128)]
Name = Annotated[str, Field(min_length=1, max_length=255)]


class ApiError(Exception):
    """An error answer: HTTP status, wire code, message, details and extra headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = list(details or [])
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def not_found(kind: str, resource_id: str) -> ApiError:
    return ApiError(404, "not_found", f"{kind} {resource_id!r} not found")


class StrictBody(BaseModel):
    """Base of request bodies: unknown fields and type coercion are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class CreateJob(StrictBody):
    workflow: dict[str, Any]
    tags: list[Tag] = Field(default_factory=list, max_length=50)


class CreateJobBatch(StrictBody):
    jobs: list[CreateJob] = Field(min_length=1, max_length=50)


class ValidateWorkflow(StrictBody):
    workflow: dict[str, Any]


class ModelMetadata(StrictBody):
    display_name: str | None = None
    base_model: str | None = None
    trained_words: list[str] | None = None
    description: str | None = None
    preview_url: str | None = None
    preview_image: str | None = None


class _FromUrl(StrictBody):
    url: str
    name: Name | None = None
    tags: list[Tag] = Field(default_factory=list, max_length=50)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or len(value) > 4096:
            raise ValueError("url must be an http:// or https:// URL")
        return value


class CreateInputFromUrl(_FromUrl):
    pass


class CreateModelFromUrl(_FromUrl):
    type: ModelType
    metadata: ModelMetadata | None = None


class GetInputUploadUrl(StrictBody):
    name: Name
    mime_type: Annotated[str, Field(min_length=1, max_length=255)]
    size: Annotated[int, Field(ge=1, le=50 * 1024**3)]
    tags: list[Tag] = Field(default_factory=list, max_length=50)


class GetModelUploadUrl(GetInputUploadUrl):
    type: ModelType
    metadata: ModelMetadata | None = None


class FaultRequest(StrictBody):
    """Body of ``POST /_emulator/faults``."""

    status: Literal[429, 500, 502, 503]
    count: Annotated[int, Field(ge=1, le=100_000)] = 1
    retry_after: Annotated[float, Field(ge=0)] | None = None
    path: str | None = None
    when: Literal["before", "after"] = "before"


class DuplicateEvents(StrictBody):
    enabled: bool


class CloseAfterConnected(StrictBody):
    count: int = Field(ge=0, le=1_000_000)


B = TypeVar("B", bound=BaseModel)


def details_of(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors as ``[{"field", "message"}]`` (never echoing the input)."""
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "body", "message": err["msg"]}
        for err in exc.errors(include_input=False, include_url=False)
    ]


MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a JSON body may have (a ComfyUI workflow needs about 6)."""


def _bad_json(message: str) -> ApiError:
    return ApiError(400, "invalid_request", f"the request body is not valid JSON: {message}")


def _refuse_constant(name: str) -> Any:
    raise _bad_json(f"{name} is not a JSON number; send a finite number or null")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _bad_json(f"the number {text[:32]} is out of range; send a finite number")
    return value


def _check_tree(data: Any) -> None:
    """Refuse what parsed but cannot be answered back: nesting past `MAX_JSON_DEPTH` and
    strings that are not valid Unicode (lone surrogates). Iterative, so depth cannot overflow it."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise _bad_json("a string holds a lone surrogate (invalid Unicode)") from None
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > MAX_JSON_DEPTH:
            raise _bad_json(f"arrays and objects are nested more than {MAX_JSON_DEPTH} deep")
        items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
        for key, item in items:
            if key is not None:
                stack.append((key, depth))
            stack.append((item, depth + 1))


def parse_json(raw: bytes) -> Any:
    """The JSON of a request body, or a 400 ``invalid_request``.

    Stricter than `json.loads`, so that whatever is accepted can be stored and answered back:
    ``NaN``, ``Infinity`` and numbers that overflow to infinity are refused, and so are nesting past
    `MAX_JSON_DEPTH` and lone surrogates.

    Example:
        >>> parse_json(b'{"x": NaN}')
        Traceback (most recent call last):
        ...
        prefect_comfy_emulator.wire.ApiError: the request body is not valid JSON: NaN is not a JSON number; send a finite number or null
    """
    try:
        data = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise _bad_json(f"arrays and objects are nested more than {MAX_JSON_DEPTH} deep") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad_json(str(exc)) from None
    _check_tree(data)
    return data


def parse_body(model: type[B], raw: bytes) -> B:
    """A strict body model from raw JSON: 400 for malformed JSON, 422 for a schema mismatch."""
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise ApiError(
            422, "validation_error", "Request validation failed",
            [{"field": "body", "message": "the body must be a JSON object"}],
        )  # fmt: skip
    return validate_model(model, data)


def validate_model(model: type[B], data: Any) -> B:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(
            422, "validation_error", "Request validation failed", details_of(exc)
        ) from None


def split_tags(value: str | None) -> list[str]:
    """Tags from a comma-separated form or query value (blank items dropped)."""
    if not value:
        return []
    return [t.strip() for t in value.split(",") if t.strip()]
