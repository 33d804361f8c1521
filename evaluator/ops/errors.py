"""What the CLI says when something is wrong: known operational failures (a setting that does not
parse, Redis or the database out of reach, a missing file) as one line and an exit code, instead
of a traceback. Anything not recognised here is a bug and keeps its traceback.

Exit codes: 0 success; 1 a runtime failure or an unavailable dependency (start it, try again);
2 a usage or configuration error (fix the command line or the environment)."""

from __future__ import annotations

import json
import os
import re
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

_DEBUG_VARIABLE = "EVALFLEET_DEBUG"


class CLIError(Exception):
    """A failure the user can act on: ``message`` is the whole story, ``code`` the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def debug_enabled() -> bool:
    return os.environ.get(_DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


def enable_debug() -> None:
    os.environ[_DEBUG_VARIABLE] = "1"  # child processes (demo's fleet) inherit it


def mask_url(url: str) -> str:
    """``url`` with its password (in the authority or a ``password=`` query item) as ``***``."""
    url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@?#]*:)[^/?#]*@", r"\1***@", url)
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", url)


def no_such_file(path: Path) -> CLIError:
    return CLIError(f"error: {path}: no such file", EXIT_USAGE)


def require_file(path: Path) -> Path:
    """``path`` if it is a readable file, else a usage error naming it."""
    if path.is_dir():
        raise CLIError(f"error: {path}: is a directory, not a file", EXIT_USAGE)
    if not path.exists():
        raise no_such_file(path)
    return path


def check_database_url(url: str, must_exist: bool) -> None:
    """Refuse a database the store does not support, and (``must_exist``) a SQLite file that is
    not there: a command reading what the fleet stored must not create an empty one (SQLStore
    creates the tables when it opens a database)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)  # an unparseable URL: ArgumentError, described below
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        shown = mask_url(os.environ.get("EVALFLEET_DATABASE_URL", url))
        raise CLIError(
            f"error: EVALFLEET_DATABASE_URL={shown!r}: {backend} is not supported (use "
            "sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB)",
            EXIT_USAGE,
        )
    if backend != "sqlite" or not must_exist:
        return
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return
    path = Path(database)
    if not path.exists():
        shown = f"./{database}" if not path.is_absolute() else database
        raise CLIError(
            f"error: no database at {shown} (run the fleet first or set EVALFLEET_DATABASE_URL)"
        )


def describe(exc: BaseException) -> CLIError | None:
    """The one-line error for a known failure (or one it was raised from), else None."""
    for candidate in _causes(exc):
        for describer in _DESCRIBERS:
            found = describer(candidate)
            if found is not None:
                return found
    return None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 10:
        seen.add(id(current))
        yield current
        current = current.__cause__


def _is(exc: BaseException, module: str, name: str) -> bool:
    """isinstance against a class of a module only if that module was imported (an exception of
    a library that was never imported cannot exist; importing it here would be slow)."""
    cls = getattr(sys.modules.get(module), name, None)
    return isinstance(cls, type) and isinstance(exc, cls)


# -- settings ------------------------------------------------------------------------------------


def _settings_classes() -> list[type[BaseSettings]]:
    found: list[type[BaseSettings]] = []
    pending: list[type[BaseSettings]] = [BaseSettings]
    while pending:
        for sub in pending.pop().__subclasses__():
            if sub not in found:
                found.append(sub)
                pending.append(sub)
    return found


def _field_of(model: type[BaseSettings], key: str) -> str | None:
    """The field that ``key`` (a field name, or an alias as pydantic reports it) denotes."""
    from evaluator.settings import settings_variables

    if key in model.model_fields:
        return key
    return settings_variables(model).get(key.upper())


def _variable(model: type[BaseSettings], field: str) -> str:
    """The environment variable the field was read from: the first of its names that is set."""
    from evaluator.settings import field_variables

    names = field_variables(model, field)
    present = {name.upper(): name for name in os.environ}
    return next((present[n] for n in names if n in present), names[0])


def _secret(model: type[BaseSettings], field: str, variable: str) -> bool:
    info = model.model_fields[field]
    annotation = str(info.annotation)
    return (
        not info.repr
        or SecretStr.__name__ in annotation
        or any(word in variable.upper() for word in ("KEY", "TOKEN", "SECRET", "PASSWORD"))
    )


def _shown_value(model: type[BaseSettings], field: str, variable: str) -> str:
    if variable not in os.environ:
        return ""
    if _secret(model, field, variable):
        return " (value hidden)"
    value = mask_url(os.environ[variable])
    return "=" + repr(value if len(value) <= 80 else value[:77] + "...")


def _default(model: type[BaseSettings], field: str) -> str:
    info = model.model_fields[field]
    if info.default_factory is not None:
        try:
            value: Any = info.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return "unset it for the default"
    else:
        value = info.default
    if value is None or _secret(model, field, field):
        return "unset it"
    shown = json.dumps(value) if isinstance(value, dict | list | tuple) else str(value)
    return f"unset it for the default {shown}" if len(shown) <= 40 else "unset it for the default"


def _kind(model: type[BaseSettings], field: str) -> str:
    annotation = model.model_fields[field].annotation
    origin = typing.get_origin(annotation)
    if origin is dict:
        return "a JSON object"
    if origin in (list, tuple):
        return "a JSON array"
    return "a valid value"


_WANTED = {
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "bool_parsing": "true or false",
    "json_invalid": "valid JSON",
    "dict_type": "a JSON object",
    "list_type": "a JSON array",
    "tuple_type": "a JSON array",
}


def _wanted(error: Any) -> str | None:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    bounds = {
        "greater_than_equal": ">=",
        "greater_than": ">",
        "less_than_equal": "<=",
        "less_than": "<",
    }
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        shown = f"{limit:g}" if isinstance(limit, int | float) else str(limit)
        return f"a number {bounds[kind]} {shown}"
    if kind == "literal_error":
        return f"one of {ctx.get('expected', '?')}"
    return _WANTED.get(kind)


def _settings_error(exc: BaseException) -> CLIError | None:
    if not isinstance(exc, ValidationError):
        return None
    models = [m for m in _settings_classes() if m.__name__ == exc.title]
    if not models:
        return None  # a model that is not configuration (a bug, not the user's doing)
    model = models[0]
    lines = []
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        field = _field_of(model, str(loc[0])) if loc else None
        if field is None:
            lines.append(f"error: {model.__name__}: {error['msg']}")
            continue
        variable = _variable(model, field)
        secret = _secret(model, field, variable)
        tail = [str(p) for p in loc[1:]]
        if secret and tail and typing.get_origin(model.model_fields[field].annotation) is dict:
            tail = ["<key>", *tail[1:]]  # the keys of a secret mapping are the secrets
        where = f" at {'.'.join(tail)}" if tail else ""
        message = str(error["msg"]).split(", unable to")[0].removeprefix("Value error, ")
        wanted = _wanted(error)
        default = _default(model, field)
        fix = f"set it to {wanted}, or {default}" if wanted else default
        shown = _shown_value(model, field, variable)
        lines.append(f"error: {variable}{shown}: {message}{where} ({fix})")
    return CLIError("\n".join(lines), EXIT_USAGE)


def _settings_parse_error(exc: BaseException) -> CLIError | None:
    """pydantic-settings' own error for a complex value (dict, list) that is not JSON."""
    if not _is(exc, "pydantic_settings", "SettingsError"):
        return None
    match = re.search(r'for field "([^"]+)"', str(exc))
    if match is None:
        return None
    field = match.group(1)
    candidates = [m for m in _settings_classes() if field in m.model_fields]
    present = [m for m in candidates if _variable(m, field) in os.environ]
    if not candidates:
        return None
    model = (present or candidates)[0]
    variable = _variable(model, field)
    cause = exc.__cause__
    detail = "not valid JSON"
    if isinstance(cause, json.JSONDecodeError):
        detail = f"not valid JSON ({cause.msg} at column {cause.colno})"
    shown = _shown_value(model, field, variable)
    fix = f"set it to {_kind(model, field)}, or {_default(model, field)}"
    return CLIError(f"error: {variable}{shown}: {detail} ({fix})", EXIT_USAGE)


# -- Redis -----------------------------------------------------------------------------------------


def _redis_endpoint(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def _redis_urls() -> list[tuple[str, str]]:
    """(variable, URL) of the Redis instances the settings name, the data Redis first."""
    from evaluator.settings import get_settings

    try:
        settings = get_settings()
    except Exception:
        return []
    urls = [("EVALFLEET_REDIS_URL", settings.redis_url)]
    if settings.broker_url and settings.broker_url != settings.redis_url:
        urls.append(("EVALFLEET_BROKER_URL", settings.broker_url))
    return urls


def _which_redis(message: str) -> tuple[str, str] | None:
    urls = _redis_urls()
    for variable, url in urls:
        endpoint = _redis_endpoint(url)
        if endpoint and endpoint in message:
            return variable, url
    return urls[0] if urls else None


def _redis_error(exc: BaseException) -> CLIError | None:
    if isinstance(exc, ValueError) and str(exc).startswith("Redis URL must specify"):
        named = _which_redis("")
        variable, url = named or ("EVALFLEET_REDIS_URL", "")
        return CLIError(
            f"error: {variable}={mask_url(url)!r} is not a Redis URL (use redis://HOST:PORT/DB, "
            "rediss:// or unix://)",
            EXIT_USAGE,
        )
    if not (
        _is(exc, "redis.exceptions", "ConnectionError")
        or _is(exc, "redis.exceptions", "TimeoutError")
    ):
        return None
    message = str(exc)
    named = _which_redis(message)
    variable, url = named or ("EVALFLEET_REDIS_URL", "")
    where = mask_url(url) if named else _redis_endpoint_of(message)
    if _is(exc, "redis.exceptions", "AuthenticationError"):
        return CLIError(
            f"error: Redis at {where} refused the credentials ({message.rstrip('.')}); fix "
            f"the password in {variable}",
            EXIT_USAGE,
        )
    reason = message
    match = re.search(r"(?:connecting to|reading from|writing to) \S+?[.:]? (.+?)\.?$", message)
    if match:
        reason = match.group(1).strip(" :")
    elif _is(exc, "redis.exceptions", "TimeoutError"):
        reason = "timed out"
    return CLIError(f"error: cannot reach Redis at {where} ({reason}); start it or set {variable}")


def _redis_endpoint_of(message: str) -> str:
    match = re.search(r"(?:connecting to|reading from) (\S+?)\.?(?: |$)", message)
    return match.group(1) if match else "its address"


# -- the database ----------------------------------------------------------------------------------


def _database_url() -> str:
    from evaluator.settings import get_settings

    try:
        return get_settings().database_url
    except Exception:
        return os.environ.get("EVALFLEET_DATABASE_URL", "")


def _database_error(exc: BaseException) -> CLIError | None:
    if _is(exc, "sqlalchemy.exc", "ArgumentError"):
        url = mask_url(_database_url())
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return CLIError(
            f"error: EVALFLEET_DATABASE_URL={url!r} is not a database URL ({detail}); use "
            "e.g. sqlite:///evalfleet.db or postgresql://USER:PASSWORD@HOST/DB",
            EXIT_USAGE,
        )
    if not _is(exc, "sqlalchemy.exc", "OperationalError"):
        return None
    original = getattr(exc, "orig", None) or exc
    text = " ".join(str(original).split()) or type(original).__name__
    if "failed: " in text:  # psycopg: connection to server at "h", port p failed: <why>
        text = text.rsplit("failed: ", 1)[1]
    text = re.sub(r"^(FATAL|ERROR):\s*", "", text)
    text = re.split(r"\s+Is the server running", text)[0].rstrip(". ")
    url = mask_url(_database_url())
    fix = "set" if url.startswith("sqlite") else "start it or set"
    return CLIError(
        f"error: cannot use the database at {url} ({text}); {fix} EVALFLEET_DATABASE_URL"
    )


# -- files, HTTP -----------------------------------------------------------------------------------


def _file_error(exc: BaseException) -> CLIError | None:
    if not isinstance(exc, OSError) or exc.filename is None:
        return None
    name = os.fsdecode(exc.filename)
    if isinstance(exc, FileNotFoundError):
        return no_such_file(Path(name))
    if isinstance(exc, IsADirectoryError):
        return CLIError(f"error: {name}: is a directory, not a file", EXIT_USAGE)
    if isinstance(exc, PermissionError):
        return CLIError(f"error: {name}: permission denied", EXIT_USAGE)
    return CLIError(f"error: {name}: {exc.strerror or exc}")


def _http_error(exc: BaseException) -> CLIError | None:
    if not _is(exc, "httpx", "TransportError"):
        return None
    try:
        request = exc.request  # type: ignore[attr-defined]
        where = mask_url(f"{request.url.scheme}://{request.url.netloc.decode()}")
    except RuntimeError:  # no request attached
        where = "the server"
    reason = str(exc).split("] ")[-1] or type(exc).__name__
    langfuse = _langfuse_host()
    if langfuse and urlsplit(langfuse).netloc == urlsplit(where).netloc:
        return CLIError(
            f"error: cannot reach Langfuse at {where} ({reason}); start it or set LANGFUSE_HOST"
        )
    return CLIError(f"error: cannot reach {where} ({reason})")


def _langfuse_host() -> str | None:
    module = sys.modules.get("evaluator.sinks.langfuse")  # only when a command used Langfuse
    if module is None:
        return None
    try:
        return str(module.LangfuseSettings().host)
    except Exception:
        return None


def _known(exc: BaseException) -> CLIError | None:
    return exc if isinstance(exc, CLIError) else None


def _consumer_name_taken(exc: BaseException) -> CLIError | None:
    # The message names the holder (host, pid); a usage error: choose another --consumer.
    if _is(exc, "evaluator.streams", "ConsumerNameTaken"):
        return CLIError(f"error: {exc}", EXIT_USAGE)
    return None


_DESCRIBERS = (
    _known,
    _consumer_name_taken,
    _settings_error,
    _settings_parse_error,
    _redis_error,
    _database_error,
    _file_error,
    _http_error,
)
