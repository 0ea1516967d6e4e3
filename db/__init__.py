"""Database layer: engine, tables and the SQL statements. The only package that knows SQL."""
