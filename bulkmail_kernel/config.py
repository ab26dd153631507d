"""Where bulkmail keeps its data and which database it talks to.

Resolution order for every setting: explicit argument, then environment variable,
then a default that needs nothing running (a SQLite file under ``data/``).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bulkmail_kernel.exceptions import ConfigError

#: The project checkout this package was installed from (editable installs), if any.
_PACKAGE_DIR = Path(__file__).resolve().parent
_CHECKOUT_DIR = _PACKAGE_DIR.parent

DEFAULT_REGION = "SK"
DEFAULT_LANGUAGE = "sk"
SUPPORTED_LANGUAGES = ("sk", "cs", "ru", "en")


def project_dir() -> Path:
    """Return the project directory: ``BULKMAIL_HOME``, else the checkout, else the cwd."""
    env = os.environ.get("BULKMAIL_HOME")
    if env:
        return Path(env).expanduser().resolve()
    if (_CHECKOUT_DIR / "pyproject.toml").exists():
        return _CHECKOUT_DIR
    return Path.cwd()


def data_dir() -> Path:
    """Return the data directory (``BULKMAIL_DATA_DIR`` or ``<project>/data``), creating it."""
    env = os.environ.get("BULKMAIL_DATA_DIR")
    path = Path(env).expanduser().resolve() if env else project_dir() / "data"
    path.mkdir(parents=True, exist_ok=True)
    return path


def exports_dir() -> Path:
    """Return the default folder for exports (``<data_dir>/exports``, git-ignored), creating it."""
    path = data_dir() / "exports"
    path.mkdir(parents=True, exist_ok=True)
    return path


def templates_dir() -> Path:
    """Return the predefined templates directory (``BULKMAIL_TEMPLATES_DIR`` or ``templates/``)."""
    env = os.environ.get("BULKMAIL_TEMPLATES_DIR")
    return Path(env).expanduser().resolve() if env else project_dir() / "templates"


def default_db_path() -> Path:
    """Return the path of the embedded SQLite database."""
    return data_dir() / "bulkmail.db"


def database_url(url: str | None = None) -> str:
    """Return the SQLAlchemy URL to use: ``url``, else ``BULKMAIL_DB_URL``, else the SQLite file."""
    chosen = url or os.environ.get("BULKMAIL_DB_URL")
    if chosen:
        if "://" not in chosen:
            raise ConfigError(
                f"database URL {chosen!r} is not a SQLAlchemy URL: "
                "write e.g. sqlite:///data/bulkmail.db or postgresql+psycopg://host/db"
            )
        if chosen.startswith("postgresql://"):
            # psycopg 3 is the driver we ship; the bare scheme would ask for psycopg2.
            chosen = "postgresql+psycopg://" + chosen[len("postgresql://") :]
        return chosen
    return f"sqlite:///{default_db_path()}"


def default_region() -> str:
    """Return the phone-number region used for numbers without a country code."""
    return os.environ.get("BULKMAIL_REGION", DEFAULT_REGION).upper()


def local_zone() -> ZoneInfo:
    """Return the analyst's time zone as a ``ZoneInfo`` (ConfigError if BULKMAIL_TZ is unknown)."""
    name = local_timezone()
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"BULKMAIL_TZ={name!r} is no IANA time zone: write e.g. Europe/Bratislava or UTC",
            setting="BULKMAIL_TZ",
        ) from None


def to_utc(value: datetime | str, *, what: str = "time") -> datetime:
    """Return ``value`` as an aware UTC datetime; text or a naive datetime is local time.

    ``"2026-12-03 09:00"`` (ISO 8601 text, ``T`` or a space) and ``datetime(2026, 12, 3, 9)``
    mean 09:00 on the wall clocks of :func:`local_timezone`; text with an offset
    (``+01:00``, ``Z``) and aware datetimes are taken as they are.

    Around a daylight-saving change a wall-clock time may not exist (02:30 on the last
    Sunday of March in Central Europe): that is a ConfigError saying what to write
    instead. Or it may exist twice (02:30 on the last Sunday of October): the first of
    the two is taken (summer time, the earlier moment), as ``fold=0`` says in Python;
    give an offset (``+01:00``) to mean the second.
    """
    if isinstance(value, str):
        text = value.strip()
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise ConfigError(
                f"{what} {value!r} is not a date and time: write e.g. 2026-12-03 09:00 "
                f"(local time in {local_timezone()}) or 2026-12-03T09:00+01:00",
                value=value,
            ) from None
    elif isinstance(value, datetime):
        when = value
    else:
        raise ConfigError(
            f"{what} {value!r} is not a date and time: give a datetime or text such as "
            "2026-12-03 09:00",
            value=repr(value),
        )
    if when.tzinfo is not None and when.utcoffset() is not None:
        return when.astimezone(UTC)
    return _local_wall_clock(when.replace(tzinfo=None), what).astimezone(UTC)


def _local_wall_clock(naive: datetime, what: str) -> datetime:
    """Return the wall-clock time ``naive`` in the local zone, refusing one that never happens."""
    zone = local_zone()
    first = naive.replace(tzinfo=zone, fold=0)
    # A time in the spring-forward gap does not survive the round trip through UTC.
    back = first.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    if back != naive:
        before = naive.replace(tzinfo=zone, fold=1).astimezone(UTC).astimezone(zone)
        raise ConfigError(
            f"{what} {naive:%Y-%m-%d %H:%M} does not exist in {zone.key}: the clocks jump "
            f"forward then; write {back:%H:%M} or {before:%H:%M}",
            value=naive.isoformat(),
            zone=zone.key,
        )
    return first


def as_local(value: datetime | None) -> datetime | None:
    """Return an aware ``value`` in the local zone (None stays None)."""
    return None if value is None else value.astimezone(local_zone())


def local_timezone() -> str:
    """Return the analyst's IANA time zone (``BULKMAIL_TZ``, default Europe/Bratislava)."""
    return os.environ.get("BULKMAIL_TZ", "Europe/Bratislava")


#: A worker whose heartbeat is older than this is taken for dead (``BULKMAIL_DEAD_WORKER_S``).
DEFAULT_DEAD_WORKER_S = 120.0
#: A scheduled campaign more than this late waits as ``late`` (``BULKMAIL_MAX_LATENESS_S``).
DEFAULT_MAX_LATENESS_S = 6 * 3600.0


def _seconds(variable: str, default: float, what: str) -> float:
    """Return the positive number of seconds in environment ``variable``, else ``default``."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ConfigError(
            f"{variable}={raw!r}: give {what} as a positive number of seconds, e.g. {default:g}",
            variable=variable,
        )
    return value


def dead_worker_s() -> float:
    """Return after how many silent seconds a worker is taken for dead (default 120).

    ``BULKMAIL_DEAD_WORKER_S``; each worker beats from a thread of its own every quarter
    of it (at most every 30 s), so no throttle wait makes a live worker look dead.
    """
    return _seconds("BULKMAIL_DEAD_WORKER_S", DEFAULT_DEAD_WORKER_S, "the dead-worker limit")


def max_lateness_s() -> float:
    """Return how late a scheduled campaign may still start (default 6 h).

    ``BULKMAIL_MAX_LATENESS_S``: a worker finding a campaign later than this (the machine
    was off over the weekend) sets it ``late`` instead of sending it; ``resume`` sends it.
    """
    return _seconds("BULKMAIL_MAX_LATENESS_S", DEFAULT_MAX_LATENESS_S, "the longest lateness")


#: Policy or system refusals in a row that pause a campaign (``BULKMAIL_BREAKER_AFTER``).
DEFAULT_BREAKER_AFTER = 10


def breaker_after() -> int:
    """Return after how many policy or system refusals in a row a campaign pauses (default 10).

    ``BULKMAIL_BREAKER_AFTER``, a whole number, 1 or more; a campaign's own
    ``breaker_after`` (``create_campaign(breaker_after=...)``) wins over it.
    """
    raw = os.environ.get("BULKMAIL_BREAKER_AFTER", "").strip()
    if not raw:
        return DEFAULT_BREAKER_AFTER
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(
            f"BULKMAIL_BREAKER_AFTER={raw!r}: give how many refusals in a row pause a campaign "
            f"as a whole number, 1 or more, e.g. {DEFAULT_BREAKER_AFTER}",
            variable="BULKMAIL_BREAKER_AFTER",
        )
    return int(raw)


#: Longest time one message may take to render (``BULKMAIL_RENDER_TIMEOUT_S``).
DEFAULT_RENDER_TIMEOUT_S = 2.0
#: Largest rendered message, all parts together (``BULKMAIL_RENDER_MAX_BYTES``).
DEFAULT_RENDER_MAX_BYTES = 2_000_000


def render_timeout_s() -> float:
    """Return how many seconds one recipient's message may take to render (default 2).

    ``BULKMAIL_RENDER_TIMEOUT_S``: templates and pasted HTML can hold loops; a message
    that takes longer is not sent and the recipient is reported.
    """
    return _seconds("BULKMAIL_RENDER_TIMEOUT_S", DEFAULT_RENDER_TIMEOUT_S, "the render time limit")


def render_max_bytes() -> int:
    """Return how many bytes one rendered message may have, all parts together (default 2 MB).

    ``BULKMAIL_RENDER_MAX_BYTES``, a whole positive number such as 2000000.
    """
    variable = "BULKMAIL_RENDER_MAX_BYTES"
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return DEFAULT_RENDER_MAX_BYTES
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(
            f"{variable}={raw!r}: give the largest rendered message as a positive whole "
            f"number of bytes, e.g. {DEFAULT_RENDER_MAX_BYTES}",
            variable=variable,
        )
    return value
