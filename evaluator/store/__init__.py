"""The database: every table (``tables``), the engine, schema creation and upgrades in one
place (``schema``), and the batched idempotent upsert every write goes through (``upsert``).

Imports ``models`` only; the rooms that own tables (``sinks/sql.py`` for results, ``ledger``,
``sinks/outbox.py``) import it, never the other way round.
"""
