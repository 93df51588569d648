"""The tables: Celery's `celery_taskmeta` and `celery_tasksetmeta`, column for column, and fastq's chord tables.

Celery declares `TaskExtended` on the same table as `Task` (`extend_existing`), so whatever `result_extended`
says, the table Celery creates has every extended column, and a non-extended writer stores NULL in them. The
layout here is that table, so either side can create it and the other reads and writes it unchanged.
Celery 5.7 adds the nullable `children` and `stamps` columns to older tables at setup; `prepare` does too, and
when it cannot (no ALTER privilege), the columns missing from the table are left out of reads and writes.

The chord tables are fastq's alone (Celery's database backend joins chords by polling), created in the task
table's schema.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError, IntegrityError, ProgrammingError

__all__ = ['Tables', 'build_tables', 'prepare']

logger = logging.getLogger('fastq.backends.database')

#: Celery's id column: BIGINT on SQL Server only (`DialectSpecificInteger`).
_ID = sa.Integer().with_variant(sa.BigInteger(), 'mssql')
#: Chord parts hold task results: more than MySQL's 64 KiB BLOB may be needed.
_PAYLOAD = sa.LargeBinary().with_variant(mysql.LONGBLOB(), 'mysql', 'mariadb')

#: Creating tables races with other processes doing the same (a check, then CREATE): retried, as Celery does
#: (connection errors are left to the backend's retry policy).
CREATE_RETRIES = 10


@dataclass(slots=True)
class Tables:
    task: sa.Table
    group: sa.Table
    chord: sa.Table
    chord_part: sa.Table
    #: The task table's columns that exist in the database (known after `prepare`).
    task_columns: frozenset[str] = field(default_factory=frozenset)
    #: Whether fastq's chord tables exist (known after `prepare`).
    chords_ready: bool = False


def build_tables(schemas: dict[str, Any], names: dict[str, Any]) -> Tables:
    """The tables under `database_table_schemas` / `database_table_names` (keys 'task' and 'group', as in Celery;
    fastq's chord tables take 'chord' and 'chord_part', and the task table's schema unless given one)."""
    metadata = sa.MetaData()
    task_schema = schemas.get('task')
    group_schema = schemas.get('group')
    task = sa.Table(
        names.get('task') or 'celery_taskmeta',
        metadata,
        sa.Column('id', _ID, sa.Sequence('task_id_sequence', schema=task_schema), primary_key=True, autoincrement=True),
        sa.Column('task_id', sa.String(155), unique=True),
        sa.Column('status', sa.String(50), default='PENDING'),
        sa.Column('result', sa.LargeBinary, nullable=True),
        sa.Column('date_done', sa.DateTime, nullable=True, index=True),
        sa.Column('traceback', sa.Text, nullable=True),
        sa.Column('children', sa.LargeBinary, nullable=True),
        sa.Column('name', sa.String(155), nullable=True),
        sa.Column('args', sa.LargeBinary, nullable=True),
        sa.Column('kwargs', sa.LargeBinary, nullable=True),
        sa.Column('worker', sa.String(155), nullable=True),
        sa.Column('retries', sa.Integer, nullable=True),
        sa.Column('queue', sa.String(155), nullable=True),
        sa.Column('stamps', sa.LargeBinary, nullable=True),
        schema=task_schema,
        sqlite_autoincrement=True,
    )
    group = sa.Table(
        names.get('group') or 'celery_tasksetmeta',
        metadata,
        sa.Column(
            'id', _ID, sa.Sequence('taskset_id_sequence', schema=group_schema), primary_key=True, autoincrement=True
        ),
        sa.Column('taskset_id', sa.String(155), unique=True),
        sa.Column('result', sa.LargeBinary, nullable=True),
        sa.Column('date_done', sa.DateTime, nullable=True, index=True),
        schema=group_schema,
        sqlite_autoincrement=True,
    )
    chord_schema = schemas.get('chord', task_schema)
    # size: parts that complete the chord (NULL until the last header task is sent, and after a ChordError);
    # diff: parts added to the running chord; claim/claim_until: who sends the body, until when (epoch
    # seconds); done: joined, kept until `expires` so late duplicates of header tasks are ignored.
    chord = sa.Table(
        names.get('chord') or 'fastq_chords',
        metadata,
        sa.Column('group_id', sa.String(155), primary_key=True),
        sa.Column('size', sa.Integer, nullable=True),
        sa.Column('diff', sa.Integer, nullable=False, default=0),
        sa.Column('claim', sa.String(64), nullable=True),
        sa.Column('claim_until', sa.Double, nullable=True),
        sa.Column('done', sa.Integer, nullable=False, default=0),
        sa.Column('expires', sa.Double, nullable=False, index=True),
        schema=chord_schema,
    )
    # One row per header task and group index ('task_id:index'); idx orders the values as the header does.
    chord_part = sa.Table(
        names.get('chord_part') or 'fastq_chord_parts',
        metadata,
        sa.Column('group_id', sa.String(155), primary_key=True),
        sa.Column('member', sa.String(200), primary_key=True),
        sa.Column('idx', sa.BigInteger, nullable=False),
        sa.Column('payload', _PAYLOAD, nullable=False),
        schema=chord_schema,
    )
    return Tables(task, group, chord, chord_part)


def prepare(engine: Engine, tables: Tables, create: bool = True, chords: bool = True) -> Tables:
    """Create what is missing (tables, then Celery 5.7's newer nullable columns); learn the task table's columns.

    Celery's tables come first and on their own: a role that may use them but not create tables (the rule in
    PostgreSQL 15+'s `public` for all but its owner) stores results as Celery does. fastq's chord tables are
    made only with `chords` (native joins), and when they cannot be, results are still stored: the warning
    says how to make them. (All four were created at once, so such a role could store no result at all.)
    """
    if create:
        _create_all(engine, [tables.task, tables.group])
        if chords:
            _create_chord_tables(engine, tables)
        _add_missing_columns(engine, tables)
    inspector = sa.inspect(engine)
    existing = {c['name'] for c in inspector.get_columns(tables.task.name, schema=tables.task.schema)}
    tables.task_columns = frozenset(c.name for c in tables.task.columns if c.name in existing)
    tables.chords_ready = chords and all(
        inspector.has_table(t.name, schema=t.schema) for t in (tables.chord, tables.chord_part)
    )
    return tables


def _create_chord_tables(engine: Engine, tables: Tables) -> None:
    chord_tables = [tables.chord, tables.chord_part]
    try:
        tables.task.metadata.create_all(engine, tables=chord_tables)
    except DatabaseError as exc:
        if exc.connection_invalidated:  # (the backend's retry policy deals with a lost connection)
            raise
        time.sleep(random.uniform(0, 0.05))  # another process creating them at the same moment, maybe
        if all(sa.inspect(engine).has_table(t.name, schema=t.schema) for t in chord_tables):
            return
        ddl: list[Any] = [sa.schema.CreateTable(t) for t in chord_tables]
        ddl += [sa.schema.CreateIndex(index) for t in chord_tables for index in t.indexes]
        statements = '; '.join(str(statement.compile(engine)).strip() for statement in ddl)
        logger.warning(
            'Could not create the chord tables %s (%s): results are stored, but chords sent with native joins '
            'cannot be joined here. Create them (%s), or set result_backend_transport_options '
            "{'native_join': False} on clients and workers to join chords with celery.chord_unlock as Celery does",
            ' and '.join(t.name for t in chord_tables), str(exc).strip().splitlines()[0], statements,
        )  # fmt: skip


def _create_all(engine: Engine, chosen: list[sa.Table]) -> None:
    retries = 0
    while True:
        try:
            chosen[0].metadata.create_all(engine, tables=chosen)
            return
        except (IntegrityError, ProgrammingError):  # "already exists": another process was quicker
            if retries >= CREATE_RETRIES:
                raise
            time.sleep(random.uniform(0, min(1.0, 0.01 * 2**retries)))
            retries += 1


def _add_missing_columns(engine: Engine, tables: Tables) -> None:
    """Celery's `_migrate_missing_columns`: a table from an older Celery gets `children` and `stamps`."""
    inspector = sa.inspect(engine)
    preparer = engine.dialect.identifier_preparer
    for table in (tables.task, tables.group):
        existing = {c['name'] for c in inspector.get_columns(table.name, schema=table.schema)}
        for column in table.columns:
            if column.name in existing or not column.nullable:
                continue
            statement = (
                f'ALTER TABLE {preparer.format_table(table)} ADD COLUMN '
                f'{preparer.quote_identifier(column.name)} {column.type.compile(engine.dialect)}'
            )
            try:
                with engine.begin() as conn:
                    conn.execute(sa.text(statement))
            except DatabaseError as exc:
                logger.warning('Could not add column %r to %r (%s); it is left out. To add it: %s', column.name,
                               table.name, exc, statement)  # fmt: skip
