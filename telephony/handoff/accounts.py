"""Staff accounts (agents, supervisors, KB editors, admins): create, verify a password, reset it, change the role,
deactivate and reactivate, list.

Passwords are hashed with Argon2id (argon2-cffi's `PasswordHasher`, the RFC 9106 parameters it defaults to); neither
the password nor its hash is ever logged or returned. A change made with an `actor` (the signed-in admin, or
`Operator("cli")`) writes an audit entry (action "user") in the same transaction. Blocking (SQLAlchemy): call it
from a thread in async code.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from telephony.errors import TelephonyError
from telephony.review import audit
from telephony.store.database import Database
from telephony.store.models import User, UserRole

log = logging.getLogger(__name__)

MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 256  # a bound on hashing work, not a policy
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{1,63}$")
MAX_DISPLAY_NAME_CHARS = 128
# Role names accepted besides UserRole's values: "editor" was the KB editor's name before migration 0006.
ROLE_ALIASES = {"editor": UserRole.KB_EDITOR}
# Passwords refused whatever their length: the most common ones in Chinese and international leaks. NIST SP 800-63B
# §5.1.1.2 asks for a length floor and a blocklist rather than composition rules.
COMMON_PASSWORDS = frozenset({
    "password", "password1", "password123", "passw0rd", "p@ssw0rd", "p@ssword", "iloveyou", "woaini1314",
    "woaini520", "5201314520", "1qaz2wsx", "1q2w3e4r", "1q2w3e4r5t", "qwer1234", "asdf1234", "zxcv1234", "1234qwer",
    "qwertyui", "qwertyuiop", "a1234567", "a12345678", "a123456789", "abc12345", "abc123456", "abcd1234",
    "aa123456", "qq123456", "12345678a", "123456abc", "admin123", "admin1234", "admin888", "administrator",
    "root1234", "11223344", "123123123", "147258369", "123qweasd", "qweasdzxc", "changeme", "welcome1",
    "shebao123", "shebao12333", "12333123", "sunshine", "football", "baseball", "superman", "trustno1",
})
_RUNS = ("01234567890", "09876543210", "abcdefghijklmnopqrstuvwxyz", "zyxwvutsrqponmlkjihgfedcba",
         "qwertyuiopasdfghjklzxcvbnm")
MIN_DISTINCT_PASSWORD_CHARS = 4  # "11111111", "12121212", "abcabcab" are guessed at once
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


class InvalidUsernameError(InvalidAccountError):
    pass


class UsernameTakenError(InvalidAccountError):
    def __init__(self, username: str) -> None:
        super().__init__(f"username {username!r} is taken")
        self.username = username


class InvalidDisplayNameError(InvalidAccountError):
    pass


class UnknownRoleError(InvalidAccountError):
    def __init__(self, role: object) -> None:
        roles = ", ".join(member.value for member in UserRole)
        super().__init__(f"role {role!r} is not one of: {roles}")
        self.role = role


class WeakPasswordError(InvalidAccountError):
    """`reason`: short | long | username | simple | common."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class SelfChangeError(AccountError):
    """An admin tried to deactivate or demote their own account (they would lock themselves out)."""

    def __init__(self, username: str, change: str) -> None:
        super().__init__(f"user {username!r} cannot {change} their own account")
        self.username = username
        self.change = change


class LastAdminError(AccountError):
    """The change would leave no active admin (nobody could manage accounts from the web any more)."""

    def __init__(self, username: str) -> None:
        super().__init__(f"user {username!r} is the last active admin: make another admin first")
        self.username = username


def parse_role(role: UserRole | str) -> UserRole:
    """A role from its value (or the old name "editor"); `UnknownRoleError` otherwise."""
    if isinstance(role, UserRole):
        return role
    name = str(role).strip()
    if name in ROLE_ALIASES:
        return ROLE_ALIASES[name]
    try:
        return UserRole(name)
    except ValueError:
        raise UnknownRoleError(role) from None


def check_password(password: str, username: str = "") -> None:
    """`WeakPasswordError` for a password that is too short or long, contains the username, is a keyboard or
    alphabet run, has fewer than four different characters, or is a common one."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise WeakPasswordError(f"the password is too short: at least {MIN_PASSWORD_CHARS} characters", "short")
    if len(password) > MAX_PASSWORD_CHARS:
        raise WeakPasswordError(f"the password is too long: at most {MAX_PASSWORD_CHARS} characters", "long")
    folded = password.lower()
    name = username.strip().lower()
    if len(name) >= 3 and name in folded:
        raise WeakPasswordError("the password must not contain the username", "username")
    if len(set(folded)) < MIN_DISTINCT_PASSWORD_CHARS or any(folded in run for run in _RUNS):
        raise WeakPasswordError("the password is too simple: repeated characters or a run like 12345678", "simple")
    if folded in COMMON_PASSWORDS:
        raise WeakPasswordError("the password is one of the most common passwords", "common")


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

    def create(self, username: str, display_name: str, role: UserRole | str, password: str,
               actor: audit.Actor | None = None) -> Account:
        username = username.strip()
        display_name = display_name.strip()
        if not USERNAME.match(username):
            raise InvalidUsernameError(f"username {username!r}: 2 to 64 letters, digits, '.', '_' or '-', "
                                       "starting with a letter or digit")
        if not display_name or len(display_name) > MAX_DISPLAY_NAME_CHARS:
            raise InvalidDisplayNameError(f"display name for {username!r}: 1 to {MAX_DISPLAY_NAME_CHARS} characters")
        role = parse_role(role)
        check_password(password, username)
        password_hash = self.hasher.hash(password)
        with self.database.session() as session:
            # Usernames are unique as stored; a case-only twin ("Wang" beside "wang") would confuse people too.
            if session.scalar(select(User.id).where(func.lower(User.username) == username.lower())) is not None:
                raise UsernameTakenError(username)
            user = User(username=username, display_name=display_name, role=role, password_hash=password_hash)
            session.add(user)
            session.flush()
            account = Account.of(user)
            self._audit(session, actor, account, "create", role=role.value, display_name=display_name)
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

    def reset_password(self, who: str | int, new_password: str, actor: audit.Actor | None = None) -> Account:
        """A new password for the user (by username or id). Sessions already signed in stay valid until they expire
        (12 hours): deactivate the account to end them at once."""
        with self.database.session() as session:
            user = self._named(session, who)
            check_password(new_password, user.username)
            user.password_hash = self.hasher.hash(new_password)
            account = Account.of(user)
            self._audit(session, actor, account, "password")
        log.info("user %s: password reset", account.username)
        return account

    set_password = reset_password  # the name before issue 19

    def set_role(self, who: str | int, role: UserRole | str, actor: audit.Actor | None = None) -> Account:
        """Change the user's role (it applies from their next request). Refused for an admin's own account and for
        the last active admin; setting the role they have changes nothing and records nothing."""
        role = parse_role(role)
        with self.database.session() as session:
            user = self._named(session, who)
            before = user.role
            if before is role:
                return Account.of(user)
            if before is UserRole.ADMIN:
                self._refuse_self(actor, user, "demote")
                self._refuse_last_admin(session, user)
            user.role = role
            account = Account.of(user)
            self._audit(session, actor, account, "role", before=before.value, after=role.value)
        log.info("user %s: role %s -> %s", account.username, before.value, role.value)
        return account

    def deactivate(self, who: str | int, actor: audit.Actor | None = None) -> Account:
        """The user can no longer sign in or take tickets (an open session ends at its next request); their past
        tickets, notes and marks keep their name. Refused for the actor's own account and the last active admin."""
        with self.database.session() as session:
            user = self._named(session, who)
            if not user.active:
                return Account.of(user)
            self._refuse_self(actor, user, "deactivate")
            if user.role is UserRole.ADMIN:
                self._refuse_last_admin(session, user)
            user.active = False
            account = Account.of(user)
            self._audit(session, actor, account, "deactivate")
        log.info("user %s deactivated", account.username)
        return account

    def reactivate(self, who: str | int, actor: audit.Actor | None = None) -> Account:
        """The user may sign in again, with the password and role they had."""
        with self.database.session() as session:
            user = self._named(session, who)
            if user.active:
                return Account.of(user)
            user.active = True
            account = Account.of(user)
            self._audit(session, actor, account, "reactivate")
        log.info("user %s reactivated", account.username)
        return account

    def get(self, who: str | int) -> Account:
        with self.database.session() as session:
            return Account.of(self._named(session, who))

    def list(self, include_inactive: bool = True) -> list[Account]:
        with self.database.session() as session:
            query = select(User).order_by(User.username)
            if not include_inactive:
                query = query.where(User.active.is_(True))
            return [Account.of(user) for user in session.scalars(query)]

    @staticmethod
    def _named(session: Session, who: str | int) -> User:
        if isinstance(who, int):
            user = session.get(User, who)
        else:
            user = session.scalar(select(User).where(User.username == who.strip()))
        if user is None:
            raise UnknownUserError(who)
        return user

    @staticmethod
    def _refuse_self(actor: audit.Actor | None, user: User, change: str) -> None:
        if actor is not None and actor.user_id is not None and actor.user_id == user.id:
            raise SelfChangeError(user.username, change)

    @staticmethod
    def _refuse_last_admin(session: Session, user: User) -> None:
        others = session.scalar(select(func.count()).select_from(User).where(
            User.role == UserRole.ADMIN, User.active.is_(True), User.id != user.id))
        if not others:
            raise LastAdminError(user.username)

    @staticmethod
    def _audit(session: Session, actor: audit.Actor | None, account: Account, change: str, **detail: object) -> None:
        if actor is not None:  # never the password or its hash
            audit.record(session, actor, audit.AuditAction.USER, f"user:{account.username}", change=change,
                         user_id=account.id, **detail)

    def _spend_a_verification(self, password: str) -> None:
        if self._dummy_hash is None:
            self._dummy_hash = self.hasher.hash("not a password of anyone")
        try:
            self.hasher.verify(self._dummy_hash, password)
        except VerificationError:
            pass
