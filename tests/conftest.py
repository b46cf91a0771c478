"""Shared fixtures."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.store.conn import Db, open_db
from sidecar.store.db import connect


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A fresh on-disk SQLite database with the project's schema."""
    c = connect(tmp_path / "test.db")
    yield c
    c.close()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs of the test's own (root is needed to mount it)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path) -> Path:
    """Fill the filesystem of ``path`` to the last byte."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                continue
    finally:
        os.close(fd)
    return filler


def target_of(db: Db) -> str:
    """What ``--db`` takes to name this store: its file, or its URL."""
    if isinstance(db, sqlite3.Connection):
        return str(db.execute("PRAGMA database_list").fetchone()[2])
    return db.url


def reopen(db: Db) -> Db:
    """Another connection to the same store (another process would have its own)."""
    return open_db(target_of(db))


def downgrade_and_reopen(db: Db, sql: list[str]) -> tuple[Db, str]:
    """Turn ``db`` into an older release's store with ``sql`` (in one transaction on
    PostgreSQL), close it and open it again as a command would (which upgrades it): the
    new connection, and the query listing a table's columns in order on that database."""
    target = target_of(db)
    if isinstance(db, sqlite3.Connection):
        for q in sql:
            db.execute(q)
        columns = "SELECT name FROM pragma_table_info(?)"
    else:
        with db.transaction():
            for q in sql:
                db.execute(q)
        columns = ("SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                   "ORDER BY ordinal_position")
    db.close()
    return open_db(target), columns


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    """A fresh store with the project's schema, on each database: a SQLite file, and a new
    PostgreSQL database on the local server (dropped afterwards)."""
    if request.param == "sqlite":
        c: Db = connect(tmp_path / "test.db")
        yield c
        c.close()
        return
    from tests.store.pgdb import as_url, fresh_database

    with fresh_database() as conninfo:
        c = open_db(as_url(conninfo))
        try:
            yield c
        finally:
            c.close()
