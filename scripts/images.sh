#!/usr/bin/env bash
# Builds imgflow's container images without a Docker daemon or a registry: buildah runs the
# project's Dockerfiles on a Debian 12 base made here by mmdebstrap from Debian's packages.
#
# Usage: scripts/images.sh [build | list | archive NAME]
#   build    (default) build what changed; write .tools/images.env (NAME_IMAGE=ref per image) and
#            an archive per image under the cache, for `ctr images import`
#   list     the images, their references and sizes
#
# Images: base (Debian bookworm + python3), uv (the uv binary), api, worker, operator (Dockerfile,
# MEMBER=...), and what a node without a registry needs: redis (Debian's redis-server), ferretdb,
# seaweedfs (the chart's dev S3 server: SeaweedFS's `weed` on the base), coredns, pause. References
# are imgflow.local/NAME:<content tag>, so a changed image gets a new tag and `helm upgrade` rolls
# exactly the pods whose image changed.
#
# Environment: IMGFLOW_IMAGES_CACHE (default ~/.cache/imgflow/images): buildah's storage, the base
# rootfs and the archives; DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=versions.env
. "$root/scripts/versions.env"
cache=${IMGFLOW_IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imgflow/images}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
out=$root/.tools/images.env
registry=imgflow.local
mkdir -p "$cache/archives" "$root/.tools"

log() { echo "images: $*" >&2; }
die() { log "$*"; exit 1; }

# Storage of its own, so nothing of the machine's containers/storage is touched.
bah() { buildah --root "$cache/storage" --runroot "$cache/run" --storage-driver overlay "$@"; }

need() {
  local missing=() c
  for c in buildah mmdebstrap gcc; do command -v "$c" >/dev/null || missing+=("$c"); done
  [ ${#missing[@]} = 0 ] && return 0
  log "installing ${missing[*]/gcc/gcc libc6-dev}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends buildah mmdebstrap gcc libc6-dev uidmap >/dev/null
}

exists() { bah inspect --type image "$1" >/dev/null 2>&1; }

# The base: Debian bookworm (and its security updates) with python3 and CA certificates, docs and
# locales left out. SOURCE_DATE_EPOCH makes the tarball reproducible for a given package set.
base() {
  local ref=$registry/base:bookworm-$BASE_IMAGE_SERIAL tar=$cache/base-bookworm-$BASE_IMAGE_SERIAL.tar c
  exists "$ref" && { echo "$ref"; return; }
  if [ ! -s "$tar" ]; then
    log "building the Debian base with mmdebstrap (about a minute, once)"
    SOURCE_DATE_EPOCH=1735689600 mmdebstrap --variant=minbase --include=python3,ca-certificates \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      bookworm "$tar.tmp" "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
      "deb ${mirror%/debian}/debian-security bookworm-security main" >&2
    mv "$tar.tmp" "$tar"
  fi
  c=$(bah from scratch)
  bah add "$c" "$tar" / >/dev/null
  bah config --cmd '["python3"]' --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$c"
  bah commit -q --rm "$c" "$ref" >/dev/null
  echo "$ref"
}

# uv, as the Dockerfile's UV_IMAGE stage expects it (/uv), from the uv this machine runs.
uv_image() {
  local bin version ref c
  bin=$(python3 -c 'import uv; print(uv.find_uv_bin())' 2>/dev/null || command -v uv)
  version=$("$bin" --version | awk '{print $2}')
  ref=$registry/uv:$version
  exists "$ref" && { echo "$ref"; return; }
  c=$(bah from scratch)
  bah copy "$c" "$bin" /uv >/dev/null
  bah commit -q --rm "$c" "$ref" >/dev/null
  echo "$ref"
}

# digest WORD_OR_FILE...: a short hash of these build inputs (files by content, other words as
# they are), so that an image is rebuilt exactly when something it is made of changed.
digest() {
  local x
  for x in "$@"; do
    # a file by its path in the repository (not where the checkout is) and its content
    if [ -f "$x" ]; then echo "${x#"$root"/} $(sha256sum <"$x")"; else echo "$x"; fi
  done | sha256sum | cut -c1-12
}

# build NAME TAG DOCKERFILE CONTEXT [buildah bud args]: build unless NAME:TAG exists; print it.
build() {
  local name=$1 ref=$registry/$1:$2 file=$3 context=$4 buildlog=$cache/logs/$1.log
  shift 4
  if ! exists "$ref"; then
    log "building $name"
    mkdir -p "$cache/logs"
    bah bud --isolation chroot --network host --layers -f "$file" -t "$ref" "$@" "$context" \
      >"$buildlog" 2>&1 || { tail -n 30 "$buildlog" >&2; die "building $name failed (log: $buildlog)"; }
  fi
  echo "$ref"
}

# context_with NAME FILE: a temporary build context holding FILE as NAME.
context_with() {
  local dir
  dir=$(mktemp -d "$cache/context.XXXXXX")
  cp "$2" "$dir/$1"
  echo "$dir"
}

archive_path() { echo "$cache/archives/$(echo "$1" | tr '/:' '__').tar"; }

# archive REF: a docker-archive of the image (what `ctr images import` reads), written once per tag.
archive() {
  local ref=$1 file
  file=$(archive_path "$ref")
  if [ ! -s "$file" ]; then
    rm -f "$file.tmp"
    bah push -q "$ref" "docker-archive:$file.tmp:$ref" >/dev/null
    mv "$file.tmp" "$file"
  fi
  echo "$file"
}

cmd_build() {
  need
  "$root/scripts/tools.sh" ferretdb coredns weed >/dev/null
  local base_ref uv_ref member ctx refs=() ref name sources bin
  base_ref=$(base)
  uv_ref=$(uv_image)
  refs+=("$base_ref") # the chart's helm-test pod runs python3 on it
  # What the Dockerfile copies: the workspace's files that git tracks or would (not caches).
  mapfile -t sources < <(cd "$root" && git ls-files -co --exclude-standard -- uv.lock pyproject.toml \
    core/pyproject.toml core/src api/pyproject.toml api/src worker/pyproject.toml worker/src \
    operator/pyproject.toml operator/src | sort)
  for member in api worker operator; do
    # The machine's CA bundle, for uv behind a TLS-inspecting proxy (see the Dockerfile).
    refs+=("$(build "$member" "$(cd "$root" && digest Dockerfile "$base_ref" "$uv_ref" "$member" "${sources[@]}")" \
      "$root/Dockerfile" "$root" --build-arg "MEMBER=$member" \
      --volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
      --build-arg "PYTHON_IMAGE=$base_ref" --build-arg "UV_IMAGE=$uv_ref")")
  done
  refs+=("$(build redis "$(digest "$root/deploy/images/redis/Dockerfile" "$base_ref")" \
    "$root/deploy/images/redis/Dockerfile" "$root/deploy/images/redis" --build-arg "BASE_IMAGE=$base_ref")")
  bin=$(readlink -f "$root/.tools/bin/weed")
  ctx=$(context_with weed "$bin")
  refs+=("$(build seaweedfs "$(digest "$root/deploy/images/seaweedfs/Dockerfile" "$base_ref" "$bin")" \
    "$root/deploy/images/seaweedfs/Dockerfile" "$ctx" --build-arg "BASE_IMAGE=$base_ref")")
  rm -rf "$ctx"
  for name in ferretdb coredns; do
    bin=$(readlink -f "$root/.tools/bin/$name")
    ctx=$(context_with "$name" "$bin")
    refs+=("$(build "$name" "$(digest "$root/deploy/images/$name/Dockerfile" "$bin")" \
      "$root/deploy/images/$name/Dockerfile" "$ctx")")
    rm -rf "$ctx"
  done
  ctx=$(mktemp -d "$cache/context.XXXXXX")
  gcc -Os -static -o "$ctx/pause" "$root/deploy/images/pause/pause.c"
  refs+=("$(build pause "$(digest "$root/deploy/images/pause/Dockerfile" "$root/deploy/images/pause/pause.c")" \
    "$root/deploy/images/pause/Dockerfile" "$ctx")")
  rm -rf "$ctx"
  {
    echo "# Written by scripts/images.sh: the images of this checkout, and their archives."
    for ref in "${refs[@]}"; do
      name=${ref#"$registry"/}
      name=${name%%:*}
      name=${name//-/_}
      echo "${name^^}_IMAGE=$ref"
      echo "${name^^}_ARCHIVE=$(archive "$ref")"
    done
  } >"$out.tmp"
  mv "$out.tmp" "$out"
  prune "${refs[@]}" "$uv_ref"
  # buildah leaves a mounted working container for a stage used only by COPY --from (the uv
  # stage): remove them, and with them their mounts.
  bah rm --all >/dev/null 2>&1 || true
  log "images ready: $out"
}

# prune REF...: forget the images and archives of earlier builds (other tags of these names; an
# archive only once it is 3 hours old), and the layers nothing uses any more, so that rebuilds do
# not fill the disk.
prune() {
  local keep=" $* " archives=" " ref file
  for ref in "$@"; do
    archives+="$(archive_path "$ref") "
    touch -c "$(archive_path "$ref")"  # in use: its age counts from this build
  done
  for ref in $(bah images --format '{{.Name}}:{{.Tag}}' --filter "reference=$registry/*"); do
    case $keep in *" $ref "*) ;; *) bah rmi -f "$ref" >/dev/null 2>&1 || true ;; esac
  done
  for file in "$cache"/archives/*.tar; do
    case $archives in *" $file "*) continue ;; esac
    # another work tree sharing this cache may have built it lately and still load it into its node
    [ -z "$(find "$file" -mmin -180 2>/dev/null)" ] || continue
    rm -f "$file"
  done
  bah rmi --prune >/dev/null 2>&1 || true
}

cmd_list() {
  bah images --filter "reference=$registry/*" --format '{{.Name}}:{{.Tag}}  {{.Size}}'
}

case ${1:-build} in
  build) cmd_build ;;
  list) cmd_list ;;
  *) echo "usage: scripts/images.sh [build | list]" >&2; exit 2 ;;
esac
