#!/bin/bash
# Initialises the cluster on first start from POSTGRES_USER, POSTGRES_PASSWORD and
# POSTGRES_DB (as the official image does), then runs the server in the foreground.
set -euo pipefail
: "${POSTGRES_USER:?POSTGRES_USER is required}"
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
: "${POSTGRES_DB:=$POSTGRES_USER}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-host=scram-sha-256 \
    --auth-local=trust --encoding=UTF8 --no-sync >/dev/null
  rm -f "$pwfile"
  {
    echo "listen_addresses = '*'"
    echo "fsync = off"                 # test database: durability is not needed
    echo "synchronous_commit = off"
    echo "full_page_writes = off"
    echo "jit = off"                   # the image leaves the LLVM JIT out
    echo "unix_socket_directories = '/run/postgresql'"
  } >>"$PGDATA/postgresql.conf"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != "postgres" ]; then
    postgres --single -D "$PGDATA" -j postgres <<<"CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\";" >/dev/null
  fi
  echo "postgres-entrypoint: initialised database $POSTGRES_DB for user $POSTGRES_USER"
fi
exec postgres -D "$PGDATA"
