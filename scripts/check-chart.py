"""Helpers of scripts/check-chart.sh, run with the kubernetes-validate virtualenv's Python
(which has PyYAML, jsonschema and kubernetes-validate's schemas).

  check-chart.py crds RENDERED SCHEMA_DIR K8S_VERSION
      Validates the custom resources in RENDERED (kinds kubernetes-validate has no schema for)
      against the schemas in SCHEMA_DIR, and prints every other document on stdout for
      kubernetes-validate. Exit 1 if a custom resource is invalid.

  check-chart.py env RENDERED BIN_DIR SOURCE_DIR
      Checks that every FERRY_* variable a container of RENDERED gets (env, and envFrom of a
      ConfigMap in RENDERED) is one its binary documents: `[env: FERRY_X=...]` in the --help of
      the binary, of the subcommand the container runs, and of `serve` where it exists; plus the
      few variables the logging setup reads outside clap. Exit 1 listing unknown names.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

# Custom resources the chart renders: (apiVersion, kind) -> schema file in SCHEMA_DIR.
CUSTOM_RESOURCES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
}

# Which binaries each container of the chart runs, the first being its entrypoint. A scheduler
# container also serves ferryctl (kubectl exec ... -- ferryctl).
CONTAINER_BINARIES = {
    "scheduler": ["ferry-scheduler", "ferryctl"],
    "importer": ["ferry-importer"],
    "migrate-scheduler": ["ferry-scheduler"],
    "migrate-importer": ["ferry-importer"],
}

# FERRY_* variables read outside clap (so absent from --help), and the source file that reads
# them: checked to still be there, so this list cannot go stale unnoticed.
READ_OUTSIDE_CLAP = {
    "FERRY_LOG": "shared/src/telemetry.rs",
    "FERRY_LOG_FORMAT": "shared/src/telemetry.rs",
}

ENV_IN_HELP = re.compile(r"\[env: (FERRY_[A-Z0-9_]+)[=\]]")  # "=value", or "]" with hide_env_values
FERRY_NAME = re.compile(r"^FERRY_[A-Z0-9_]+$")


def load(path):
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def crds(rendered, schema_dir, k8s_version):
    import jsonschema
    import referencing
    from kubernetes_validate import utils

    version = k8s_version.lstrip("v")
    definitions = utils.schema_contents(
        f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version
    )
    registry = referencing.Resource.from_contents(definitions) @ referencing.Registry()
    failed = 0
    others = []
    for doc in load(rendered):
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key not in CUSTOM_RESOURCES:
            others.append(doc)
            continue
        schema = json.loads(Path(schema_dir, CUSTOM_RESOURCES[key]).read_text(encoding="utf-8"))
        validator = jsonschema.Draft202012Validator(
            schema, registry=referencing.Resource.from_contents(schema) @ registry
        )
        name = f"{doc['kind'].lower()}/{doc['metadata']['name']}"
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        for error in errors:
            path = ".".join(str(p) for p in error.absolute_path)
            print(f"ERROR {name} ({key[0]}): {path}: {error.message}", file=sys.stderr)
        if errors:
            failed = 1
        else:
            print(f"INFO {name} passed ({CUSTOM_RESOURCES[key]})", file=sys.stderr)
    yaml.safe_dump_all(others, sys.stdout, sort_keys=False)
    return failed


def run_help(binary, *args):
    """--help of `binary args...` with an empty environment (so no value is shown), or None
    when the binary refuses those arguments (no such subcommand)."""
    result = subprocess.run(
        [str(binary), *args, "--help"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout if result.returncode == 0 else None


def subcommands(help_text):
    names, inside = set(), False
    for line in help_text.splitlines():
        if line.strip() == "Commands:":
            inside = True
        elif inside and line.startswith("  ") and line.strip():
            names.add(line.split()[0])
        elif inside:
            break
    names.discard("help")
    return names


def pod_spec(doc):
    spec = doc.get("spec") or {}
    if doc.get("kind") == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    return (spec.get("template") or {}).get("spec")


def env_check(rendered, bin_dir, source_dir):
    docs = load(rendered)
    config_maps = {
        d["metadata"]["name"]: d.get("data") or {} for d in docs if d.get("kind") == "ConfigMap"
    }
    help_cache, failures = {}, []

    def fail(message):
        failures.append(message)
        print(f"  FAIL {message}")

    def documented(binary, *args):
        key = (binary, args)
        if key not in help_cache:
            path = Path(bin_dir, binary)
            if not os.access(path, os.X_OK):
                sys.exit(f"check-chart: {path} is missing: run cargo build --workspace --bins")
            help_cache[key] = run_help(path, *args)
        return help_cache[key]

    for name, source in READ_OUTSIDE_CLAP.items():
        if name not in Path(source_dir, source).read_text(encoding="utf-8"):
            fail(f"{name} is no longer read in {source}: update READ_OUTSIDE_CLAP")

    checked = 0
    for doc in docs:
        spec = pod_spec(doc)
        if not spec:
            continue
        for container in spec.get("initContainers", []) + spec.get("containers", []):
            where = f"{doc['kind']} {doc['metadata']['name']}, container {container['name']}"
            binaries = CONTAINER_BINARIES.get(container["name"])
            if not binaries:
                fail(f"{where}: no binary known for this container (CONTAINER_BINARIES)")
                continue
            names = {e["name"] for e in container.get("env", [])}
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef")
                if ref and ref["name"] in config_maps:
                    names |= set(config_maps[ref["name"]])
            names = {n for n in names if FERRY_NAME.match(n)}

            known = set(READ_OUTSIDE_CLAP)
            entry, args = binaries[0], container.get("args") or []
            top = documented(entry)
            if top is None:
                fail(f"{where}: `{entry} --help` failed")
                continue
            known |= set(ENV_IN_HELP.findall(top))
            commands = subcommands(top)
            if args and not args[0].startswith("-"):
                if args[0] not in commands:
                    fail(f"{where}: runs `{entry} {args[0]}`, which {entry} does not have")
                else:
                    known |= set(ENV_IN_HELP.findall(documented(entry, args[0]) or ""))
            elif "serve" in commands:
                known |= set(ENV_IN_HELP.findall(documented(entry, "serve") or ""))
            for other in binaries[1:]:
                known |= set(ENV_IN_HELP.findall(documented(other) or ""))

            unknown = sorted(names - known)
            checked += 1
            if unknown:
                fail(f"{where}: {', '.join(unknown)} not documented by {' / '.join(binaries)}")
            else:
                print(f"  ok  {where}: {len(names)} FERRY_* variables, all documented")
    if not checked:
        fail("no container found in the rendered manifests")
    return 1 if failures else 0


def main(argv):
    if len(argv) == 5 and argv[1] == "crds":
        return crds(*argv[2:])
    if len(argv) == 5 and argv[1] == "env":
        return env_check(*argv[2:])
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
