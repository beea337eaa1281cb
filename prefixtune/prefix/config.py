"""The prefix's hyperparameters, in the paper's words (Li & Liang, 2021, sections 4-7).

PrefixConfig is also an OmegaConf / Hydra structured config: `mode` and `init` are typed with
their Enums, so `OmegaConf.structured(PrefixConfig)` refuses `mode=bogus` listing the choices,
and `PrefixConfig(**OmegaConf.to_container(node))` gives a validated config. The Enums are
str Enums that print as their value, so `config.mode == "prefix"` holds, messages read
`prefix.mode=infix`, and `to_dict()` (the saved JSON) holds plain strings.
"""

from __future__ import annotations

import dataclasses
import numbers
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum


class PrefixError(ValueError):
    """A problem with a prefix or its checkpoint; the message is one line, fit for a CLI."""


class _Choice(str, Enum):
    """A str Enum whose str() and format() are its value ("infix", not "PrefixMode.infix")."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return self.value.__format__(spec)


class PrefixMode(_Choice):
    """Where the trainable activations sit."""

    prefix = "prefix"  # [P; x; y]: every real token attends to P, at every layer
    infix = "infix"  # [x; P; y]: only y (from the separator on) attends to P
    embedding = "embedding"  # trainable input vectors only, as in prompt tuning


class PrefixInit(_Choice):
    random = "random"
    text = "text"  # the frozen LM's own activations on `init_text`


@dataclass
class PrefixConfig:
    """Everything that defines a prefix; saved next to every checkpoint as JSON."""

    length: int = 10
    """L, the number of prefix positions."""
    mode: PrefixMode = PrefixMode.prefix
    """prefix | infix | embedding."""
    reparam: bool = True
    """Train P' through an MLP (k -> h, tanh, h -> P) instead of P directly; the paper found
    direct optimisation unstable. Only P is kept after training."""
    reparam_dim: int = 512
    """k, the width of P'."""
    reparam_hidden: int = 512
    """h, the MLP's hidden width (512 for table-to-text, 800 for summarisation)."""
    dropout: float = 0.0
    """Dropout on P during training (the paper's code used 0.0 for GPT-2)."""
    init: PrefixInit = PrefixInit.random
    """random | text."""
    init_text: str = "table-to-text:"
    """The text whose activations initialise P when init=text. Its token count T rarely equals L:
    with T < L the text's tokens are repeated cyclically up to L tokens, with T > L the first L
    tokens are kept. Either way P holds the LM's real activations on a real L-token sequence."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (one-line PrefixError naming it) and normalise it: numbers to
        plain int / float, `mode` and `init` (a string or any Enum with that value) to their
        Enum members."""
        self._check_types()
        if self.length < 1:
            raise PrefixError(f"prefix.length must be >= 1, got {self.length}")
        self.mode = _choice("prefix.mode", self.mode, PrefixMode)
        self.init = _choice("prefix.init", self.init, PrefixInit)
        if self.reparam and (self.reparam_dim < 1 or self.reparam_hidden < 1):
            raise PrefixError("prefix.reparam_dim and prefix.reparam_hidden must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise PrefixError(f"prefix.dropout must be in [0, 1), got {self.dropout}")
        if self.init == PrefixInit.text and not str(self.init_text).strip():
            raise PrefixError("prefix.init=text needs a non-empty prefix.init_text")

    def check_model(self, is_encoder_decoder: bool, model: str) -> None:
        """Refuse a mode the model cannot take: encoder-decoder models take mode=prefix only.

        `model` names the model in the message (e.g. its model_type, or "model=bart-base")."""
        if is_encoder_decoder and _value(self.mode) != PrefixMode.prefix.value:
            raise PrefixError(
                f"prefix.mode={_value(self.mode)} needs a decoder-only model; {model} is "
                "encoder-decoder (use prefix.mode=prefix)"
            )

    def _check_types(self) -> None:
        """Each field must hold its annotated type: an int field an integer (not a bool, not a
        string), a float field a number, a bool field a bool, a str or Enum field a string (or
        an Enum). Integers and numbers are normalised to plain int / float so that the JSON
        stays plain."""
        for name, kind in _field_types().items():
            value = getattr(self, name)
            if kind is bool:
                ok = isinstance(value, bool)
            elif kind is int:
                ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            elif kind is float:
                ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
            elif issubclass(kind, Enum):
                ok = isinstance(value, (str, Enum))
            else:
                ok = isinstance(value, kind)
            if not ok:
                raise PrefixError(
                    f"prefix.{name} must be {_type_words(kind)}, got {_show(value)} "
                    f"({type(value).__name__})"
                )
            if kind in (int, float):
                setattr(self, name, kind(value))

    def to_dict(self) -> dict:
        """The fields as plain JSON values (mode and init as strings)."""
        return {f.name: _value(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping) -> PrefixConfig:
        """A config from a plain mapping (e.g. a checkpoint's JSON); keys left out take their
        defaults, and every mistake (not a mapping, unknown key, wrong type, bad value) is a
        one-line PrefixError that names the key and the value."""
        if not isinstance(d, Mapping):
            raise PrefixError(f"a prefix config must be a mapping, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in d if k not in names]
        if unknown:
            raise PrefixError(
                f"unknown prefix config keys {sorted(map(str, unknown))}; valid: {sorted(names)}"
            )
        return cls(**d)


# Families the prefix cannot enter, and why (found by wrapping a tiny random model of every
# causal-LM family of transformers 5.24: tests/test_prefix_families.py). The probe pass in
# wiring.py refuses the other layouts it cannot handle (no attention-function registry, layers
# without attention, split attention, arguments SDPA cannot honour) with a reason of its own;
# this table gives the reason where it knows better, before any model is run.
_STATE_SPACE = "a recurrent / state-space model: it has no attention keys/values for a prefix"
_OWN_POSITIONS = (
    "as a causal LM its decoder numbers positions itself and ignores position_ids, so neither "
    "the prefix's position shift nor left-padded prompts can be given (its encoder-decoder "
    "model is supported)"
)
UNSUPPORTED_FAMILIES: dict[str, str] = {
    "mamba": _STATE_SPACE,
    "mamba2": _STATE_SPACE,
    "falcon_mamba": _STATE_SPACE,
    "rwkv": _STATE_SPACE,
    "xlstm": _STATE_SPACE,
    "recurrent_gemma": "a hybrid of recurrent blocks and local attention: the recurrent blocks "
    "have no keys/values for a prefix",
}
# Refused only as decoder-only LMs (model_type is shared with a supported encoder-decoder).
UNSUPPORTED_DECODER_ONLY: dict[str, str] = {
    name: _OWN_POSITIONS
    for name in ("bart", "blenderbot", "blenderbot-small", "marian", "mbart", "pegasus", "plbart")
}


def check_family(model_type: str, is_encoder_decoder: bool = False) -> None:
    """A one-line PrefixError naming `model_type` and the reason where the family is known not
    to work with prefixes (UNSUPPORTED_FAMILIES, and UNSUPPORTED_DECODER_ONLY for a model that
    is not an encoder-decoder)."""
    reason = UNSUPPORTED_FAMILIES.get(model_type)
    if reason is None and not is_encoder_decoder:
        reason = UNSUPPORTED_DECODER_ONLY.get(model_type)
    if reason is not None:
        raise PrefixError(f"model type {model_type!r} is not supported: {reason}")


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _type_words(kind: type) -> str:
    return "a string" if issubclass(kind, Enum) else _TYPE_WORDS[kind]


def _field_types() -> dict[str, type]:
    global _FIELD_TYPES
    if _FIELD_TYPES is None:
        hints = typing.get_type_hints(PrefixConfig)
        _FIELD_TYPES = {f.name: hints[f.name] for f in dataclasses.fields(PrefixConfig)}
    return _FIELD_TYPES


_FIELD_TYPES: dict[str, type] | None = None


def _show(value: object, limit: int = 60) -> str:
    """repr(value) on one line and not too long, for error messages."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _value(value: object) -> object:
    """An Enum's value (any Enum: Hydra may hand over its own), anything else as it is."""
    return value.value if isinstance(value, Enum) else value


_E = typing.TypeVar("_E", bound=Enum)


def _choice(name: str, value: object, enum: type[_E]) -> _E:
    """`value` (a string or any Enum with one of `enum`'s values) as a member of `enum`."""
    valid = [e.value for e in enum]
    value = _value(value)
    if value not in valid:
        raise PrefixError(f"{name}={value!r} is not one of {valid}")
    return enum(value)
