"""Where bulkmail keeps its data and which database it talks to.

Resolution order for every setting: explicit argument, then environment variable,
then a default that needs nothing running (a SQLite file under ``data/``).
"""

from __future__ import annotations

import os
from pathlib import Path

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
