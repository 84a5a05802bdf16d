#!/usr/bin/env bash
# Serve a registry storage tree with the real Debian `docker-registry`
# (distribution 2.8) in the foreground, on 127.0.0.1:PORT.
#
# usage: scripts/registry-serve.sh DIR PORT [--read-only]
#
# DIR is the filesystem storage root (the directory holding docker/registry/v2).
# The process execs docker-registry, so its PID is the registry's: stop it with
# SIGTERM/SIGINT. Delete is enabled and background upload purging is disabled so
# the tree is not changed behind the caller's back; --read-only additionally
# puts the registry in read-only maintenance mode (pushes and deletes refused).
# The configuration is handed over on stdin: no temporary file is left behind.
#
# Environment: FERRY_REGISTRY_LOG_LEVEL (default "warn"; "info" logs every
# request on stderr).
set -euo pipefail
shopt -s inherit_errexit

die() { printf 'registry-serve: ERROR: %s\n' "$*" >&2; exit 1; }
usage() { printf 'usage: %s DIR PORT [--read-only]\n' "$0" >&2; exit 2; }

[[ $# -ge 2 && $# -le 3 ]] || usage
DIR=$1
PORT=$2
READ_ONLY=false
if [[ $# -eq 3 ]]; then
  [[ $3 == --read-only ]] || usage
  READ_ONLY=true
fi
if ! [[ $PORT =~ ^[0-9]+$ ]] || ((PORT < 1 || PORT > 65535)); then die "invalid port: $PORT"; fi
[[ -d $DIR ]] || die "no such directory: $DIR"
DIR=$(cd "$DIR" && pwd -P)
command -v docker-registry >/dev/null 2>&1 || die "docker-registry not found: run scripts/setup.sh first"
[[ -d $DIR/docker/registry/v2 ]] \
  || printf 'registry-serve: warning: %s has no docker/registry/v2 (empty registry)\n' "$DIR" >&2

LEVEL=${FERRY_REGISTRY_LOG_LEVEL:-warn}
ACCESSLOG_DISABLED=true
[[ $LEVEL == debug || $LEVEL == info ]] && ACCESSLOG_DISABLED=false

printf 'registry-serve: docker-registry serving %s on http://127.0.0.1:%s (read-only: %s)\n' \
  "$DIR" "$PORT" "$READ_ONLY" >&2

exec docker-registry serve /dev/stdin <<EOF
version: 0.1
log:
  level: $LEVEL
  accesslog:
    disabled: $ACCESSLOG_DISABLED
storage:
  filesystem:
    rootdirectory: "$DIR"
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
    readonly:
      enabled: $READ_ONLY
http:
  addr: 127.0.0.1:$PORT
  secret: ferry-registry-serve
EOF
