"""Postgres: every SQL statement and psycopg call, with driver errors translated here."""
