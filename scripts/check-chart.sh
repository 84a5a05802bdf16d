#!/usr/bin/env bash
# Check the Helm chart (helm/ferry), for `make chart` and `make test`:
#   1. helm lint --strict, with the default values and with each helm/ferry/ci/*-values.yaml
#      (every optional part switched on, across the files: all-on-values.yaml, and
#      keda-values.yaml for KEDA, which excludes the chart's own autoscaler); and values the
#      chart must refuse must fail `helm template` with their message;
#   2. each rendering validated against Kubernetes 1.33's schemas, strictly (unknown fields
#      are errors), by kubernetes-validate; custom resources it has no schema for (the
#      ServiceMonitor, the PrometheusRule, KEDA's ScaledObject) are checked against
#      scripts/schemas/ instead; the importers' autoscaler must be the one the values ask for
#      (check-chart.py scaling);
#   3. every FERRY_* variable the rendered containers get must be one their binary documents
#      (`[env: FERRY_X=...]` in --help), so a misspelt or removed setting fails here rather
#      than being ignored in a cluster. Needs the binaries: `cargo build --workspace --bins`;
#   4. the alerts (helm/ferry/alerts/ferry.rules.yaml): `promtool check rules`, the promtool
#      unit tests in helm/ferry/alerts/tests/, every alert with a `for`, a severity, a summary,
#      a description, a runbook_url naming a section of docs/runbook.md and tests expecting it
#      firing and not firing; and a rendered PrometheusRule must hold exactly the same rules.
#
# Tools: helm and kubernetes-validate from ~/.cache/ferry, promtool (Debian's prometheus
# package) from PATH: scripts/setup.sh --chart-tools installs them.
# Environment (optional): FERRY_BIN_DIR (default target/debug, or $CARGO_TARGET_DIR/debug).
set -euo pipefail
shopt -s inherit_errexit nullglob

cd "$(dirname "$0")/.."

readonly K8S_VERSION=1.33.0
readonly CHART=helm/ferry
readonly CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/ferry"
readonly BIN_DIR=${FERRY_BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}
readonly RULES=$CHART/alerts/ferry.rules.yaml
readonly RULE_TESTS=$CHART/alerts/tests

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
PROMTOOL=$(find_tool /usr/bin/promtool promtool)
# The Python that has kubernetes-validate (and so PyYAML and jsonschema).
PYTHON=$(dirname "$VALIDATE")/python
[[ -x $PYTHON ]] || PYTHON=$(sed -n '1s/^#! *//p' "$VALIDATE")
[[ -x $PYTHON ]] || die "cannot find the Python of $VALIDATE"
readonly HELM VALIDATE PROMTOOL PYTHON

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

FAILED=()

# check_values NAME [--values FILE]
check_values() {
  local name=$1 rendered="$WORK/$1.yaml" out="$WORK/$1.validate" values_files=("$CHART/values.yaml")
  shift
  [[ $# -eq 0 ]] || values_files+=("$2")
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
  log "[$name] the PrometheusRule against $RULES"
  if ! "$PYTHON" scripts/check-chart.py rules "$rendered" "$RULES" "${values_files[@]}" >&2; then
    FAILED+=("$name: PrometheusRule")
  fi
  log "[$name] the importers' autoscaler against the values"
  if ! "$PYTHON" scripts/check-chart.py scaling "$rendered" "$PROMTOOL" "${values_files[@]}" >&2; then
    FAILED+=("$name: importer autoscaling")
  fi
  log "[$name] FERRY_* variables against the binaries' --help ($BIN_DIR)"
  if ! "$PYTHON" scripts/check-chart.py env "$rendered" "$BIN_DIR" . >&2; then
    FAILED+=("$name: FERRY_* variables")
  fi
}

# check_refused NAME MESSAGE HELM_ARGS...: the chart must refuse these values, saying MESSAGE.
check_refused() {
  local name=$1 message=$2 err="$WORK/refused-$1.err"
  shift 2
  log "[refused: $name] helm template must fail with \"$message\""
  if "$HELM" template ferry "$CHART" --namespace ferry --kube-version "$K8S_VERSION" "$@" \
    >/dev/null 2>"$err"; then
    FAILED+=("refused: $name: rendered")
  elif ! grep -qF -- "$message" "$err"; then
    cat "$err" >&2
    FAILED+=("refused: $name: failed without the message")
  fi
}

check_alerts() {
  local tests=("$RULE_TESTS"/*.yaml)
  log "[alerts] promtool check rules $RULES"
  "$PROMTOOL" check rules "$RULES" >&2 || FAILED+=("alerts: promtool check rules")
  log "[alerts] promtool test rules (${#tests[@]} files in $RULE_TESTS)"
  if ((${#tests[@]} == 0)) || ! "$PROMTOOL" test rules "${tests[@]}" >&2; then
    FAILED+=("alerts: promtool test rules")
  fi
  log "[alerts] annotations, runbook sections and test coverage"
  "$PYTHON" scripts/check-chart.py alerts "$RULES" "$RULE_TESTS" docs/runbook.md >&2 \
    || FAILED+=("alerts: rules without a runbook section or tests")
}

check_alerts
check_values default
for values in "$CHART"/ci/*-values.yaml; do
  check_values "$(basename "$values" -values.yaml)" --values "$values"
done
check_refused hpa-and-keda "importer.autoscaling.enabled and keda.enabled would both scale" \
  --set keda.enabled=true --set keda.serverAddress=http://prometheus:9090
check_refused keda-without-server "keda.enabled needs keda.serverAddress" \
  --set importer.autoscaling.enabled=false --set keda.enabled=true
check_refused keda-owned-metadata "keda.triggerMetadata.threshold is set by the chart" \
  --set importer.autoscaling.enabled=false --set keda.enabled=true \
  --set keda.serverAddress=http://prometheus:9090 --set-string keda.triggerMetadata.threshold=1
check_refused slot-target-of-one "targetSlotUtilization" \
  --set importer.autoscaling.metric=slots --set importer.autoscaling.targetSlotUtilization=1

if ((${#FAILED[@]})); then
  printf 'check-chart: FAILED: %s\n' "${FAILED[@]}" >&2
  exit 1
fi
log "chart OK"
