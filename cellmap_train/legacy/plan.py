"""The result of a translation: ordered Hydra overrides, plus notes for what did not map."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser

from cellmap_train.legacy.fold import PathValue
from cellmap_train.legacy.reader import ConfigFile, LegacyError, Note

_UNQUOTED = re.compile(r"^[A-Za-z0-9_./\-+:@%]+$")
_parser = OverridesParser.create()


def _parsed(token: str) -> Any:
    value = _parser.parse_override(f"k={token}").value()
    return [_parsed_item(v) for v in value] if isinstance(value, list) else _parsed_item(value)


def _parsed_item(value):
    return str(value) if type(value).__name__ == "QuotedString" else value


def hydra_string(text: str) -> str:
    """A string as a Hydra override token: bare when Hydra reads it back unchanged, else quoted."""
    if _UNQUOTED.match(text):
        try:
            if _parser.parse_override(f"k={text}").value() == text:
                return text
        except Exception:  # noqa: BLE001 - any parse failure just means "quote it"
            pass
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def hydra_value(value: Any) -> str:
    """Python value -> Hydra override value syntax (no spaces, so `$(...)` splits it right)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return ("-inf" if value < 0 else "inf") if math.isinf(value) else "nan" if math.isnan(value) else repr(value)
    if isinstance(value, PathValue):
        return hydra_string(value.text)
    if isinstance(value, str):
        return hydra_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{hydra_string(str(k))}:{hydra_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as an override")


def plain(value: Any) -> Any:
    """Tuples -> lists, paths -> strings: the form the composed config holds."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value.text if isinstance(value, PathValue) else value


@dataclass
class Override:
    key: str
    value: Any = None
    kind: str = "set"  # set | group | add | delete

    def token(self) -> str:
        if self.kind == "delete":
            return f"~{self.key}"
        if self.kind == "group":
            return f"{self.key}={self.value}"
        return f"{'+' if self.kind == 'add' else ''}{self.key}={hydra_value(self.value)}"


@dataclass
class Plan:
    config: ConfigFile
    allow_exec: bool = False
    overrides: list[Override] = field(default_factory=list)
    needs_exec: list[Note] = field(default_factory=list)
    python_path: list[str] = field(default_factory=list)  # folders a custom model is imported from
    run_folder: str | None = None  # where `csc train` trains (hydra.run.dir), and why there
    run_folder_origin: str = ""
    unmapped_model: Note | None = None  # a model_name nothing here builds: training needs model._target_

    @property
    def notes(self) -> list[Note]:
        return self.config.notes

    def group(self, name: str, option: str) -> None:
        self.overrides = [o for o in self.overrides if not (o.kind == "group" and o.key == name)]
        self.overrides.append(Override(name, option, "group"))

    def set(self, key: str, value: Any) -> None:
        self.overrides.append(Override(key, plain(value)))

    def delete(self, key: str) -> None:
        self.overrides.append(Override(key, kind="delete"))

    def note(self, name: str, why: str, line: int | None = None) -> None:
        self.config.note(self.config.lines.get(name.split(".")[0], 0) if line is None else line, name, why)

    def need_exec(self, name: str, why: str, line: int | None = None) -> None:
        self.needs_exec.append(Note(self.config.lines.get(name, 0) if line is None else line, name, why))

    def error(self, name: str, why: str) -> LegacyError:
        return self.config.error(name, why)

    def tokens(self) -> list[str]:
        return [o.token() for o in self.overrides]

    def choice(self, group: str) -> str | None:
        return next((o.value for o in reversed(self.overrides) if o.kind == "group" and o.key == group), None)
