"""Typed settings: frozen dataclasses built from TOML tables by small converters.

Every error names the key path, so that a misspelt key or a bad value is found at
load time, once, with a message an admin can act on.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

T = TypeVar("T")

SECRET_WORDS = ("password", "secret", "passphrase", "token")
# a field whose TOML key is not its Python name (`from` is a keyword):
# `from_: Condition = dataclasses.field(metadata={TOML_KEY: "from"})`
TOML_KEY = "toml"


class ConfigError(Exception):
    """A bad setting: `file: key.path: message`."""

    def __init__(self, path: str, message: str, file: str | None = None):
        super().__init__(message)
        self.path = path
        self.message = message
        self.file = file

    def with_file(self, file: str) -> ConfigError:
        return ConfigError(self.path, self.message, self.file or file)

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}: {where}{self.message}" if self.file else f"{where}{self.message}"


class Secret:
    """A password-like value that never shows itself in repr, str, logs or JSON."""

    __slots__ = ("_value", "env_var")

    def __init__(self, value: str, env_var: str | None = None):
        self._value = value
        self.env_var = env_var  # the environment variable it came from (`"env:VAR"`), withheld from children

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = lambda self: "********"  # noqa: E731


def is_secret_key(key: str) -> bool:
    k = key.lower()
    return any(w in k for w in SECRET_WORDS)


def unknown_key(path: str, key: str, known: Any, what: str = "setting") -> ConfigError:
    """`path: unknown setting (known: a, b, c); did you mean b?` with difflib's closest name."""
    import difflib  # only on this error: the thin CLI loads [scheduler] without it

    names = sorted(known)
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    return ConfigError(path, f"unknown {what} (known: {', '.join(names) or 'none'}){hint}")


def toml_key(f: dataclasses.Field[Any]) -> str:
    """The key a settings field has in the TOML file."""
    return str(f.metadata.get(TOML_KEY, f.name))


def key_error(path: str, e: ValueError, keys: Any) -> ConfigError:
    """A check's `ValueError("argv: must name a program")` as `path.argv: must name a program`
    when it starts with one of `keys`: every error names its key path the same way."""
    key, sep, rest = str(e).partition(": ")
    if sep and re.split(r"[.\[]", key)[0] in keys and " " not in key:
        return ConfigError(f"{path}.{key}" if path else key, rest)
    return ConfigError(path, str(e))


def format_duration(seconds: float) -> str:
    """The inverse of parse_duration: 604800 -> `7d`, 5400 -> `1h30m`, 0.25 -> `250ms`."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s", "ms"):
        n, ms = divmod(ms, round(_UNIT[unit] * 1000))
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


# --- converters: (value, path) -> converted value --------------------------------

_DURATION_RE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*)+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """`"30s"`, `"5m"`, `"1h30m"`, `"250ms"` or a number of seconds, never negative."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError
        return float(value)
    if isinstance(value, str) and _DURATION_RE.match(value):
        return sum(float(n) * _UNIT[u] for n, u in _DURATION_PART.findall(value))
    raise ValueError


def duration(value: Any, path: str) -> float:
    try:
        return parse_duration(value)
    except ValueError:
        raise ConfigError(path, f'expected a duration like "30s", got {_show(value)}') from None


def positive_duration(value: Any, path: str) -> float:
    d = duration(value, path)
    if d <= 0:
        raise ConfigError(path, f'expected a duration above zero like "30s", got {_show(value)}')
    return d


def octal_mode(value: Any, path: str) -> int:
    """`"0660"` or `0o660`: a permission mode."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o7777:
        return value
    if isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3,4}", value):
        return int(value.replace("o", ""), 8)
    raise ConfigError(path, f'expected an octal mode like "0660", got {_show(value)}')


def byte_size(value: Any, path: str) -> int:
    """`10485760`, `"10MB"`, `"512KiB"`."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*([kmg]i?b?|b)?\s*", value, re.I)
        if m:
            unit = (m.group(2) or "b").lower().rstrip("b").rstrip("i")
            return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]
    raise ConfigError(path, f'expected a size like "10MB", got {_show(value)}')


def int_range(lo: int, hi: int) -> Callable[[Any, str], int]:
    def convert(value: Any, path: str) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi:
            return value
        raise ConfigError(path, f"expected an integer from {lo} to {hi}, got {_show(value)}")

    return convert


def secret(value: Any, path: str) -> Secret:
    """A password: literal, `"env:VAR"` or `"file:/path"`; errors never echo the value."""
    if isinstance(value, Secret):
        return value
    if not isinstance(value, str):
        raise ConfigError(path, "expected a string")
    if value.startswith("env:"):
        var = value[4:]
        if var not in os.environ:
            raise ConfigError(path, f"environment variable {var} is not set")
        return Secret(os.environ[var], env_var=var)
    if value.startswith("file:"):
        return read_secret_file(value[5:], path)
    return Secret(value)


def read_secret_file(name: str, path: str) -> Secret:
    try:
        return Secret(Path(name).read_text().rstrip("\r\n"))
    except OSError as e:
        raise ConfigError(path, f"cannot read password file {name}: {e.strerror}") from None


# --- dataclass building --------------------------------------------------------


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "nothing"
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(_show(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if origin in (list, tuple):
        return "a list"
    if origin in (dict, Mapping):
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false", Path: "a path"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def convert(tp: Any, value: Any, path: str, base_dir: Path | None = None) -> Any:
    """Convert one TOML value to the annotated type, or raise ConfigError naming `path`."""
    origin = get_origin(tp)
    if origin is Annotated:
        inner, *meta = get_args(tp)
        for m in meta:
            if callable(m):
                return m(value, path)
        return convert(inner, value, path, base_dir)
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(path, f"expected {_type_name(tp)}, got {_show(value)}")
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return convert(a, value, path, base_dir)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(path, f"expected {_type_name(tp)}, got {_show(value)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {_show(value)}")
        (item,) = get_args(tp)[:1] or (Any,)
        return tuple(convert(item, v, f"{path}[{i}]", base_dir) for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a table, got {_show(value)}")
        kt, vt = get_args(tp) or (str, Any)
        return types.MappingProxyType({k: convert(vt, v, f"{path}.{k}", base_dir) for k, v in value.items()})
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a table, got {_show(value)}")
        return build(tp, value, path, base_dir)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Path:
        if isinstance(value, str) and value and "\0" not in value:
            p = Path(os.path.expanduser(value))
            return p if p.is_absolute() or base_dir is None else base_dir / p
    elif tp is Secret:
        return secret(value, path)
    else:  # pragma: no cover - a programming error in a settings class
        raise TypeError(f"{path}: unsupported settings type {tp!r}")
    raise ConfigError(path, f"expected {_type_name(tp)}, got {_show(value)}")


def build(cls: type[T], data: Mapping[str, Any], path: str = "", base_dir: Path | None = None,
          also_known: tuple[str, ...] = ()) -> T:
    """Build the frozen dataclass `cls` from `data`, rejecting unknown and missing keys.

    `also_known`: keys the caller takes out of the table before (a task's engine keys),
    listed among the known ones when a key is misspelt."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {toml_key(f): f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    prefix = f"{path}." if path else ""
    for key in data:
        if key not in fields:
            raise unknown_key(f"{prefix}{key}", key, {*fields, *also_known})
    kwargs = {}
    for key, f in fields.items():
        name = f.name
        if key in data:
            kwargs[name] = convert(hints[name], data[key], f"{prefix}{key}", base_dir)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{key}", "missing required setting")
        elif base_dir is not None and hints[name] in (Path, Path | None) and isinstance(f.default, Path):
            kwargs[name] = f.default if f.default.is_absolute() else base_dir / f.default
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if callable(check):
        try:
            check()
        except ValueError as e:
            raise key_error(path, e, fields) from None
        except ConfigError as e:
            raise ConfigError(f"{prefix}{e.path}".rstrip("."), e.message) from None
    return obj


def public_view(obj: Any) -> Any:
    """A JSON-able view of settings with every secret replaced by stars."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            toml_key(f): ("********" if is_secret_key(f.name) and getattr(obj, f.name) else public_view(getattr(obj, f.name)))
            for f in dataclasses.fields(obj)
        }
    if isinstance(obj, Mapping):
        return {k: ("********" if is_secret_key(str(k)) and v else public_view(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [public_view(v) for v in obj]
    if isinstance(obj, Secret):
        return "********"
    if isinstance(obj, Path):
        return str(obj)
    return obj
