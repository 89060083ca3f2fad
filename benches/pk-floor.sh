#!/usr/bin/env bash
# The speed limit that the event log's primary key sets, whatever the service does (issue 14).
#
# Inserts ROWS rows with random 66-character transaction hashes into one table that has only the
# contract's key, PRIMARY KEY (transaction_hash, log_index), 5,000 rows per transaction (a batch of
# the service), and prints the insert rate of every 200,000 rows together with the full-page
# images and WAL bytes PostgreSQL wrote per row. Nothing of the service runs: the rows are made by
# PostgreSQL itself, so the rate at 10 M rows against the rate at 200 k rows is what index
# maintenance alone costs on this machine and these server settings.
#
#   benches/pk-floor.sh [ROWS] [KEY]     ROWS default 10000000; KEY text (default) or bytea
#
# Connects with libpq's environment (PGHOST, PGPORT, PGUSER; default 127.0.0.1:5432, postgres),
# creates the database pk_floor and drops it at the end.
set -euo pipefail

rows=${1:-10000000}
key=${2:-text}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
db=pk_floor
batch=5000
window=200000

case "$key" in
  text) hash="'0x' || md5(g::text) || md5((g + 1)::text)"; column="text" ;;
  bytea) hash="decode(md5(g::text) || md5((g + 1)::text), 'hex')"; column="bytea" ;;
  *) echo "KEY must be text or bytea, not '$key'" >&2; exit 2 ;;
esac

psql -qX -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db" \
  -c "CREATE DATABASE $db"
trap 'psql -qX -d postgres -c "DROP DATABASE IF EXISTS $db"' EXIT
psql -qX -d "$db" -c "CREATE TABLE t (transaction_hash $column NOT NULL, log_index BIGINT NOT NULL,
  block_number BIGINT NOT NULL, block_hash TEXT, term_id TEXT, assets NUMERIC(78, 0),
  PRIMARY KEY (transaction_hash, log_index))"

wal() { psql -qXAt -d "$db" -c "SELECT wal_fpi || ' ' || wal_bytes FROM pg_stat_wal"; }

printf '%12s %10s %14s %14s\n' "rows" "rows/s" "page images/row" "WAL bytes/row"
done_rows=0
while [ "$done_rows" -lt "$rows" ]; do
  sql=""
  for ((i = 0; i < window / batch; i++)); do
    a=$((done_rows + i * batch)); b=$((a + batch - 1))
    sql+="INSERT INTO t SELECT $hash, g % 4, g / 20, '0x' || md5((g / 20)::text) || md5((g / 20)::text),
      '0x' || md5((g % 5000)::text) || md5((g % 5000)::text), g::numeric * 1000000000000
      FROM generate_series($a, $b) g;"$'\n'
  done
  read -r fpi0 bytes0 < <(wal)
  start=$(date +%s.%N)
  psql -qX -d "$db" <<< "$sql"
  end=$(date +%s.%N)
  read -r fpi1 bytes1 < <(wal)
  done_rows=$((done_rows + window))
  awk -v n="$done_rows" -v w="$window" -v s="$start" -v e="$end" \
      -v f="$((fpi1 - fpi0))" -v by="$((bytes1 - bytes0))" \
      'BEGIN { printf "%12d %10.0f %14.3f %14.0f\n", n, w / (e - s), f / w, by / w }'
done
psql -qXAt -d "$db" -c "SELECT 'primary key ' || pg_size_pretty(pg_relation_size('t_pkey'))
  || ', table ' || pg_size_pretty(pg_relation_size('t'))"
