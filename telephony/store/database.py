"""Engine, migrations and the small repository of operations the app performs on the database."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from telephony.errors import StorageError
from telephony.store.models import Call, CallChannel, CallStatus, Turn

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
log = logging.getLogger(__name__)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL still survives a crash of the process (every turn written stays written); only a power
    # cut can lose the last commits, and it cannot corrupt the file. FULL's fsync on every commit cost 5-7% of the
    # server's CPU samples at 100 calls. Production uses PostgreSQL.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _existing_call(session: Session, call_id: str) -> Call:
    call = session.get(Call, call_id)
    if call is None:
        raise StorageError(f"no call {call_id}")
    return call


MIGRATION_LOCK_KEY = 0x686F746C696E65  # "hotline": the advisory lock the workers' migrations take turns on


class Database:
    """One database (SQLite file or PostgreSQL), migrated to the newest schema on `migrate()`."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        if parsed.drivername.startswith("postgresql") and parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(parsed, pool_pre_ping=True)
        if parsed.drivername.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision.

        On PostgreSQL the migration holds a transaction-scoped advisory lock, so workers that start together on one
        database migrate one after the other (the second finds the schema current) instead of racing."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        try:
            with self.engine.begin() as connection:
                if self.dialect == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot migrate database {self.engine.url.render_as_string(hide_password=True)}: {exc}") from exc

    def ping(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        session = self._sessions()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as exc:
            session.rollback()
            raise StorageError(f"database operation failed: {exc.__class__.__name__}: {exc}") from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    # -- calls and turns ------------------------------------------------------------------------

    def start_call(self, channel: CallChannel, caller_number: str | None = None, kb_version: str | None = None, *,
                   call_id: str | None = None, recordings: tuple[str, str] | None = None) -> Call:
        """`call_id`: the id the caller of this method chose (a call runs before its record exists); a new one when
        not given. `recordings`: the paths of the caller's and the assistant's track."""
        with self.session() as session:
            call = Call(channel=channel, caller_number=caller_number, kb_version=kb_version)
            if call_id is not None:
                call.id = call_id
            if recordings is not None:
                call.recording_caller_path, call.recording_assistant_path = recordings
            session.add(call)
        return call

    def end_call(self, call_id: str, reason: str, status: CallStatus = CallStatus.ENDED,
                 ended_at: dt.datetime | None = None) -> None:
        """`ended_at`: when the call ended (its last audio played, or the line dropped); now when not given."""
        with self.session() as session:
            call = _existing_call(session, call_id)
            call.status = status
            call.end_reason = reason
            call.ended_at = ended_at or dt.datetime.now(dt.UTC)

    def add_turn(self, call_id: str, **fields) -> Turn:
        """Append a turn to a call; its sequence number is the next free one."""
        with self.session() as session:
            _existing_call(session, call_id)
            seq = session.scalar(select(func.coalesce(func.max(Turn.seq), 0)).where(Turn.call_id == call_id)) + 1
            turn = Turn(call_id=call_id, seq=seq, **fields)
            session.add(turn)
        return turn

    def set_call_agent(self, call_id: str, user_id: int) -> bool:
        """The agent who accepted the call at the desk; False when there is no such call record."""
        with self.session() as session:
            call = session.get(Call, call_id)
            if call is None:
                return False
            call.agent_id = user_id
            return True

    def get_call(self, call_id: str) -> Call | None:
        with self.session() as session:
            return session.scalar(
                select(Call).where(Call.id == call_id)
                .options(selectinload(Call.turns), selectinload(Call.sms_messages), selectinload(Call.handoff_tickets))
            )

    def recent_calls(self, limit: int = 50) -> list[Call]:
        with self.session() as session:
            return list(session.scalars(select(Call).order_by(Call.started_at.desc()).limit(limit)))
