"""The annotation studio's storage, through SQLAlchemy: SQLite by default, PostgreSQL by URL.

Tables: users (name, role, scrypt password hash), sessions (sha256 of the cookie token, its
CSRF token, expiry), items (a pair to annotate, its machine suggestions, where it came
from), answers (one per annotator and item: labels, or skipped/flagged with a comment) and
adjudications (an admin's final labels for an item). Every submitted answer is one
transaction; on SQLite the database runs in WAL mode with synchronous=FULL, so an answer the
server confirmed survives a killed process.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint, create_engine, event, func, select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from safealign.annotate.labels import PairLabels, parse_labels

ROLES = ("annotator", "admin")
STATUSES = ("answered", "skipped", "flagged")
SESSION_HOURS = 12
RESERVATION_SECONDS = 900  # an item shown to an annotator is held for them this long (or until they answer it)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(256))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=lambda: datetime.now(UTC))


class SessionRow(Base):
    __tablename__ = "sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    csrf: Mapped[str] = mapped_column(String(64))
    expires: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of prompt + both responses: import is idempotent
    prompt: Mapped[str] = mapped_column(Text)
    response_0: Mapped[str] = mapped_column(Text)
    response_1: Mapped[str] = mapped_column(Text)
    system: Mapped[str | None] = mapped_column(Text, nullable=True)
    sources: Mapped[dict[str, Any]] = mapped_column(JSON)  # prompt_source, response_0_source, response_1_source
    suggestion: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # machine (or earlier) labels
    note: Mapped[str | None] = mapped_column(Text, nullable=True)  # why it is here (e.g. an audit flag)
    origin: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Answer(Base):
    __tablename__ = "answers"
    __table_args__ = (UniqueConstraint("item_id", "user_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    labels: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    suggestions_shown: Mapped[bool] = mapped_column(Boolean, default=False)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=lambda: datetime.now(UTC))


class Adjudication(Base):
    __tablename__ = "adjudications"
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    labels: Mapped[dict[str, Any]] = mapped_column(JSON)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=lambda: datetime.now(UTC))


class StoreError(ValueError):
    """A request the store refuses: an HTTP status and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def hash_password(password: str, salt: bytes | None = None, n: int = 2**14, r: int = 8, p: int = 1) -> str:
    """scrypt (hashlib, RFC 7914) as `scrypt$n$r$p$salt$hash` in hex."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    """Whether `password` matches a `hash_password` string (constant-time comparison)."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        again = hashlib.scrypt(password.encode("utf-8"), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(again.hex(), digest)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def item_key(prompt: str, response_0: str, response_1: str) -> str:
    """The identity of an item: sha256 over its three texts."""
    return hashlib.sha256(json.dumps([prompt, response_0, response_1]).encode("utf-8")).hexdigest()


@dataclass
class CurrentUser:
    """Who a session belongs to."""

    id: int
    name: str
    role: str
    csrf: str


def connect(url: str) -> Engine:
    """An engine for `url` (sqlite:///PATH, postgresql+psycopg://...) with the tables created."""
    sqlite = url.startswith("sqlite")
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30} if sqlite else {},
                           pool_pre_ping=not sqlite)
    if sqlite:
        @event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()
    Base.metadata.create_all(engine)
    return engine


class Store:
    """Every read and write of the studio; one short transaction per call."""

    def __init__(self, url: str, overlap: int = 2) -> None:
        if overlap < 1:
            raise ValueError("overlap must be at least 1")
        self.url = url
        self.overlap = overlap
        self.engine = connect(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Reservations live in this process: advisory (a submit to a full item is still refused by the
        # database), so they need no disk write per page view and need not survive a restart.
        self._reserved: dict[int, dict[int, float]] = {}  # item id -> {user id: expiry (monotonic seconds)}
        self._lock = threading.Lock()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits at the end of the block (or rolls back on an error)."""
        with self._sessions.begin() as session:
            yield session

    # users and sessions -------------------------------------------------------------------

    def add_user(self, name: str, password: str, role: str = "annotator") -> int:
        """A new user; StoreError(409) if the name is taken."""
        if role not in ROLES:
            raise StoreError(422, f"role: must be one of {', '.join(ROLES)}, got {role!r}")
        if not name.strip() or len(name) > 64:
            raise StoreError(422, "name: 1 to 64 characters")
        if len(password) < 8:
            raise StoreError(422, "password: at least 8 characters")
        try:
            with self.transaction() as s:
                user = User(name=name.strip(), role=role, password_hash=hash_password(password))
                s.add(user)
                s.flush()
                return user.id
        except IntegrityError:
            raise StoreError(409, f"user {name!r} exists already") from None

    def users(self) -> list[tuple[int, str, str]]:
        """(id, name, role) of every user."""
        with self.transaction() as s:
            return [(u.id, u.name, u.role) for u in s.scalars(select(User).order_by(User.id))]

    def login(self, name: str, password: str) -> tuple[str, CurrentUser] | None:
        """A new session token and its user, or None for a wrong name or password."""
        with self.transaction() as s:
            user = s.scalars(select(User).where(User.name == name)).first()
            if user is None:
                hash_password(password)  # the same work as a real check: no timing hint that the name is unknown
                return None
            if not check_password(password, user.password_hash):
                return None
            token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
            s.add(SessionRow(token_hash=_token_hash(token), user_id=user.id, csrf=csrf,
                             expires=datetime.now(UTC) + timedelta(hours=SESSION_HOURS)))
            return token, CurrentUser(user.id, user.name, user.role, csrf)

    def session_user(self, token: str | None) -> CurrentUser | None:
        """The user of a live session token, or None."""
        if not token:
            return None
        with self.transaction() as s:
            row = s.get(SessionRow, _token_hash(token))
            if row is None or _aware(row.expires) < datetime.now(UTC):
                return None
            user = s.get(User, row.user_id)
            return CurrentUser(user.id, user.name, user.role, row.csrf) if user else None

    def logout(self, token: str) -> None:
        """End a session."""
        with self.transaction() as s:
            row = s.get(SessionRow, _token_hash(token))
            if row is not None:
                s.delete(row)

    # items ----------------------------------------------------------------------------------

    def add_items(self, items: list[dict[str, Any]]) -> tuple[int, int]:
        """Insert items (dicts of Item's columns, key made here); returns (added, already there)."""
        added = present = 0
        with self.transaction() as s:
            known = set(s.scalars(select(Item.key)))
            for item in items:
                key = item_key(item["prompt"], item["response_0"], item["response_1"])
                if key in known:
                    present += 1
                    continue
                known.add(key)
                s.add(Item(key=key, **item))
                added += 1
        return added, present

    def item(self, item_id: int) -> Item | None:
        """One item."""
        with self.transaction() as s:
            return s.get(Item, item_id)

    def _open_items(self, user: CurrentUser, column: Any) -> tuple[Any, Any]:
        """SELECT `column` over the items open to `user` (not answered or skipped by them, fewer than `overlap` answers),
        and the items' answer-count expression."""
        mine = select(Answer.item_id).where(Answer.user_id == user.id)
        counts = (select(Answer.item_id, func.count().label("n")).where(Answer.status != "skipped")
                  .group_by(Answer.item_id).subquery())
        answered = func.coalesce(counts.c.n, 0)
        query = (select(column).select_from(Item).outerjoin(counts, counts.c.item_id == Item.id)
                 .where(Item.id.not_in(mine), answered < self.overlap))
        return query, answered

    def next_item(self, user: CurrentUser, candidates: int = 64) -> Item | None:
        """The user's next item, held for them: one they have not answered (or skipped) whose answers plus other
        annotators' live reservations are fewer than `overlap`; the one they hold already, else the fullest first."""
        query, answered = self._open_items(user, Item.id)
        query = query.add_columns(answered).order_by(answered.desc(), Item.id).limit(candidates)
        # The read and the reservation under one lock that `release` (after each answer's commit) takes too:
        # no choice is made from counts older than a reservation already dropped.
        with self.transaction() as s, self._lock:
            rows = list(s.execute(query))
            now = time.monotonic()
            held = [item_id for item_id, _ in rows if self._reserved.get(item_id, {}).get(user.id, 0) > now]
            chosen = held[0] if held else None
            for item_id, answered in rows:
                if chosen is not None:
                    break
                others = sum(1 for uid, until in self._reserved.get(item_id, {}).items() if uid != user.id and until > now)
                if answered + others < self.overlap:
                    chosen = item_id
            if chosen is None and rows:
                chosen = rows[0][0]  # every candidate is held by others: share the fullest rather than show nothing
            if chosen is not None:
                holders = self._reserved.setdefault(chosen, {})
                for uid in [uid for uid, until in holders.items() if until <= now]:
                    del holders[uid]
                holders[user.id] = now + RESERVATION_SECONDS
            return s.get(Item, chosen) if chosen is not None else None

    def release(self, user: CurrentUser, item_id: int) -> None:
        """Drop the user's reservation of an item (after their answer)."""
        with self._lock:
            holders = self._reserved.get(item_id)
            if holders is not None:
                holders.pop(user.id, None)
                if not holders:
                    del self._reserved[item_id]

    def progress(self, user: CurrentUser) -> tuple[int, int]:
        """(items this user has done, items this user could still get + done)."""
        with self.transaction() as s:
            done = s.scalar(select(func.count()).select_from(Answer).where(Answer.user_id == user.id)) or 0
            open_ = s.scalar(self._open_items(user, func.count())[0]) or 0
            return done, done + open_

    def submit(self, user: CurrentUser, item_id: int, status: str, labels: Any = None, comment: str | None = None,
               suggestions_shown: bool = False, seconds: float | None = None) -> int:
        """Store (or replace) the user's answer to an item in one transaction; returns the answer id."""
        if status not in STATUSES:
            raise StoreError(422, f"status: must be one of {', '.join(STATUSES)}")
        checked: PairLabels | None = None
        if status == "answered":
            checked = parse_labels(labels)
        elif labels is not None and status == "flagged":
            checked = parse_labels(labels)
        if status == "flagged" and not (comment or "").strip():
            raise StoreError(422, "comment: a flag needs a comment")
        if comment is not None and len(comment) > 4000:
            raise StoreError(422, "comment: at most 4,000 characters")
        with self.transaction() as s:
            if s.get(Item, item_id) is None:
                raise StoreError(404, f"item {item_id}: no such item")
            answer = s.scalars(select(Answer).where(Answer.item_id == item_id, Answer.user_id == user.id)).first()
            if answer is None:
                taken = s.scalar(select(func.count()).select_from(Answer)
                                 .where(Answer.item_id == item_id, Answer.status != "skipped")) or 0
                if taken >= self.overlap and status != "skipped":
                    raise StoreError(409, f"item {item_id}: has its {self.overlap} answer(s) already; take the next one")
                answer = Answer(item_id=item_id, user_id=user.id)
                s.add(answer)
            answer.status = status
            answer.labels = checked.to_json() if checked else None
            answer.comment = comment
            answer.suggestions_shown = bool(suggestions_shown)
            answer.seconds = seconds
            answer.created = datetime.now(UTC)
            s.flush()
            answer_id = answer.id
        self.release(user, item_id)  # after the commit
        return answer_id

    def answers(self, item_id: int | None = None) -> list[dict[str, Any]]:
        """Answers (of one item, or all) with the annotator's name, oldest first."""
        with self.transaction() as s:
            query = select(Answer, User.name).join(User, User.id == Answer.user_id).order_by(Answer.id)
            if item_id is not None:
                query = query.where(Answer.item_id == item_id)
            return [{"item_id": a.item_id, "user": name, "status": a.status, "labels": a.labels, "comment": a.comment,
                     "suggestions_shown": a.suggestions_shown, "seconds": a.seconds} for a, name in s.execute(query)]

    def adjudicate(self, admin: CurrentUser, item_id: int, labels: Any) -> None:
        """An admin's final labels for an item (replacing an earlier adjudication)."""
        if admin.role != "admin":
            raise StoreError(403, "adjudication needs the admin role")
        checked = parse_labels(labels)
        with self.transaction() as s:
            if s.get(Item, item_id) is None:
                raise StoreError(404, f"item {item_id}: no such item")
            row = s.get(Adjudication, item_id)
            if row is None:
                row = Adjudication(item_id=item_id, user_id=admin.id, labels=checked.to_json())
                s.add(row)
            else:
                row.user_id, row.labels, row.created = admin.id, checked.to_json(), datetime.now(UTC)

    def adjudications(self) -> dict[int, dict[str, Any]]:
        """{item id: labels} of every adjudicated item."""
        with self.transaction() as s:
            return {a.item_id: a.labels for a in s.scalars(select(Adjudication))}

    def items(self) -> list[Item]:
        """Every item, by id."""
        with self.transaction() as s:
            return list(s.scalars(select(Item).order_by(Item.id)))

    def counts(self) -> dict[str, int]:
        """Items, answers by status, adjudications."""
        with self.transaction() as s:
            out = {"items": s.scalar(select(func.count()).select_from(Item)) or 0,
                   "adjudicated": s.scalar(select(func.count()).select_from(Adjudication)) or 0}
            for status, n in s.execute(select(Answer.status, func.count()).group_by(Answer.status)):
                out[status] = n
            return out


def _aware(moment: datetime) -> datetime:
    """SQLite gives naive datetimes back: they were stored in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
