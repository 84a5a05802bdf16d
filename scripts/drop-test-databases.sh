#!/usr/bin/env bash
# Drops the databases earlier test runs created (ferry_test_*). `make test` runs it before the
# tests, so a machine does not accumulate them; it never touches any other database.
set -euo pipefail
server=${FERRY_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
mapfile -t stale < <(psql -qtA "$server" -c "SELECT datname FROM pg_database WHERE datname LIKE 'ferry\_test\_%'")
for name in "${stale[@]}"; do
  [[ -n $name ]] && psql -q "$server" -c "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" >/dev/null
done
printf 'test databases: dropped %d stale\n' "${#stale[@]}" >&2
