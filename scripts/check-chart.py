"""Helpers of scripts/check-chart.sh, run with the kubernetes-validate virtualenv's Python
(which has PyYAML, jsonschema and kubernetes-validate's schemas).

  check-chart.py crds RENDERED SCHEMA_DIR K8S_VERSION
      Validates the custom resources in RENDERED (kinds kubernetes-validate has no schema for)
      against the schemas in SCHEMA_DIR, and prints every other document on stdout for
      kubernetes-validate. Exit 1 if a custom resource is invalid.

  check-chart.py rules RENDERED RULES_FILE VALUES_FILE...
      Checks that the PrometheusRule in RENDERED holds exactly the groups of RULES_FILE (the
      runbook_url annotations may carry the prometheusRule.runbookBaseUrl prefix, and the lease
      alert's `for` is twice scheduler.config.FERRY_LEASE_TTL_SECS), and that one
      is rendered exactly when the values (the chart's values.yaml, then each VALUES_FILE)
      enable prometheusRule. Exit 1 on a difference.

  check-chart.py alerts RULES_FILE TESTS_DIR RUNBOOK
      Checks every alert of RULES_FILE: a `for`, a severity label, summary and description
      annotations, and a runbook_url `docs/runbook.md#anchor` naming a heading of RUNBOOK; and
      that the promtool tests in TESTS_DIR expect it both firing and not firing. Exit 1 listing
      what is missing.

  check-chart.py scaling RENDERED PROMTOOL VALUES_FILE...
      Checks the importers' autoscaling in RENDERED against the values (the chart's values.yaml,
      then each VALUES_FILE): a HorizontalPodAutoscaler exactly when importer.autoscaling.enabled,
      on CPU or on the Pods slot metric as importer.autoscaling.metric says, a KEDA ScaledObject
      exactly when keda.enabled; every autoscaler targets a Deployment of RENDERED that sets no
      replicas and no other autoscaler targets; min <= max replicas; a prometheus trigger has a
      serverAddress, a numeric threshold and a query that `PROMTOOL check rules` parses. Exit 1
      on a difference.

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
import tempfile
from pathlib import Path

import yaml

# Custom resources the chart renders: (apiVersion, kind) -> schema file in SCHEMA_DIR.
CUSTOM_RESOURCES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
}

# Severities an alert may have.
SEVERITIES = {"critical", "warning", "info"}
# Where every runbook_url points, before the section's anchor.
RUNBOOK_PATH = "docs/runbook.md"

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


LEASE_ALERT = "FerryEnqueueLeaseUnheld"
DEFAULT_LEASE_TTL_SECS = 15


def rendered_rules(rendered, rules_file, values_files):
    expected = yaml.safe_load(Path(rules_file).read_text(encoding="utf-8"))["groups"]
    enabled, lease_ttl = False, None
    for values in values_files:
        settings = yaml.safe_load(Path(values).read_text(encoding="utf-8")) or {}
        enabled = (settings.get("prometheusRule") or {}).get("enabled", enabled)
        config = (settings.get("scheduler") or {}).get("config") or {}
        lease_ttl = config.get("FERRY_LEASE_TTL_SECS", lease_ttl)
    # The chart times the lease alert by the scheduler's lease TTL (empty: the binary's 15 s):
    # twice it.
    lease_ttl = int(lease_ttl) if lease_ttl not in (None, "") else DEFAULT_LEASE_TTL_SECS
    for group in expected:
        for rule in group.get("rules", []):
            if rule.get("alert") == LEASE_ALERT:
                rule["for"] = f"{2 * lease_ttl}s"
    found = [d for d in load(rendered) if d.get("kind") == "PrometheusRule"]
    if len(found) != (1 if enabled else 0):
        print(f"  FAIL {len(found)} PrometheusRule(s) rendered; prometheusRule.enabled is {enabled}")
        return 1
    if not found:
        print("  ok  no PrometheusRule (prometheusRule.enabled is false)")
    failed = 0
    for doc in found:
        groups = doc["spec"]["groups"]
        for group in groups:
            for rule in group.get("rules", []):
                url = (rule.get("annotations") or {}).get("runbook_url")
                if url and RUNBOOK_PATH in url:
                    rule["annotations"]["runbook_url"] = url[url.index(RUNBOOK_PATH) :]
        if groups != expected:
            print(f"  FAIL PrometheusRule {doc['metadata']['name']}: its groups differ from {rules_file}")
            failed = 1
        else:
            rules = sum(len(g.get("rules", [])) for g in groups)
            print(f"  ok  PrometheusRule {doc['metadata']['name']}: the {rules} rules of {rules_file}")
    return failed


def heading_anchors(markdown):
    """The anchors GitHub gives the headings of a Markdown text."""
    anchors, fenced = set(), False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def alerts_check(rules_file, tests_dir, runbook):
    groups = yaml.safe_load(Path(rules_file).read_text(encoding="utf-8"))["groups"]
    anchors = heading_anchors(Path(runbook).read_text(encoding="utf-8"))
    firing, quiet = set(), set()
    tests = sorted(Path(tests_dir).glob("*.yaml"))
    for test_file in tests:
        for test in yaml.safe_load(test_file.read_text(encoding="utf-8")).get("tests", []):
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    problems = []
    alerts = [r for g in groups for r in g.get("rules", []) if "alert" in r]
    for rule in alerts:
        name = rule["alert"]
        annotations = rule.get("annotations") or {}
        if not rule.get("for"):
            problems.append(f"{name}: no `for`")
        if (rule.get("labels") or {}).get("severity") not in SEVERITIES:
            problems.append(f"{name}: severity label not one of {sorted(SEVERITIES)}")
        for key in ("summary", "description"):
            if not annotations.get(key):
                problems.append(f"{name}: no {key} annotation")
        url = annotations.get("runbook_url", "")
        path, _, anchor = url.partition("#")
        if path != RUNBOOK_PATH or anchor not in anchors:
            problems.append(f"{name}: runbook_url {url!r} names no section of {runbook}")
        if name not in firing:
            problems.append(f"{name}: no promtool test in {tests_dir} expects it firing")
        if name not in quiet:
            problems.append(f"{name}: no promtool test in {tests_dir} expects it not firing")
    for problem in problems:
        print(f"  FAIL {problem}")
    if not alerts:
        print(f"  FAIL no alert in {rules_file}")
        return 1
    if not problems:
        print(f"  ok  {len(alerts)} alerts: for, severity, summary, description, runbook section, "
              f"tests firing and not firing ({len(tests)} test files)")
    return 1 if problems else 0


def merged_values(values_files):
    """The values of the chart's values.yaml overlaid with each further file, as helm merges them
    (maps deeply, everything else replaced)."""

    def merge(base, extra):
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value
        return base

    values = {}
    for path in values_files:
        merge(values, yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})
    return values


def scaling_check(rendered, promtool, values_files):
    values = merged_values(values_files)
    scaling = values["importer"]["autoscaling"]
    keda_enabled = bool((values.get("keda") or {}).get("enabled"))
    docs = load(rendered)
    failures = []

    def fail(message):
        failures.append(message)
        print(f"  FAIL {message}")

    def is_deployment(ref, api_default=None, kind_default=None):
        return (ref.get("apiVersion", api_default), ref.get("kind", kind_default)) == (
            "apps/v1",
            "Deployment",
        )

    deployments = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "Deployment"}
    hpas = [d for d in docs if d.get("kind") == "HorizontalPodAutoscaler"]
    scaled_objects = [d for d in docs if d.get("kind") == "ScaledObject"]

    if len(hpas) != (1 if scaling["enabled"] else 0):
        fail(f"{len(hpas)} HorizontalPodAutoscaler(s); "
             f"importer.autoscaling.enabled is {scaling['enabled']}")
    if len(scaled_objects) != (1 if keda_enabled else 0):
        fail(f"{len(scaled_objects)} ScaledObject(s); keda.enabled is {keda_enabled}")

    targets = {}  # Deployment name -> the autoscalers that target it
    wanted = {"cpu": [("Resource", "cpu")], "slots": [("Pods", scaling.get("slotMetricName"))]}
    for hpa in hpas:
        spec = hpa["spec"]
        metrics = [
            (m["type"], (m.get("resource") or m.get("pods", {}).get("metric") or {}).get("name"))
            for m in spec.get("metrics", [])
        ]
        name = f"HorizontalPodAutoscaler {hpa['metadata']['name']} (" + ", ".join(
            f"{kind} {metric}" for kind, metric in metrics) + ")"
        if not is_deployment(spec["scaleTargetRef"]):
            fail(f"{name}: its target is not an apps/v1 Deployment")
        targets.setdefault(spec["scaleTargetRef"]["name"], []).append(name)
        if spec.get("minReplicas", 1) > spec["maxReplicas"]:
            fail(f"{name}: minReplicas {spec.get('minReplicas')} > {spec['maxReplicas']}")
        metric = scaling.get("metric", "cpu")
        if metrics != wanted.get(metric):
            fail(f"{name}: importer.autoscaling.metric {metric} wants {wanted.get(metric)}")
        for m in spec.get("metrics", []):
            if m["type"] == "Pods" and m["pods"]["target"]["type"] != "AverageValue":
                fail(f"{name}: the target of a per-pod metric must be an AverageValue")

    queries = []
    for so in scaled_objects:
        spec = so["spec"]
        name = f"ScaledObject {so['metadata']['name']}"
        # KEDA's defaults: apps/v1 Deployment, 0 to 100 replicas.
        if not is_deployment(spec["scaleTargetRef"], "apps/v1", "Deployment"):
            fail(f"{name}: its target is not an apps/v1 Deployment")
        targets.setdefault(spec["scaleTargetRef"]["name"], []).append(name)
        low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        if low > high:  # the CRD's CEL rule
            fail(f"{name}: minReplicaCount {low} > maxReplicaCount {high}")
        if low < 1:
            fail(f"{name}: minReplicaCount {low}: without an importer no step runs, and the "
                 "slot utilisation could never rise")
        for trigger in spec["triggers"]:
            if trigger["type"] != "prometheus":
                continue
            metadata = trigger.get("metadata") or {}
            missing = [k for k in ("serverAddress", "query", "threshold") if not metadata.get(k)]
            if missing:
                fail(f"{name}: a prometheus trigger without {', '.join(missing)}")
                continue
            try:
                float(metadata["threshold"])
            except ValueError:
                fail(f"{name}: threshold {metadata['threshold']!r} is not a number")
            queries.append((name, metadata["query"]))

    for target, scalers in sorted(targets.items()):
        deployment = deployments.get(target)
        if deployment is None:
            fail(f"{', '.join(scalers)}: no Deployment {target} in the rendering")
        elif len(scalers) > 1:
            fail(f"Deployment {target} has {len(scalers)} autoscalers: {', '.join(scalers)}")
        elif "replicas" in deployment["spec"]:
            fail(f"Deployment {target} sets replicas, which {scalers[0]} owns")
        else:
            print(f"  ok  Deployment {target}: scaled by {scalers[0]}, no replicas of its own")

    if queries:
        # promtool parses every expression of a rules file: the queries become recording rules.
        rules = [{"record": f"ferry:keda_query_{i}", "expr": q} for i, (_, q) in enumerate(queries)]
        with tempfile.NamedTemporaryFile("w", suffix=".rules.yaml", delete=False) as f:
            yaml.safe_dump({"groups": [{"name": "keda", "rules": rules}]}, f)
        try:
            result = subprocess.run(
                [promtool, "check", "rules", f.name], capture_output=True, text=True, check=False
            )
        finally:
            os.unlink(f.name)
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            fail(f"a prometheus trigger's query does not parse (promtool check rules): {output}")
        else:
            for name, query in queries:
                print(f"  ok  {name}: the query parses: {query}")
    if not (hpas or scaled_objects):
        print("  ok  no autoscaler (importer.autoscaling and keda are off)")
    return 1 if failures else 0


def main(argv):
    if len(argv) == 5 and argv[1] == "crds":
        return crds(*argv[2:])
    if len(argv) >= 5 and argv[1] == "rules":
        return rendered_rules(argv[2], argv[3], argv[4:])
    if len(argv) == 5 and argv[1] == "alerts":
        return alerts_check(*argv[2:])
    if len(argv) >= 5 and argv[1] == "scaling":
        return scaling_check(argv[2], argv[3], argv[4:])
    if len(argv) == 5 and argv[1] == "env":
        return env_check(*argv[2:])
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
