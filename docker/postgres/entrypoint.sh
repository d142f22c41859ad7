#!/bin/bash
# Runs PostgreSQL in the foreground, its superuser and database those of POSTGRES_USER,
# POSTGRES_PASSWORD and POSTGRES_DB (as the official image does).
#
# On first start the cluster is initialised (initdb) and the credentials set (one
# single-user session); a restarted container keeps both. (A cluster initialised in the image
# instead started a second sooner, but with it the suite failed more often in the 2 GiB rig:
# 7 runs of 20 against 1 of 10 this way, for a cause not found. Not kept.)
set -euo pipefail

init() {
  initdb --username=postgres --auth-host=scram-sha-256 --auth-local=trust --encoding=UTF8 \
    --no-sync >/dev/null
  {
    echo "listen_addresses = '*'"
    echo "fsync = off"                 # test database: durability is not needed
    echo "synchronous_commit = off"
    echo "full_page_writes = off"
    echo "jit = off"                   # the image leaves the LLVM JIT out
    echo "unix_socket_directories = '/run/postgresql'"
  } >>"$PGDATA/postgresql.conf"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
}

# SQL literals: a string in single quotes, a name in double quotes, their quotes doubled.
literal() { printf "'%s'" "${1//\'/\'\'}"; }
identifier() { printf '"%s"' "${1//\"/\"\"}"; }

: "${POSTGRES_USER:?POSTGRES_USER is required}"
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
: "${POSTGRES_DB:=$POSTGRES_USER}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  init
fi
# Once per data directory (a restarted container keeps its own).
marker="$PGDATA/e2e-credentials"
if [ ! -e "$marker" ]; then
  user=$(identifier "$POSTGRES_USER")
  if [ "$POSTGRES_USER" = postgres ]; then
    sql="ALTER ROLE postgres PASSWORD $(literal "$POSTGRES_PASSWORD");"
  else
    sql="CREATE ROLE $user SUPERUSER LOGIN PASSWORD $(literal "$POSTGRES_PASSWORD");"
  fi
  if [ "$POSTGRES_DB" != postgres ]; then
    sql+=$'\n\n'"CREATE DATABASE $(identifier "$POSTGRES_DB") OWNER $user;"
  fi
  # -j: statements end with a semicolon and an empty line.
  postgres --single -D "$PGDATA" -j postgres <<<"$sql"$'\n' >/dev/null
  touch "$marker"
  echo "postgres-entrypoint: database $POSTGRES_DB for user $POSTGRES_USER"
fi
exec postgres -D "$PGDATA"
