#!/bin/sh
# The quickstart's migration: creates the shop's table once (psql, from the postgresql-client package).
set -eu
psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -q <<'SQL'
CREATE TABLE IF NOT EXISTS products (
  id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name  text NOT NULL UNIQUE,
  price numeric(10, 2) NOT NULL
);
INSERT INTO products (name, price) VALUES ('kip mug', 9.50), ('kip sticker', 1.00)
ON CONFLICT (name) DO NOTHING;
SQL
echo "migrated: products is ready"
