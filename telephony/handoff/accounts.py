"""Staff accounts (agents, supervisors, editors, admins): create, verify a password, deactivate, list.

Passwords are hashed with Argon2id (argon2-cffi's `PasswordHasher`, the RFC 9106 parameters it defaults to); neither
the password nor its hash is ever logged or returned. Blocking (SQLAlchemy): call it from a thread in async code.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from telephony.errors import TelephonyError
from telephony.store.database import Database
from telephony.store.models import User, UserRole

log = logging.getLogger(__name__)

MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 256  # a bound on hashing work, not a policy
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{1,63}$")
MAX_DISPLAY_NAME_CHARS = 128
# Who may call tickets' callers back: editors maintain the knowledge base and take no tickets.
CALLBACK_ROLES = frozenset({UserRole.AGENT, UserRole.SUPERVISOR, UserRole.ADMIN})


class AccountError(TelephonyError):
    """A staff account operation was refused."""


class UnknownUserError(AccountError):
    def __init__(self, who: str | int) -> None:
        label = f"user id {who}" if isinstance(who, int) else f"user {who!r}"
        super().__init__(f"no {label}: check the name with `hotline users list`")
        self.who = who


class InactiveUserError(AccountError):
    def __init__(self, username: str) -> None:
        super().__init__(f"user {username!r} is deactivated")
        self.username = username


class WrongPasswordError(AccountError):
    def __init__(self, username: str) -> None:
        super().__init__(f"wrong password for user {username!r}")
        self.username = username


class InvalidAccountError(AccountError):
    """A username, display name, role or password that cannot be stored (taken, malformed, too short)."""


@dataclass(frozen=True)
class Account:
    """A user as callers of this module see it: never the password hash."""

    id: int
    username: str
    display_name: str
    role: UserRole
    active: bool
    created_at: dt.datetime

    @classmethod
    def of(cls, user: User) -> Account:
        return cls(user.id, user.username, user.display_name, user.role, user.active, user.created_at)

    def to_json(self) -> dict[str, object]:
        created = self.created_at if self.created_at.tzinfo else self.created_at.replace(tzinfo=dt.UTC)
        return {"id": self.id, "username": self.username, "display_name": self.display_name,
                "role": self.role.value, "active": self.active, "created_at": created.isoformat()}


def require_active_user(session: Session, user_id: int) -> User:
    """The user with this id, if active; `UnknownUserError` / `InactiveUserError` otherwise."""
    user = session.get(User, user_id)
    if user is None:
        raise UnknownUserError(user_id)
    if not user.active:
        raise InactiveUserError(user.username)
    return user


class Accounts:
    def __init__(self, database: Database, hasher: PasswordHasher | None = None) -> None:
        self.database = database
        self.hasher = hasher or PasswordHasher()
        self._dummy_hash: str | None = None

    def create(self, username: str, display_name: str, role: UserRole | str, password: str) -> Account:
        username = username.strip()
        display_name = display_name.strip()
        if not USERNAME.match(username):
            raise InvalidAccountError(f"username {username!r}: 2 to 64 letters, digits, '.', '_' or '-', "
                                      "starting with a letter or digit")
        if not display_name or len(display_name) > MAX_DISPLAY_NAME_CHARS:
            raise InvalidAccountError(f"display name for {username!r}: 1 to {MAX_DISPLAY_NAME_CHARS} characters")
        try:
            role = UserRole(role)
        except ValueError:
            roles = ", ".join(member.value for member in UserRole)
            raise InvalidAccountError(f"role {role!r} is not one of: {roles}") from None
        self._check_password(password)
        password_hash = self.hasher.hash(password)
        with self.database.session() as session:
            if session.scalar(select(User.id).where(User.username == username)) is not None:
                raise InvalidAccountError(f"username {username!r} is taken")
            user = User(username=username, display_name=display_name, role=role, password_hash=password_hash)
            session.add(user)
            session.flush()
            account = Account.of(user)
        log.info("user %s created (%s)", username, role.value)
        return account

    def verify(self, username: str, password: str) -> Account:
        """The account whose password this is; `UnknownUserError`, `WrongPasswordError` or `InactiveUserError`."""
        with self.database.session() as session:
            user = session.scalar(select(User).where(User.username == username.strip()))
            if user is None or not user.password_hash:
                self._spend_a_verification(password)  # the same time as a wrong password: names are not probed
                if user is None:
                    raise UnknownUserError(username)
                raise WrongPasswordError(user.username)
            try:
                self.hasher.verify(user.password_hash, password)
            except (VerificationError, InvalidHashError):  # a mismatch is a VerificationError
                raise WrongPasswordError(user.username) from None
            if not user.active:
                raise InactiveUserError(user.username)
            if self.hasher.check_needs_rehash(user.password_hash):  # the hasher's parameters were raised since
                user.password_hash = self.hasher.hash(password)
            return Account.of(user)

    def set_password(self, username: str, password: str) -> Account:
        self._check_password(password)
        password_hash = self.hasher.hash(password)
        with self.database.session() as session:
            user = self._named(session, username)
            user.password_hash = password_hash
            return Account.of(user)

    def deactivate(self, username: str) -> Account:
        """The user can no longer sign in or take tickets; their past tickets and attempts keep their name."""
        with self.database.session() as session:
            user = self._named(session, username)
            user.active = False
            account = Account.of(user)
        log.info("user %s deactivated", account.username)
        return account

    def get(self, username: str) -> Account:
        with self.database.session() as session:
            return Account.of(self._named(session, username))

    def list(self, include_inactive: bool = True) -> list[Account]:
        with self.database.session() as session:
            query = select(User).order_by(User.username)
            if not include_inactive:
                query = query.where(User.active.is_(True))
            return [Account.of(user) for user in session.scalars(query)]

    @staticmethod
    def _named(session: Session, username: str) -> User:
        user = session.scalar(select(User).where(User.username == username.strip()))
        if user is None:
            raise UnknownUserError(username)
        return user

    @staticmethod
    def _check_password(password: str) -> None:
        if len(password) < MIN_PASSWORD_CHARS:
            raise InvalidAccountError(f"the password is too short: at least {MIN_PASSWORD_CHARS} characters")
        if len(password) > MAX_PASSWORD_CHARS:
            raise InvalidAccountError(f"the password is too long: at most {MAX_PASSWORD_CHARS} characters")

    def _spend_a_verification(self, password: str) -> None:
        if self._dummy_hash is None:
            self._dummy_hash = self.hasher.hash("not a password of anyone")
        try:
            self.hasher.verify(self._dummy_hash, password)
        except VerificationError:
            pass
