#!/usr/bin/env bash
# The dependency checks of `make lint`:
#   * cargo-machete: no crate lists a dependency it does not use;
#   * cargo-deny (deny.toml): licenses, duplicate versions, sources, and RustSec advisories.
# The advisory database is fetched from github.com. Where that cannot be reached, the advisory
# check is reported as not run (loudly) and the other checks still decide; set
# FERRY_REQUIRE_ADVISORIES=1 to fail instead.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo machete

cargo deny --log-level error check licenses bans sources
if cargo deny --log-level error fetch db >/dev/null 2>&1; then
  cargo deny --log-level error check --disable-fetch advisories
else
  if [[ ${FERRY_REQUIRE_ADVISORIES:-0} == 1 ]]; then
    echo "check-deps: ERROR: the RustSec advisory database cannot be fetched (github.com unreachable)" >&2
    exit 1
  fi
  echo "check-deps: WARNING: advisories NOT checked: the RustSec advisory database cannot be fetched (github.com unreachable)" >&2
fi
