"""Store: the one class through which the server, the admin API and both CLIs use the
database, written once with SQLAlchemy Core for SQLite and PostgreSQL.

It is the connection (connection.py) and one class of queries per table, each in its own
module; callers see one object and need not know which module holds a query.
"""

from __future__ import annotations

from .alerts import AlertQueries
from .aliases import AliasQueries
from .keyrows import KeyQueries
from .models import ModelQueries
from .now import NowQueries
from .prices import PriceQueries
from .refusals import RefusalQueries
from .reports import ReportQueries
from .series import SeriesQueries
from .sessions import SessionQueries
from .usage import UsageQueries
from .users import UserQueries


class Store(
    KeyQueries,
    UserQueries,
    PriceQueries,
    SessionQueries,
    ModelQueries,
    UsageQueries,
    ReportQueries,
    SeriesQueries,
    RefusalQueries,
    AlertQueries,
    NowQueries,
    AliasQueries,
):
    """An open database and every query on it: `await Store.open(path or URL)`."""
