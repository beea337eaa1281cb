"""Request bodies (pydantic, strict: a wrong type is a 400 naming the field, never a coercion)
and the OpenAI-style error every failure becomes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOPS = 4  # OpenAI's limit on stop sequences


class APIError(Exception):
    """An HTTP error with OpenAI's body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @property
    def kind(self) -> str:
        return {
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            409: "conflict_error",
            429: "rate_limit_error",
            503: "service_unavailable",
        }.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class CompletionRequest(_Strict):
    """POST /v1/completions: OpenAI's fields, and beam search as an extension.

    temperature 0 (or num_beams > 1) decodes deterministically; otherwise each choice samples
    with its own generator, seeded by `seed` + its index when a seed is given."""

    model: str
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=64)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    num_beams: int = Field(1, ge=1, le=64)
    length_penalty: float = 1.0
    user: str | None = None  # accepted and ignored, as a server without accounts can
    # OpenAI fields this server does not implement: accepted only at their no-op values
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | list[str]) -> str | list[str]:
        prompts = [value] if isinstance(value, str) else value
        if not prompts:
            raise ValueError("prompt is an empty list")
        if any(not p.strip() for p in prompts):
            raise ValueError("prompt is empty")
        return value

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [] if value is None else [value] if isinstance(value, str) else value
        if len(stops) > MAX_STOPS or any(not s for s in stops):
            raise ValueError(f"stop takes at most {MAX_STOPS} non-empty strings")
        return value

    @model_validator(mode="after")
    def _unsupported(self) -> CompletionRequest:
        for name, neutral in (
            ("echo", (False,)),
            ("logprobs", (None, 0)),
            ("best_of", (None, 1)),
            ("suffix", (None,)),
            ("presence_penalty", (0.0,)),
            ("frequency_penalty", (0.0,)),
            ("logit_bias", (None,)),
        ):
            if getattr(self, name) not in neutral:
                raise APIError(400, f"{name} is not supported by this server", param=name)
        if self.num_beams > 1:
            for name in ("temperature", "top_p", "seed"):
                if name in self.model_fields_set and getattr(self, name) not in (0.0, 1.0, None):
                    raise APIError(400, f"{name}: beam search does not sample", param=name)
            if self.n > 1:
                raise APIError(400, "n > 1 needs sampling; beam search returns its best", param="n")
        return self

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def stops(self) -> list[str]:
        return [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else self.stop

    @property
    def sampled(self) -> bool:
        return self.num_beams == 1 and self.temperature > 0.0


class PrefixRequest(_Strict):
    """POST /v1/prefixes: a prefix folder to serve as `name` (default: the folder's name; a
    relative path is under --prefixes, and no path means --prefixes/name)."""

    name: str | None = None
    path: str | None = None

    @model_validator(mode="after")
    def _either(self) -> PrefixRequest:
        if self.name is None and self.path is None:
            raise APIError(400, "give a name, a path, or both", param="path")
        return self
