#!/usr/bin/env bash
# Check the Helm chart (helm/ferry), for `make chart` and `make test`:
#   1. helm lint --strict, with the default values and with helm/ferry/ci/*-values.yaml
#      (every optional part switched on);
#   2. each rendering validated against Kubernetes 1.33's schemas, strictly (unknown fields
#      are errors), by kubernetes-validate; custom resources it has no schema for (the
#      ServiceMonitor) are checked against scripts/schemas/ instead;
#   3. every FERRY_* variable the rendered containers get must be one their binary documents
#      (`[env: FERRY_X=...]` in --help), so a misspelt or removed setting fails here rather
#      than being ignored in a cluster. Needs the binaries: `cargo build --workspace --bins`.
#
# Tools: helm and kubernetes-validate from ~/.cache/ferry (scripts/setup.sh --chart-tools
# installs them), else from PATH.
# Environment (optional): FERRY_BIN_DIR (default target/debug, or $CARGO_TARGET_DIR/debug).
set -euo pipefail
shopt -s inherit_errexit nullglob

cd "$(dirname "$0")/.."

readonly K8S_VERSION=1.33.0
readonly CHART=helm/ferry
readonly CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/ferry"
readonly BIN_DIR=${FERRY_BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}

log() { printf 'check-chart: %s\n' "$*" >&2; }
die() { printf 'check-chart: ERROR: %s\n' "$*" >&2; exit 1; }

find_tool() {
  local cached=$1 name=$2
  if [[ -x $cached ]]; then
    printf '%s\n' "$cached"
  elif command -v "$name" >/dev/null 2>&1; then
    command -v "$name"
  else
    die "$name not found (run: bash scripts/setup.sh --chart-tools)"
  fi
}

HELM=$(find_tool "$CACHE/bin/helm" helm)
VALIDATE=$(find_tool "$CACHE/kubernetes-validate/bin/kubernetes-validate" kubernetes-validate)
# The Python that has kubernetes-validate (and so PyYAML and jsonschema).
PYTHON=$(dirname "$VALIDATE")/python
[[ -x $PYTHON ]] || PYTHON=$(sed -n '1s/^#! *//p' "$VALIDATE")
[[ -x $PYTHON ]] || die "cannot find the Python of $VALIDATE"
readonly HELM VALIDATE PYTHON

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

FAILED=()

# check_values NAME [helm values args...]
check_values() {
  local name=$1 rendered="$WORK/$1.yaml" out="$WORK/$1.validate"
  shift
  log "[$name] helm lint --strict"
  if ! "$HELM" lint --strict --quiet --kube-version "$K8S_VERSION" "$CHART" "$@" >&2; then
    FAILED+=("$name: helm lint")
    return
  fi
  if ! "$HELM" template ferry "$CHART" --namespace ferry --kube-version "$K8S_VERSION" "$@" >"$rendered"; then
    FAILED+=("$name: helm template")
    return
  fi
  log "[$name] kubernetes-validate -k $K8S_VERSION --strict ($(grep -c '^kind:' "$rendered") resources)"
  if ! "$PYTHON" scripts/check-chart.py crds "$rendered" scripts/schemas "$K8S_VERSION" \
    | "$VALIDATE" -k "$K8S_VERSION" --strict --quiet - >"$out"; then
    cat "$out" >&2
    FAILED+=("$name: schema validation")
    return
  fi
  cat "$out" >&2
  # kubernetes-validate only warns about a kind it has no schema for: here that is a failure
  # (a new custom resource needs a schema in scripts/schemas/).
  if grep -q '^WARN' "$out"; then
    FAILED+=("$name: resources without a schema")
    return
  fi
  log "[$name] FERRY_* variables against the binaries' --help ($BIN_DIR)"
  if ! "$PYTHON" scripts/check-chart.py env "$rendered" "$BIN_DIR" . >&2; then
    FAILED+=("$name: FERRY_* variables")
  fi
}

check_values default
for values in "$CHART"/ci/*-values.yaml; do
  check_values "$(basename "$values" -values.yaml)" --values "$values"
done

if ((${#FAILED[@]})); then
  printf 'check-chart: FAILED: %s\n' "${FAILED[@]}" >&2
  exit 1
fi
log "chart OK"
