"""Prompt templates as files (TOML) beside the stage that uses them. One template renders either as chat
messages (instruction-tuned models) or as a few-shot completion prompt (base models such as the default
Gemma 3 270M), from the same system text, worked examples and user text.

    system = "..."            # instructions
    user = "... {field} ..."  # str.format fields, filled by render()
    answer_prefix = "Answer:" # completion mode: what the model continues from
    [[examples]]              # worked examples (optional)
    user = "..."
    assistant = "..." """

from __future__ import annotations

import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from saexplain.errors import SaexplainError


@dataclass(frozen=True)
class Template:
    name: str
    system: str
    user: str
    examples: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    answer_prefix: str = "Answer:"

    @classmethod
    def load(cls, path: str | Path) -> Template:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise SaexplainError(f"prompt template not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise SaexplainError(f"{path}: not valid TOML ({e})") from None
        for key in ("system", "user"):
            if key not in data:
                raise SaexplainError(f"{path}: missing '{key}'")
        examples = tuple((ex["user"], ex["assistant"]) for ex in data.get("examples", []))
        return cls(path.stem, data["system"].strip(), data["user"].strip(), examples,
                   data.get("answer_prefix", "Answer:"))

    @property
    def fields(self) -> set[str]:
        return {f for _, f, _, _ in string.Formatter().parse(self.user) if f}

    def _user(self, values: dict) -> str:
        missing = self.fields - set(values)
        if missing:
            raise SaexplainError(f"template {self.name}: no value for {', '.join(sorted(missing))}")
        return self.user.format(**values)

    def chat(self, **values) -> list[tuple[str, str]]:
        msgs = [("system", self.system)]
        for u, a in self.examples:
            msgs += [("user", u), ("assistant", a)]
        return msgs + [("user", self._user(values))]

    def completion(self, **values) -> str:
        parts = [self.system, ""]
        for u, a in self.examples:
            parts += [u, f"{self.answer_prefix} {a}", ""]
        parts += [self._user(values), self.answer_prefix]
        return "\n".join(parts)


def template(stage_file: str, name: str) -> Template:
    """The template `name` in the `prompts/` folder beside a stage module (pass `__file__`)."""
    return Template.load(Path(stage_file).parent / "prompts" / f"{name}.toml")
