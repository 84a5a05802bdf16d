#!/usr/bin/env bash
# Build a sample registry in the OLD storage layout (docker/registry/v2/...)
# with the real Debian `docker-registry` (distribution 2.8), filesystem
# storage rooted at DIR, and images built with `umoci` and pushed by `skopeo`.
#
# usage: scripts/sample-registry.sh DIR [--with-broken]
#
# Repositories (see the "cases" below and DIR/.ferry-sample.json):
#   a. group-a/project-1/app         v1 + latest, same OCI image manifest
#   b. group-a/project-1/api         v1, Docker schema 2 manifest (--format v2s2)
#   c. group-a/project-2/base        v1, OCI, shares a layer blob with (a)
#   d. group-b/project-3/multi       v1, OCI image index (amd64 + arm64)
#   e. group-b/project-3/multi-docker v1, Docker manifest list (amd64 + arm64)
#   f. group-c/project-4/retag       stable pushed twice: first manifest left untagged
#   g. a/b/c/d/image                 v1, nested path
#   h. group-c/project-5/gone        keep + removed; removed's current/link deleted
#   i. group-d/project-6/broken      (--with-broken only) v1 whose manifest blob data is deleted
#
# Idempotent: when DIR/.ferry-sample-complete holds the requested variant the
# script does nothing. A DIR holding only an unfinished/other sample is rebuilt;
# a DIR holding anything else is refused.
#
# Outputs in DIR: docker/registry/v2/..., .ferry-sample.json (machine readable
# description: repositories, tags -> digests as served when pushed, untagged /
# removed / deleted manifests, media types), .ferry-sample-complete (variant).
# Progress goes to stderr, the final summary to stdout.
set -euo pipefail
shopt -s inherit_errexit

log() { printf 'sample-registry: %s\n' "$*" >&2; }
die() { printf 'sample-registry: ERROR: %s\n' "$*" >&2; exit 1; }
usage() { printf 'usage: %s DIR [--with-broken]\n' "$0" >&2; exit 2; }

DIR=""
VARIANT=default
for arg in "$@"; do
  case $arg in
    --with-broken) VARIANT=with-broken ;;
    -h | --help) usage ;;
    -*) printf 'unknown option: %s\n' "$arg" >&2; usage ;;
    *) [[ -z $DIR ]] || usage; DIR=$arg ;;
  esac
done
[[ -n $DIR ]] || usage

for tool in docker-registry skopeo umoci curl python3 flock; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found: run scripts/setup.sh first"
done

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd -P)
MARKER=$DIR/.ferry-sample-complete
JSON=$DIR/.ferry-sample.json
V2=$DIR/docker/registry/v2

# Serialise concurrent runs on the same DIR (tests may run in parallel).
exec 9<"$DIR"
flock 9

if [[ -f $MARKER && $(<"$MARKER") == "$VARIANT" && -f $JSON && -d $V2/repositories ]]; then
  log "$DIR already holds a complete '$VARIANT' sample: nothing to do"
  exit 0
fi

# Only ever wipe what this script creates.
shopt -s dotglob nullglob
for entry in "$DIR"/*; do
  case ${entry##*/} in
    docker | .ferry-sample.json | .ferry-sample-complete) ;;
    *) die "$DIR is not empty and does not look like a sample built by this script (found ${entry##*/})" ;;
  esac
done
shopt -u dotglob nullglob
if [[ -e $DIR/docker || -e $MARKER || -e $JSON ]]; then
  log "removing an unfinished or different sample in $DIR"
  rm -rf "$DIR/docker" "$MARKER" "$JSON"
fi

START=$(date +%s.%N)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ferry-sample.XXXXXX")
REG_PID=""
cleanup() {
  local rc=$?
  if [[ -n $REG_PID ]] && kill -0 "$REG_PID" 2>/dev/null; then
    kill "$REG_PID" 2>/dev/null || true
    wait "$REG_PID" 2>/dev/null || true
  fi
  if [[ $rc -ne 0 && -f $WORK/registry.log ]]; then
    log "registry log (last lines):"
    tail -n 20 "$WORK/registry.log" >&2 || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --------------------------------------------------------------------------
# 1. Layer contents: small, pseudo-random but reproducible files.
# --------------------------------------------------------------------------
SRC=$WORK/src
LAYERS=(shared app-1 api-1 api-2 base-1 multi-amd64 multi-arm64 retag-1 retag-2
  nested-1 nested-2 nested-3 gone-keep gone-removed broken-1)
python3 - "$SRC" "${LAYERS[@]}" <<'PY'
import os, random, sys
root, names = sys.argv[1], sys.argv[2:]
EPOCH = 1700000000
for name in names:
    rng = random.Random("ferry-sample/" + name)
    d = os.path.join(root, name)
    os.makedirs(d)
    for i in range(rng.randint(1, 3)):
        with open(os.path.join(d, f"blob-{i}.bin"), "wb") as f:
            f.write(rng.randbytes(rng.randint(1024, 3072)))
    with open(os.path.join(d, "README"), "w") as f:
        f.write(f"ferry sample layer {name}\n")
    for p in [os.path.join(d, x) for x in os.listdir(d)] + [d]:
        os.utime(p, (EPOCH, EPOCH))
PY

# --------------------------------------------------------------------------
# 2. Images in one OCI layout (umoci). Tags in the layout:
#    shared, app, api, base, multi-amd64, multi-arm64, multi (index), retag-1,
#    retag-2, nested, gone-keep, gone-removed, broken
# --------------------------------------------------------------------------
L=$WORK/layout
UMOCI_ROOTLESS=()
[[ $(id -u) -eq 0 ]] || UMOCI_ROOTLESS=(--rootless)

add_layer() { # TAG LAYER
  umoci insert "${UMOCI_ROOTLESS[@]}" --image "$L:$1" --history.created 2024-01-01T00:00:00Z \
    --history.author ferry-sample --history.created_by "umoci insert /ferry/$2" "$SRC/$2" "/ferry/$2"
}
finish_image() { # TAG ARCH
  umoci config --no-history --image "$L:$1" --created 2024-01-01T00:00:00Z --author ferry-sample \
    --os linux --architecture "$2" --config.cmd /ferry/README \
    --config.label "org.ferry.sample.image=$1" --config.env "FERRY_SAMPLE=$1"
}
new_image() { # TAG ARCH LAYER...
  local tag=$1 arch=$2
  shift 2
  umoci new --image "$L:$tag"
  local layer
  for layer in "$@"; do add_layer "$tag" "$layer"; done
  finish_image "$tag" "$arch"
}

log "building images with umoci"
umoci init --layout "$L"
umoci new --image "$L:shared"
add_layer shared shared
# app and base start from the very same layer blob (case c).
umoci tag --image "$L:shared" app
add_layer app app-1
finish_image app amd64
umoci tag --image "$L:shared" base
add_layer base base-1
finish_image base amd64
new_image api amd64 api-1 api-2
new_image multi-amd64 amd64 multi-amd64
new_image multi-arm64 arm64 multi-arm64
new_image retag-1 amd64 retag-1
new_image retag-2 amd64 retag-2
new_image nested amd64 nested-1 nested-2 nested-3
new_image gone-keep amd64 gone-keep
new_image gone-removed amd64 gone-removed
new_image broken amd64 broken-1

# umoci cannot build an index: write one (tag "multi") into the layout.
python3 - "$L" <<'PY'
import hashlib, json, os, sys
layout = sys.argv[1]
REF = "org.opencontainers.image.ref.name"
with open(os.path.join(layout, "index.json")) as f:
    index = json.load(f)
by_tag = {m.get("annotations", {}).get(REF): m for m in index["manifests"]}
children = []
for tag, arch in (("multi-amd64", "amd64"), ("multi-arm64", "arm64")):
    d = by_tag[tag]
    children.append({"mediaType": d["mediaType"], "digest": d["digest"], "size": d["size"],
                     "platform": {"architecture": arch, "os": "linux"}})
body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": children}, separators=(",", ":")).encode()
hexd = hashlib.sha256(body).hexdigest()
with open(os.path.join(layout, "blobs", "sha256", hexd), "wb") as f:
    f.write(body)
index["manifests"] = [m for m in index["manifests"] if m.get("annotations", {}).get(REF) != "multi"]
index["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json",
                           "digest": "sha256:" + hexd, "size": len(body),
                           "annotations": {REF: "multi"}})
with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump(index, f)
PY

# --------------------------------------------------------------------------
# 3. Run the real registry on a free port.
# --------------------------------------------------------------------------
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
start_registry() {
  local attempt i
  for attempt in 1 2 3; do
    PORT=$(free_port)
    cat >"$WORK/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: "$DIR"
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$PORT
  secret: ferry-sample-registry
EOF
    docker-registry serve "$WORK/config.yml" >"$WORK/registry.log" 2>&1 &
    REG_PID=$!
    for ((i = 0; i < 100; i++)); do
      if curl -fsS -o /dev/null "http://127.0.0.1:$PORT/v2/" 2>/dev/null; then
        log "docker-registry $(docker-registry --version | awk '{print $NF}') serving $DIR on 127.0.0.1:$PORT (pid $REG_PID)"
        return 0
      fi
      kill -0 "$REG_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill "$REG_PID" 2>/dev/null || true
    wait "$REG_PID" 2>/dev/null || true
    REG_PID=""
    log "registry did not come up on port $PORT (attempt $attempt): $(tail -n 3 "$WORK/registry.log" | tr '\n' ' ')"
  done
  die "could not start docker-registry"
}
start_registry
REG=127.0.0.1:$PORT

# --------------------------------------------------------------------------
# 4. Push (skopeo) and record what the registry serves.
# --------------------------------------------------------------------------
ACCEPT="application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.v1+prettyjws, application/vnd.docker.distribution.manifest.v1+json"
RECORDS=$WORK/records.tsv
: >"$RECORDS"

push() { # SRC-TAG REPO:TAG [skopeo copy options...]
  local src=$1 dst=$2
  shift 2
  log "push oci:$src -> $dst $*"
  skopeo --insecure-policy copy -q --retry-times 2 --dest-tls-verify=false "$@" \
    "oci:$L:$src" "docker://$REG/$dst" >&2 || die "skopeo copy to $dst failed"
}

# HEAD the manifest; prints "DIGEST<TAB>CONTENT-TYPE".
head_manifest() { # REPO TAG
  local headers digest ctype
  headers=$(curl -fsSI -H "Accept: $ACCEPT" "http://$REG/v2/$1/manifests/$2") \
    || die "HEAD /v2/$1/manifests/$2 failed"
  digest=$(awk 'tolower($1) == "docker-content-digest:" { print $2 }' <<<"$headers" | tr -d '\r')
  ctype=$(awk 'tolower($1) == "content-type:" { print $2 }' <<<"$headers" | tr -d '\r')
  [[ $digest == sha256:* ]] || die "no Docker-Content-Digest for $1:$2"
  printf '%s\t%s\n' "$digest" "$ctype"
}

record_tag() { # REPO TAG -> prints digest
  local out
  out=$(head_manifest "$1" "$2")
  printf 'tag\t%s\t%s\t%s\n' "$1" "$2" "$out" >>"$RECORDS"
  cut -f1 <<<"$out"
}
record_case() { printf 'case\t%s\t%s\n' "$1" "$2" >>"$RECORDS"; }

# a. OCI image manifest, two tags on one manifest.
R_APP=group-a/project-1/app
record_case $R_APP "a: OCI image manifest; tags v1 and latest point at the same manifest; shares a layer with group-a/project-2/base"
push app $R_APP:v1 --preserve-digests
push app $R_APP:latest --preserve-digests
d_v1=$(record_tag $R_APP v1)
d_latest=$(record_tag $R_APP latest)
[[ $d_v1 == "$d_latest" ]] || die "$R_APP v1 ($d_v1) and latest ($d_latest) differ"

# b. Docker schema 2.
R_API=group-a/project-1/api
record_case $R_API "b: Docker schema 2 image manifest (skopeo --format v2s2)"
push api $R_API:v1 --format v2s2
record_tag $R_API v1 >/dev/null

# c. Shared layer.
R_BASE=group-a/project-2/base
record_case $R_BASE "c: OCI image manifest whose first layer blob is also used by group-a/project-1/app"
push base $R_BASE:v1 --preserve-digests
record_tag $R_BASE v1 >/dev/null

# d. OCI index, e. Docker manifest list.
R_MULTI=group-b/project-3/multi
record_case $R_MULTI "d: OCI image index with linux/amd64 and linux/arm64 OCI image manifests (skopeo copy --all)"
push multi $R_MULTI:v1 --all --preserve-digests
record_tag $R_MULTI v1 >/dev/null
R_MULTID=group-b/project-3/multi-docker
record_case $R_MULTID "e: Docker manifest list with linux/amd64 and linux/arm64 Docker schema 2 manifests (skopeo copy --all --format v2s2)"
push multi $R_MULTID:v1 --all --format v2s2
record_tag $R_MULTID v1 >/dev/null

# f. Retag: the first manifest stays as an untagged revision.
R_RETAG=group-c/project-4/retag
record_case $R_RETAG "f: tag stable pushed twice with different images; the first manifest is left untagged"
push retag-1 $R_RETAG:stable --preserve-digests
d_first=$(record_tag $R_RETAG stable)
push retag-2 $R_RETAG:stable --preserve-digests
d_second=$(record_tag $R_RETAG stable)
[[ $d_first != "$d_second" ]] || die "$R_RETAG: both pushes gave the same manifest"
printf 'untagged\t%s\t%s\n' $R_RETAG "$d_first" >>"$RECORDS"

# g. Nested path.
R_NESTED=a/b/c/d/image
record_case $R_NESTED "g: deeply nested repository path, OCI image manifest with 3 layers"
push nested $R_NESTED:v1 --preserve-digests
record_tag $R_NESTED v1 >/dev/null

# h. A tag whose current/link is missing.
R_GONE=group-c/project-5/gone
record_case $R_GONE "h: tags keep and removed; the current/link file of tag removed is deleted (its index/ entry and the manifest revision stay)"
push gone-keep $R_GONE:keep --preserve-digests
push gone-removed $R_GONE:removed --preserve-digests
record_tag $R_GONE keep >/dev/null
d_removed=$(record_tag $R_GONE removed)
printf 'removed\t%s\t%s\t%s\n' $R_GONE removed "$d_removed" >>"$RECORDS"

# i. A tagged manifest whose blob data is gone.
R_BROKEN=group-d/project-6/broken
if [[ $VARIANT == with-broken ]]; then
  record_case $R_BROKEN "i: tag v1 whose manifest blob data file is deleted from blobs/ (repository links left in place)"
  push broken $R_BROKEN:v1 --preserve-digests
  d_broken=$(record_tag $R_BROKEN v1)
  printf 'deleted\t%s\t%s\n' $R_BROKEN "$d_broken" >>"$RECORDS"
fi

# Registry no longer needed: stop it before touching files behind its back.
kill "$REG_PID"
wait "$REG_PID" 2>/dev/null || true
REG_PID=""

# --------------------------------------------------------------------------
# 5. Describe the result (before any deletion) and check the layout.
# --------------------------------------------------------------------------
python3 - "$DIR" "$RECORDS" "$WORK/sample.json" "$VARIANT" "$(docker-registry --version | awk '{print $NF}')" "$(skopeo --version | awk '{print $NF}')" "$(umoci --version | awk '{print $NF}')" <<'PY'
import json, os, sys
root, records_path, out_path, variant, reg_v, skopeo_v, umoci_v = sys.argv[1:]
v2 = os.path.join(root, "docker", "registry", "v2")
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"

def fail(msg):
    sys.exit("sample-registry: ERROR: " + msg)

def blob_path(digest):
    algo, hexd = digest.split(":", 1)
    return os.path.join(v2, "blobs", algo, hexd[:2], hexd, "data")

def read_link(path):
    with open(path) as f:
        return f.read().strip()

def repo_dir(repo):
    return os.path.join(v2, "repositories", *repo.split("/"))

repos = {}
def repo_entry(path):
    return repos.setdefault(path, {"path": path, "case": "", "tags": {}})

with open(records_path) as f:
    for line in f:
        kind, repo, *rest = line.rstrip("\n").split("\t")
        e = repo_entry(repo)
        if kind == "case":
            e["case"] = rest[0]
        elif kind == "tag":
            tag, digest, ctype = rest
            e["tags"][tag] = digest
            e.setdefault("_served", {})[digest] = ctype
        elif kind == "untagged":
            e.setdefault("untagged_manifests", []).append(rest[0])
        elif kind == "removed":
            e.setdefault("removed_tags", {})[rest[0]] = rest[1]
        elif kind == "deleted":
            e.setdefault("deleted_manifest_blobs", []).append(rest[0])

def describe(digest, served_type):
    with open(blob_path(digest), "rb") as f:
        m = json.loads(f.read())
    field = m.get("mediaType")
    d = {"media_type": served_type or field, "media_type_field": field}
    if "manifests" in m:
        d["children"] = [{"digest": c["digest"], "media_type": c.get("mediaType"),
                          "platform": c.get("platform")} for c in m["manifests"]]
    else:
        d["config"] = m["config"]["digest"]
        d["layers"] = [l["digest"] for l in m["layers"]]
    return d

layer_users = {}
for path, e in repos.items():
    rdir = repo_dir(path)
    served = e.pop("_served", {})
    # Every tag's current/link must match what the registry served.
    for tag, digest in e["tags"].items():
        link = read_link(os.path.join(rdir, "_manifests", "tags", tag, "current", "link"))
        if link != digest:
            fail(f"{path}:{tag} current/link {link} != served {digest}")
    rev_root = os.path.join(rdir, "_manifests", "revisions", "sha256")
    manifests = {}
    for hexd in sorted(os.listdir(rev_root)):
        digest = "sha256:" + hexd
        manifests[digest] = describe(digest, served.get(digest))
    for digest, d in list(manifests.items()):
        for c in d.get("children", []):
            if c["digest"] not in manifests:
                fail(f"{path}: child {c['digest']} has no revision link")
            manifests[c["digest"]]["media_type"] = manifests[c["digest"]]["media_type"] or c["media_type"]
            manifests[c["digest"]]["platform"] = c["platform"]
    for digest, d in manifests.items():
        if d["media_type"] is None:
            fail(f"{path}: unknown media type for {digest}")
    e["manifests"] = manifests
    lroot = os.path.join(rdir, "_layers", "sha256")
    e["layer_links"] = ["sha256:" + h for h in sorted(os.listdir(lroot))]
    for d in manifests.values():
        for l in d.get("layers", []):
            layer_users.setdefault(l, set()).add(path)
    # Tags that are gone from the layout after the deletions below.
    for tag in e.get("removed_tags", {}):
        del e["tags"][tag]

def served_type(repo, tag):
    return repos[repo]["manifests"][repos[repo]["tags"][tag]]["media_type"]

expect = {
    ("group-a/project-1/app", "v1"): OCI_MANIFEST,
    ("group-a/project-1/api", "v1"): DOCKER_V2,
    ("group-a/project-2/base", "v1"): OCI_MANIFEST,
    ("group-b/project-3/multi", "v1"): OCI_INDEX,
    ("group-b/project-3/multi-docker", "v1"): DOCKER_LIST,
    ("a/b/c/d/image", "v1"): OCI_MANIFEST,
}
for (repo, tag), mt in expect.items():
    if served_type(repo, tag) != mt:
        fail(f"{repo}:{tag} is {served_type(repo, tag)}, expected {mt}")
for repo, want in (("group-b/project-3/multi", OCI_MANIFEST), ("group-b/project-3/multi-docker", DOCKER_V2)):
    top = repos[repo]["manifests"][repos[repo]["tags"]["v1"]]
    kids = [repos[repo]["manifests"][c["digest"]] for c in top["children"]]
    if len(kids) != 2 or any(k["media_type"] != want for k in kids):
        fail(f"{repo}: children are not two {want}")

shared = {l: sorted(u) for l, u in layer_users.items() if len(u) > 1}
if not any({"group-a/project-1/app", "group-a/project-2/base"} <= set(u) for u in shared.values()):
    fail("no layer shared between group-a/project-1/app and group-a/project-2/base")

# The manifest whose blob gets deleted must not be used by any other repository.
for path, e in repos.items():
    for digest in e.get("deleted_manifest_blobs", []):
        for other in repos:
            if other != path and os.path.exists(os.path.join(repo_dir(other), "_manifests", "revisions", *digest.split(":"), "link")):
                fail(f"manifest {digest} of {path} is also in {other}")

doc = {
    "format": 1,
    "variant": variant,
    "generator": "scripts/sample-registry.sh",
    "tools": {"docker-registry": reg_v, "skopeo": skopeo_v, "umoci": umoci_v},
    "storage_root": root,
    "notes": [
        "tags: tags whose _manifests/tags/<tag>/current/link exists at the end, -> manifest digest as served by the registry (Docker-Content-Digest) when pushed",
        "manifests: every manifest revision linked in the repository (tagged, untagged, and children of indexes/lists); media_type is the registry's Content-Type, media_type_field the mediaType inside the stored JSON (OCI manifests written by umoci have none)",
        "untagged_manifests: manifests left without a tag by a re-push of the same tag",
        "removed_tags: tag -> digest of tags whose current/link file was deleted (the tag's index/ directory is left)",
        "deleted_manifest_blobs: manifest digests whose blobs/.../data file was deleted although a tag still points at them",
    ],
    "repositories": sorted(repos.values(), key=lambda e: e["path"]),
    "shared_layers": shared,
}
with open(out_path, "w") as f:
    json.dump(doc, f, indent=2, sort_keys=False)
    f.write("\n")
PY

# --------------------------------------------------------------------------
# 6. Deliberate damage.
# --------------------------------------------------------------------------
GONE_LINK=$V2/repositories/$R_GONE/_manifests/tags/removed/current/link
[[ $(<"$GONE_LINK") == "$d_removed" ]] || die "unexpected content in $GONE_LINK"
rm -f "$GONE_LINK"
log "deleted $GONE_LINK"

if [[ $VARIANT == with-broken ]]; then
  BROKEN_LINK=$V2/repositories/$R_BROKEN/_manifests/tags/v1/current/link
  target=$(<"$BROKEN_LINK")
  [[ $target == "$d_broken" ]] || die "$BROKEN_LINK points at $target, expected $d_broken"
  hex=${target#sha256:}
  BROKEN_BLOB=$V2/blobs/sha256/${hex:0:2}/$hex/data
  [[ -f $BROKEN_BLOB ]] || die "missing $BROKEN_BLOB before deletion"
  rm -f "$BROKEN_BLOB"
  log "deleted manifest blob $BROKEN_BLOB"
fi

mv "$WORK/sample.json" "$JSON"
printf '%s\n' "$VARIANT" >"$MARKER"

# --------------------------------------------------------------------------
# 7. Summary.
# --------------------------------------------------------------------------
python3 - "$JSON" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
print(f"sample registry ({doc['variant']}) in {doc['storage_root']}")
for r in doc["repositories"]:
    tags = ", ".join(f"{t}={d[7:19]}" for t, d in sorted(r["tags"].items()))
    extra = []
    if r.get("untagged_manifests"):
        extra.append("untagged " + ", ".join(d[7:19] for d in r["untagged_manifests"]))
    if r.get("removed_tags"):
        extra.append("removed tag " + ", ".join(f"{t}={d[7:19]}" for t, d in r["removed_tags"].items()))
    if r.get("deleted_manifest_blobs"):
        extra.append("deleted manifest blob " + ", ".join(d[7:19] for d in r["deleted_manifest_blobs"]))
    top = {r["manifests"][d]["media_type"].rsplit("/", 1)[-1] for d in r["tags"].values()}
    print(f"  {r['path']:32} {len(r['manifests'])} manifest(s) [{', '.join(sorted(top))}]  tags: {tags}"
          + ("  (" + "; ".join(extra) + ")" if extra else ""))
print(f"  shared layers: {len(doc['shared_layers'])}; description: {sys.argv[1]}")
PY
log "done in $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$START" "$(date +%s.%N)") s"
