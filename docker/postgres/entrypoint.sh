#!/bin/bash
# Runs PostgreSQL in the foreground, its superuser and database those of POSTGRES_USER,
# POSTGRES_PASSWORD and POSTGRES_DB (as the official image does).
#
# The image holds a cluster initialised when it was built (`init`, below; initdb takes a
# second or more), so a container only sets its credentials from its environment (the
# Secret's), in one single-user session, on first start, and is ready in a fraction of a
# second. A data directory that is empty (a volume mounted over it) is initialised here first.
# (Once taken out because the suite failed more often with it in the 2 GiB rig: that was name
# lookups lost while aardvark-dns reloads, which a faster start made likelier;
# docs/dns-hang.md.)
#
#   postgres-entrypoint init    initialise $PGDATA (the image build runs this)
#   postgres-entrypoint         set the credentials once, then run the server
set -euo pipefail

# A role and a database made with the cluster, renamed at start to the ones asked for: a
# rename takes 45 ms in the single-user session, CREATE DATABASE (a copy of template1 and a
# checkpoint) about 300 ms.
readonly SPARE_ROLE=e2e_spare_owner SPARE_DB=e2e_spare_db

# Runs SQL in a single-user session (-j: statements end with a semicolon and an empty line).
# The first statement that fails ends it, non-zero (exit_on_error: single-user mode otherwise
# goes on to the next statement, and this script would print success); the error is logged
# without its statement, which can hold the password (log_min_error_statement).
single() {
  postgres --single -D "$PGDATA" -j -c exit_on_error=true -c log_min_error_statement=panic \
    postgres <<<"$1"$'\n' >/dev/null
}

init() {
  initdb --username=postgres --auth-host=scram-sha-256 --auth-local=trust --encoding=UTF8 \
    --wal-segsize=1 --no-sync >/dev/null
  {
    echo "listen_addresses = '*'"
    echo "fsync = off"                 # test database: durability is not needed
    echo "synchronous_commit = off"
    echo "full_page_writes = off"
    echo "jit = off"                   # the image leaves the LLVM JIT out
    echo "unix_socket_directories = '/run/postgresql'"
  } >>"$PGDATA/postgresql.conf"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  single "CREATE ROLE $SPARE_ROLE SUPERUSER LOGIN;"$'\n\n'"CREATE DATABASE $SPARE_DB OWNER $SPARE_ROLE;"
}

# SQL literals: a string in single quotes, a name in double quotes, their quotes doubled.
literal() { printf "'%s'" "${1//\'/\'\'}"; }
identifier() { printf '"%s"' "${1//\"/\"\"}"; }

# The SQL that makes the spare role and database the asked-for ones.
credentials_sql() {
  local user db sql
  user=$(identifier "$POSTGRES_USER")
  db=$(identifier "$POSTGRES_DB")
  if [ "$POSTGRES_USER" = postgres ]; then
    sql="ALTER DATABASE $SPARE_DB OWNER TO postgres;"$'\n\n'"DROP ROLE $SPARE_ROLE;"
  elif [ "$POSTGRES_USER" != "$SPARE_ROLE" ]; then
    sql="ALTER ROLE $SPARE_ROLE RENAME TO $user;"
  fi
  sql+=$'\n\n'"ALTER ROLE $user PASSWORD $(literal "$POSTGRES_PASSWORD");"
  if [ "$POSTGRES_DB" = postgres ]; then
    sql+=$'\n\n'"DROP DATABASE $SPARE_DB;"
  elif [ "$POSTGRES_DB" != "$SPARE_DB" ]; then
    sql+=$'\n\n'"ALTER DATABASE $SPARE_DB RENAME TO $db;"
  fi
  printf '%s' "$sql"
}

if [ "${1:-}" = init ]; then
  init
  exit 0
fi

: "${POSTGRES_USER:?POSTGRES_USER is required}"
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
: "${POSTGRES_DB:=$POSTGRES_USER}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  init
fi
# Once per data directory (a restarted container keeps its own).
marker="$PGDATA/e2e-credentials"
if [ ! -e "$marker" ]; then
  single "$(credentials_sql)"
  touch "$marker"
  echo "postgres-entrypoint: database $POSTGRES_DB for user $POSTGRES_USER"
fi
exec postgres -D "$PGDATA"
