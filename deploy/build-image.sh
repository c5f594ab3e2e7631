#!/usr/bin/env bash
# Build the vpp-agent container image from this checkout (docs/deploy.md, "Container image").
#
#   deploy/build-image.sh [--tag TAG] [--base IMAGE | --debootstrap] [--extras LIST]
#       Wheels for the engine's CPU (vpp-agent's from this tree, its dependencies from the package index, resolved
#       from pyproject.toml now), then deploy/Dockerfile on BASE (default python:3.11-slim). The build itself runs
#       with --network none: nothing inside it reaches an index or a registry.
#       --debootstrap: no registry reachable; make the base locally (Debian bookworm minbase + python3, python3-venv;
#       needs root, debootstrap and deb.debian.org) and import it as vpp-agent-base:bookworm.
#       --extras: optional dependency sets of pyproject.toml to install too, comma-separated (e.g. ocpp: a site
#       with OCPP chargers).
#   deploy/build-image.sh [--extras LIST] --check-wheels ARCH REPORT
#       Resolve every runtime dependency to a binary wheel for ARCH (aarch64, x86_64) and CPython 3.11 without
#       installing anything; pip's JSON report goes to REPORT. Exit 1, with pip's reason, if one has none: that
#       dependency would need a compiler on the gateway (or in the image build) for that CPU.
#
# Environment: PYTHON (a Python 3.11 with pip; default .venv/bin/python, else python3), DOCKER (the docker client:
# it must build with BuildKit, i.e. Docker 23 or later with buildx, or the client of a 20.10 engine),
# VPP_BASE_CACHE (a folder to keep the debootstrap base in, as a tar named by a hash of its recipe; default none),
# PIP_CONSTRAINT (pin dependency versions, e.g. to what you tested: pip freeze > constraints.txt).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x "$root/.venv/bin/python" ]; then python=$root/.venv/bin/python; else python=python3; fi
fi
docker=${DOCKER:-docker}
py_version=3.11
tag=vpp-agent:latest
base=python:3.11-slim
use_debootstrap=0
extras=""
# the local base: what `--debootstrap` builds. Any change here (trim_version: the trimming below) changes the
# cache key.
base_image=vpp-agent-base:bookworm
suite=bookworm
mirror=http://deb.debian.org/debian
packages=python3,python3-venv
trim_version=1

die() { echo "build-image.sh: $*" >&2; exit 1; }
say() { echo "build-image.sh: $*" >&2; }

# pip --platform takes exact tags: a manylinux_2_28 wheel set must also accept wheels built for older glibc
# (2_17 .. 2_27, alias manylinux2014), or pip skips them and may pick an odd pre-release that happens to match.
platform_args() {
    local arch=$1 glibc
    for glibc in $(seq 28 -1 17); do printf -- '--platform manylinux_2_%s_%s ' "$glibc" "$arch"; done
    printf -- '--platform manylinux2014_%s' "$arch"
}

# vpp-agent's own wheel (pure Python) from the working tree as it is, uncommitted changes included, built in a copy
# so the checkout gets no build/ or egg-info from it.
project_wheel() {
    local out=$1 src
    src=$(mktemp -d)
    if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        # tracked and new files, not ignored ones (.venv, build/); a tracked file deleted in the tree is skipped
        (cd "$root" && git ls-files -z --cached --others --exclude-standard |
            tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null | tar -C "$src" -xf -)
    else
        cp -r "$root/." "$src/"
    fi
    [ -f "$src/pyproject.toml" ] || die "no pyproject.toml under $root"
    "$python" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$out" "$src" \
        || die "could not build vpp-agent's wheel with $python"
    rm -rf "$src"
}

# vpp-agent's wheel in DIR as a requirement, with the extras asked for
requirement() {
    local wheel
    wheel=$(echo "$1"/vpp_agent-*.whl)
    [ -f "$wheel" ] || die "no vpp-agent wheel in $1"
    if [ -n "$extras" ]; then echo "$wheel[$extras]"; else echo "$wheel"; fi
}

# Every runtime dependency as a wheel for ARCH and CPython 3.11, into OUT (next to vpp-agent's wheel).
dependency_wheels() {
    local arch=$1 out=$2
    # shellcheck disable=SC2046
    "$python" -m pip download --quiet --disable-pip-version-check --only-binary=:all: $(platform_args "$arch") \
        --python-version "$py_version" --implementation cp --abi "cp${py_version/./}" --dest "$out" "$(requirement "$out")" \
        || die "could not get every dependency as a $arch wheel for CPython $py_version (pip's reason above)"
}

check_wheels() {
    local arch=$1 report=$2 work
    work=$(mktemp -d)
    project_wheel "$work"
    # --dry-run resolves from the index's metadata without installing; --target is what pip asks for with --platform
    # shellcheck disable=SC2046
    if ! "$python" -m pip install --dry-run --ignore-installed --quiet --disable-pip-version-check \
        --only-binary=:all: $(platform_args "$arch") --python-version "$py_version" --implementation cp \
        --abi "cp${py_version/./}" --target "$work/target" --report "$report" "$(requirement "$work")"; then
        rm -rf "$work"
        die "a runtime dependency has no $arch wheel for CPython $py_version (pip's reason above)"
    fi
    rm -rf "$work"
    say "every runtime dependency resolves to a wheel for $arch (report: $report)"
}

engine_arch() {
    local arch
    arch=$("$docker" version --format '{{.Server.Arch}}') || die "no docker engine answers (DOCKER_HOST=${DOCKER_HOST:-default})"
    case $arch in
        amd64 | x86_64) echo x86_64 ;;
        arm64 | aarch64) echo aarch64 ;;
        *) die "engine architecture $arch: no wheel set for it (x86_64 and aarch64 only)" ;;
    esac
}

# The debootstrap base, trimmed (apt lists and .debs, man pages, locales, docs but their copyright files), imported
# as $base_image. With VPP_BASE_CACHE, the trimmed root file system is kept there as a tar named by the recipe's hash
# and imported from it next time (~5 s instead of ~50 s).
debootstrap_base() {
    local key cache="" rootfs
    key=$(printf '%s ' minbase "$suite" "$mirror" "$packages" "$trim_version" | sha256sum | cut -c1-16)
    [ -n "${VPP_BASE_CACHE:-}" ] && cache=$VPP_BASE_CACHE/base-$key.tar
    if [ -z "$cache" ] || [ ! -s "$cache" ]; then
        command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
        [ "$(id -u)" = 0 ] || die "debootstrap needs root"
        rootfs=$(mktemp -d)
        say "debootstrap $suite minbase into $rootfs"
        debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" \
            >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; die "debootstrap failed (log: $rootfs.log)"; }
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/man/* \
            "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/info/*
        find "$rootfs/usr/share/doc" -type f ! -name copyright -delete
        if [ -n "$cache" ]; then
            mkdir -p "$VPP_BASE_CACHE"
            tar -C "$rootfs" -cf "$cache.part" . && mv "$cache.part" "$cache"
        else
            cache=$rootfs.tar
            tar -C "$rootfs" -cf "$cache" .
        fi
        rm -rf "$rootfs" "$rootfs.log"
    fi
    "$docker" import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' - "$base_image" <"$cache" >/dev/null
    [ -n "${VPP_BASE_CACHE:-}" ] || rm -f "$cache"
    base=$base_image
}

build() {
    local arch context
    arch=$(engine_arch)
    context=$(mktemp -d)
    mkdir "$context/wheels"
    say "wheels for $arch"
    project_wheel "$context/wheels"
    dependency_wheels "$arch" "$context/wheels"
    cp "$here/container-init.py" "$context/container-init.py"
    if [ "$use_debootstrap" = 1 ]; then debootstrap_base; fi
    say "building $tag on $base"
    # BuildKit: the wheels are bind-mounted into the install step (never a layer); --network none: nothing inside
    # the build reaches an index or a registry
    DOCKER_BUILDKIT=1 "$docker" build --progress plain --network none --build-arg "BASE=$base" \
        --build-arg "EXTRAS=$extras" --tag "$tag" \
        --file "$here/Dockerfile" "$context" \
        || { rm -rf "$context"; die "docker build failed"; }
    rm -rf "$context"
    say "built $tag ($("$docker" image inspect --format '{{.Size}}' "$tag") bytes)"
}

while [ $# -gt 0 ]; do
    case $1 in
        --tag) tag=${2:?--tag needs a value}; shift 2 ;;
        --base) base=${2:?--base needs an image}; shift 2 ;;
        --debootstrap) use_debootstrap=1; shift ;;
        --extras)
            extras=${2:?--extras needs a comma-separated list}
            case $extras in *[!a-z0-9,_-]*) die "--extras $extras: names of pyproject.toml's optional dependencies" ;; esac
            shift 2
            ;;
        --check-wheels)
            [ $# -eq 3 ] || die "usage: $0 --check-wheels ARCH REPORT"
            check_wheels "$2" "$3"
            exit 0
            ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see $0 --help)" ;;
    esac
done
build
