"""Options from a TOML file: ``--config FILE`` for any ``twisted.python.usage.Options``.

The file's keys are the long option names (``max-sessions = 2``). A flag takes ``true`` or
``false``; an option with an argument takes a string, a number, or a list of them (each item
is given as if the option were repeated: ``listen = ["tcp:8081", "unix:/run/t.sock"]``). Each
value goes through the option's own handler, so validation is the command line's, and every
error names the option and the file's line. Options given on the command line win: the file's
value for that option is not used at all.

The mapping is generic: it reads the option table ``usage.Options`` builds from
``optFlags``, ``optParameters`` and the ``opt_*`` methods, so new options need nothing here.
That table is private to Twisted (``_dispatch``); this module is the one place touching it.
"""

from __future__ import annotations

import getopt
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from twisted.python import usage

from tcpsocket._private import option_handlers

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "NamedCoerceParameter",
    "apply_config_file",
    "command_line_settings",
    "long_name",
    "name_coercions",
]

#: Options a file may not set (they are about the file itself, or leave the program).
_COMMAND_LINE_ONLY = frozenset({"config", "help", "version"})


class NamedCoerceParameter(usage.CoerceParameter):
    """A ``CoerceParameter`` whose errors name the option: ``--max-sessions: must be ...``."""

    def dispatch(self, parameterName: str, value: str | None) -> None:
        if value is None:
            raise usage.UsageError(f"--{parameterName}: a value is needed")
        try:
            coerced = self.coerce(value)
        except ValueError as e:
            raise usage.UsageError(f"--{parameterName}: {e}") from None
        self.options.opts[parameterName] = coerced


def name_coercions(options: usage.Options) -> None:
    """Make every coerced parameter of ``options`` name itself in its errors."""
    dispatch = option_handlers(options)
    for name, handler in list(dispatch.items()):
        if type(handler) is usage.CoerceParameter:
            dispatch[name] = NamedCoerceParameter(options, handler.coerce)


def long_name(options: usage.Options, name: str) -> str | None:
    """The canonical long option called ``name`` (or its short or underscored form)."""
    synonyms: dict[str, str] = options.synonyms
    return synonyms.get(name) or synonyms.get(name.replace("-", "_"))


def _takes_value(options: usage.Options, name: str) -> bool:
    return f"{name}=" in options.longOpt


def _line_of(text: str, key: str) -> int | None:
    pattern = re.compile(rf"""^\s*(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')\s*=""")
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return number
    return None


def _scalar(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("must be a string or a number")
    return str(value)


def _values(value: Any) -> Iterator[str]:
    items: Iterable[Any] = value if isinstance(value, list) else [value]
    for item in items:
        yield _scalar(item)


def apply_config_file(options: usage.Options, path: str, skip: set[str]) -> None:
    """Give ``options`` every setting of the TOML file ``path``, except those in ``skip``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        table = tomllib.loads(text)
    except OSError as e:
        raise usage.UsageError(f"--config {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise usage.UsageError(f"--config {path}: {e}") from None
    dispatch = option_handlers(options)
    for key, value in table.items():
        line = _line_of(text, key)
        where = f"{path}, line {line}" if line is not None else path
        name = long_name(options, key)
        if name is None or name in _COMMAND_LINE_ONLY or len(name) == 1:
            raise usage.UsageError(f"{where}: unknown option {key!r}")
        if name in skip:
            continue
        handler = dispatch[name]
        try:
            if _takes_value(options, name):
                for item in _values(value):
                    if isinstance(handler, usage.CoerceParameter):
                        handler.dispatch(name, item)
                    else:
                        handler(name, item)
            elif not isinstance(value, bool):
                raise ValueError("is a flag: true or false")
            elif value:
                handler(name, "")
        except (usage.UsageError, ValueError) as e:
            message = str(e)
            prefix = f"--{name}: "
            message = message.removeprefix(prefix)
            raise usage.UsageError(f"{where}: {name}: {message}") from None


def command_line_settings(options: usage.Options, argv: list[str]) -> dict[str, list[str]]:
    """The options ``argv`` sets, by long name, with their values (parsed as ``usage`` does)."""
    try:
        pairs, _ = getopt.getopt(argv, options.shortOpt, options.longOpt)
    except getopt.GetoptError as e:
        raise usage.UsageError(str(e)) from None
    given: dict[str, list[str]] = {}
    for flag, value in pairs:
        name = long_name(options, flag.lstrip("-"))
        if name is not None:
            given.setdefault(name, []).append(value)
    return given
