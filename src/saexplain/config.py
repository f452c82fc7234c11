"""Typed configs: validated by pydantic, saved with every run, hashed for caching, and turned into CLI options."""

from __future__ import annotations

import hashlib
import inspect
import json
import types
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

import typer
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from saexplain.errors import ConfigError


def _parse_count(value: Any) -> Any:
    """'1M', '100k', '2.5m', '1_000_000' → int; other values pass through to pydantic."""
    if isinstance(value, str):
        v = value.strip().lower().replace("_", "")
        scale = {"k": 1_000, "m": 1_000_000, "b": 1_000_000_000}.get(v[-1:], 1)
        try:
            return int(float(v[:-1] if scale > 1 else v) * scale)
        except ValueError:
            return value
    return value


Count = Annotated[int, BeforeValidator(_parse_count)]
"""An integer that also accepts 1M / 100k on the command line."""


class Config(BaseModel):
    """Base class of every stage config. Unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # settings that change how fast results come, not what they are: left out of every identity (cache keys,
    # run identities, training folders). Declared once, here, per config.
    speed_fields: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    def identity(self) -> dict[str, Any]:
        """What results depend on: every field but the speed settings (JSON values)."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in self.speed_fields}

    def hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path):
        path = Path(path)
        try:
            return cls.model_validate_json(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except ValidationError as e:
            raise ConfigError(f"{path}: {_first_error(e)}") from None

    @classmethod
    def build(cls, **values: Any):
        """Validate values into a config; a bad value is one ConfigError line naming the field."""
        try:
            return cls(**values)
        except ValidationError as e:
            raise ConfigError(f"{cls.__name__}: {_first_error(e)}") from None


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(config)"
    return f"{loc}: {err['msg']} (got {err.get('input')!r})"


def _cli_type(annotation: Any) -> Any:
    """Map a pydantic field annotation to something typer can parse (Literal → str, X | None → X)."""
    origin = get_origin(annotation)
    if origin is Literal:
        return type(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _cli_type(args[0])
        return str
    return annotation


def config_options(*config_classes: type[Config]):
    """Decorator: the wrapped function receives validated config objects; its CLI options are the fields.

    ``@app.command() @config_options(SubjectConfig)`` gives ``--model``, ``--sae`` … and calls
    ``fn(subject=SubjectConfig(...), **other_options)``. The parameter name of each config is the
    class's ``cli_name`` (default: lower-case class name without 'config'). A class with a ``cli_prefix``
    (e.g. "sage_") gets its options prefixed (``--sage-max-llm-calls``), so stages can share field names.
    """

    def deco(fn):
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn)  # resolve string annotations (from __future__ import annotations)
        own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()
               if p.name not in {_param_name(c) for c in config_classes}]
        params = list(own)
        seen = {p.name for p in own}
        owners: dict[str, tuple[type[Config], str]] = {}
        for cls in config_classes:
            prefix = getattr(cls, "cli_prefix", "")
            for field_name, field in cls.model_fields.items():
                name = prefix + field_name
                if name in seen:
                    raise ValueError(f"option --{name} defined twice")
                seen.add(name)
                owners[name] = (cls, field_name)
                choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else None
                as_text = any(isinstance(m, BeforeValidator) for m in field.metadata)
                help_text = (field.description or "") + (f" [one of: {', '.join(map(str, choices))}]" if choices else "")
                params.append(
                    inspect.Parameter(
                        name,
                        inspect.Parameter.KEYWORD_ONLY,
                        default=typer.Option(field.get_default(call_default_factory=True), help=help_text,
                                             show_default=True),
                        annotation=str if as_text else _cli_type(field.annotation),
                    )
                )

        def wrapper(**kwargs):
            configs = {}
            for cls in config_classes:
                values = {owners[k][1]: kwargs.pop(k) for k in list(kwargs) if k in owners and owners[k][0] is cls}
                configs[_param_name(cls)] = cls.build(**values)
            return fn(**kwargs, **configs)

        wrapper.__name__ = fn.__name__
        wrapper.__doc__ = fn.__doc__
        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        return wrapper

    return deco


def _param_name(cls: type[Config]) -> str:
    return getattr(cls, "cli_name", None) or cls.__name__.lower().removesuffix("config")
