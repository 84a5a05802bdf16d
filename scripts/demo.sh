#!/usr/bin/env bash
# `make demo`: migrate a registry end to end with one scheduler and two importers on 127.0.0.1.
#
# Without REGISTRY_DIR: builds a sample registry with docker-registry + skopeo in a temporary
# directory and migrates it into fresh demo databases (ferry_demo_scheduler, ferry_demo_registry),
# so every run starts clean. With REGISTRY_DIR=/abs/dir (the directory holding docker/): migrates
# that registry, copying blobs into REGISTRY_DIR/gitlab/, into FERRY_DATABASE_URL and
# FERRY_METADATA_DATABASE_URL (default ferry_scheduler / ferry_registry); a second run resumes.
#
# FERRY_STORAGE_URL=gs://bucket[/prefix] runs the same demo on the GCS driver against the local
# GCS emulator: the registry is uploaded to the bucket first.
#
# Exits 0 only if every repository ended import_done.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

log() { printf 'demo: %s\n' "$*" >&2; }
die() { printf 'demo: ERROR: %s\n' "$*" >&2; exit 1; }

TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=$TARGET_DIR/debug
for binary in ferry-scheduler ferry-importer ferryctl; do
  [[ -x $BIN/$binary ]] || die "$BIN/$binary is missing: run 'make build' first"
done

WORK=$(mktemp -d /tmp/ferry-demo.XXXXXX)
PIDS=()
cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ $status -ne 0 ]]; then
    log "logs kept in $WORK (scheduler.log, importer-1.log, importer-2.log)"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

server_url() { printf '%s' "${1%/*}/postgres"; }
reset_database() { # URL: drop and create the database it names
  local url=$1 name=${1##*/}
  name=${name%%\?*}
  psql -q -v ON_ERROR_STOP=1 "$(server_url "$url")" \
    -c "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" -c "CREATE DATABASE \"$name\"" >/dev/null
}
ensure_database() {
  local url=$1 name=${1##*/}
  name=${name%%\?*}
  if ! psql -qtA "$(server_url "$url")" -c "SELECT 1 FROM pg_database WHERE datname = '$name'" | grep -q 1; then
    psql -q -v ON_ERROR_STOP=1 "$(server_url "$url")" -c "CREATE DATABASE \"$name\"" >/dev/null
  fi
}

if [[ -n ${REGISTRY_DIR:-} ]]; then
  [[ $REGISTRY_DIR == /* ]] || die "REGISTRY_DIR must be an absolute path"
  [[ -d $REGISTRY_DIR/docker/registry/v2 ]] || die "$REGISTRY_DIR does not hold docker/registry/v2"
  ROOT=$REGISTRY_DIR
  export FERRY_DATABASE_URL=${FERRY_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/ferry_scheduler}
  export FERRY_METADATA_DATABASE_URL=${FERRY_METADATA_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/ferry_registry}
  ensure_database "$FERRY_DATABASE_URL"
  ensure_database "$FERRY_METADATA_DATABASE_URL"
else
  ROOT=$WORK/registry
  log "building a sample registry with docker-registry + skopeo in $ROOT"
  bash scripts/sample-registry.sh "$ROOT" >&2
  server=${FERRY_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/ferry_scheduler}
  export FERRY_DATABASE_URL=${server%/*}/ferry_demo_scheduler
  export FERRY_METADATA_DATABASE_URL=${server%/*}/ferry_demo_registry
  reset_database "$FERRY_DATABASE_URL"
  reset_database "$FERRY_METADATA_DATABASE_URL"
fi
export FERRY_REDIS_URL=${FERRY_REDIS_URL:-redis://127.0.0.1:6379}
export FERRY_STORAGE_URL=${FERRY_STORAGE_URL:-file://$ROOT}

# With gs://bucket[/prefix], the registry is uploaded to that bucket on the GCS emulator
# (fake-gcs-server, started by setup.sh; STORAGE_EMULATOR_HOST, as Google's SDKs read it).
upload_to_emulator() { # ROOT URL
  local root=$1 rest=${2#gs://} bucket prefix endpoint count=0 key
  bucket=${rest%%/*}
  prefix=${rest#"$bucket"}
  prefix=${prefix#/}
  endpoint=http://${STORAGE_EMULATOR_HOST#http://}
  curl -sf -X POST -H 'Content-Type: application/json' -d "{\"name\":\"$bucket\"}" \
    "$endpoint/storage/v1/b?project=ferry-demo" >/dev/null ||
    curl -sf "$endpoint/storage/v1/b/$bucket" >/dev/null ||
    die "cannot create or find bucket $bucket on the GCS emulator at $endpoint"
  while IFS= read -r -d '' file; do
    key=${file#"$root"/}
    key=${prefix:+$prefix/}$key
    curl -sf -X POST --data-binary "@$file" -H 'Content-Type: application/octet-stream' \
      "$endpoint/upload/storage/v1/b/$bucket/o?uploadType=media&name=$(python3 -c 'import sys,urllib.parse;print(urllib.parse.quote(sys.argv[1],safe=""))' "$key")" >/dev/null ||
      die "uploading $key to $bucket failed"
    count=$((count + 1))
  done < <(find "$root/docker" -type f -print0)
  log "uploaded $count objects of $root to gs://$rest on the emulator at $endpoint"
}
if [[ $FERRY_STORAGE_URL == gs://* ]]; then
  export STORAGE_EMULATOR_HOST=${STORAGE_EMULATOR_HOST:-${FERRY_GCS_EMULATOR:-127.0.0.1:4443}}
  upload_to_emulator "$ROOT" "$FERRY_STORAGE_URL"
fi
export FERRY_REDIS_PREFIX=ferry-demo-$$
export FERRY_LOG_FORMAT=${FERRY_LOG_FORMAT:-json}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
SCHEDULER_PORT=$(free_port)
METRICS_PORT=$(free_port)
IMPORTER_PORTS=("$(free_port)" "$(free_port)")
IMPORTER_METRICS_PORTS=("$(free_port)" "$(free_port)")
REGISTRY_PORTS=("$(free_port)" "$(free_port)")
export FERRY_SCHEDULER_URL=http://127.0.0.1:$SCHEDULER_PORT

for i in 0 1; do
  FERRY_LISTEN_ADDR=127.0.0.1:${IMPORTER_PORTS[$i]} \
  FERRY_METRICS_ADDR=127.0.0.1:${IMPORTER_METRICS_PORTS[$i]} \
  FERRY_REGISTRY_ADDR=127.0.0.1:${REGISTRY_PORTS[$i]} \
    "$BIN/ferry-importer" >"$WORK/importer-$((i + 1)).log" 2>&1 &
  PIDS+=($!)
done
FERRY_LISTEN_ADDR=127.0.0.1:$SCHEDULER_PORT \
FERRY_METRICS_ADDR=127.0.0.1:$METRICS_PORT \
FERRY_IMPORTERS=http://127.0.0.1:${IMPORTER_PORTS[0]},http://127.0.0.1:${IMPORTER_PORTS[1]} \
FERRY_ENQUEUE_INTERVAL_MS=500 \
  "$BIN/ferry-scheduler" >"$WORK/scheduler.log" 2>&1 &
PIDS+=($!)
log "scheduler on :$SCHEDULER_PORT, importers on :${IMPORTER_PORTS[0]} and :${IMPORTER_PORTS[1]}, storage $FERRY_STORAGE_URL"

NAMES=(importer-1 importer-2 scheduler)
services_alive() { # fails naming the first service that exited
  local i
  for i in "${!PIDS[@]}"; do
    kill -0 "${PIDS[$i]}" 2>/dev/null || die "${NAMES[$i]} exited; see $WORK/${NAMES[$i]}.log"
  done
}
for _ in $(seq 1 100); do
  "$BIN/ferryctl" status >/dev/null 2>&1 && break
  services_alive
  sleep 0.2
done
"$BIN/ferryctl" status >/dev/null || die "the scheduler did not come up; see $WORK/scheduler.log"
# Every importer answers on its metrics address before the migration starts.
for port in "${IMPORTER_METRICS_PORTS[@]}"; do
  for _ in $(seq 1 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break
    services_alive
    sleep 0.2
  done
done
services_alive

"$BIN/ferryctl" inventory
# The migration runs while every service is watched: the demo fails the moment one exits.
"$BIN/ferryctl" migrate --capacity "${CAPACITY:-4}" --wait &
MIGRATE=$!
while kill -0 "$MIGRATE" 2>/dev/null; do
  if ! (services_alive) 2>/dev/null; then
    kill "$MIGRATE" 2>/dev/null || true
    services_alive
  fi
  sleep 0.2
done
wait "$MIGRATE"
services_alive

# Every repository, pulled through an importer's registry endpoint: which code path serves it.
REGISTRY=127.0.0.1:${REGISTRY_PORTS[0]}
python3 - "$REGISTRY" <<'PY'
import json, sys, urllib.error, urllib.request
base = "http://" + sys.argv[1]
names, url = [], base + "/v2/_catalog?n=100"
while url:
    with urllib.request.urlopen(url) as answer:
        names += json.load(answer)["repositories"]
        link = answer.headers.get("Link")
        url = base + link[1:link.index(">")] if link else None
paths, tags = {}, 0
for name in names:
    try:
        with urllib.request.urlopen(f"{base}/v2/{name}/tags/list") as answer:
            path = answer.headers["ferry-code-path"]
            tags += len(json.load(answer)["tags"] or [])
    except urllib.error.HTTPError as refused:  # a repository without tags: NAME_UNKNOWN
        path = refused.headers["ferry-code-path"]
    paths[path] = paths.get(path, 0) + 1
served = ", ".join(f"{count} by the {path} code path" for path, count in sorted(paths.items()))
print(f"registry endpoint {base}: {len(names)} repositories ({served}), {tags} tags")
print(f"  pull one: skopeo inspect --tls-verify=false docker://{sys.argv[1]}/{names[0]}:<tag>" if names else "")
PY

# Last, everything migrated is compared with its source on the importers (tags, manifests byte
# for byte, every config and layer under gitlab/ by size and content): exit 1 on any difference.
"$BIN/ferryctl" verify --all
services_alive
