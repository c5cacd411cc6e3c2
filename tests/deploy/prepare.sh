#!/usr/bin/env bash
# Make this machine able to run the lab server's compose stack, installing only what is missing:
#   1. Docker's engine from Debian's packages (docker.io) and debootstrap;
#   2. the Compose v2 CLI plugin (Debian 12's docker-compose is v1, which rejects the file's top-level
#      `name`; trixie's docker-compose package is the v2 plugin);
#   3. a running daemon (no systemd here: started in the background, its pid in $DOCKERD_PIDFILE);
#   4. the base images the shipped Dockerfiles and compose file name (python:3.11-slim, postgres:16,
#      redis:7, and busybox for the README's backup command): pulled where the public registry is
#      reachable, else built locally from Debian's packages under those same tags (stand-ins for
#      tests, labelled org.gatlab.standin=<hash of their recipe>; the shipped files are unchanged).
# Idempotent: a second run finds everything in place and does nothing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
say() { echo "deploy: $*"; }
DOCKERD_PIDFILE=${DOCKERD_PIDFILE:-/run/gatlab-test-dockerd.pid}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
export DEBIAN_FRONTEND=noninteractive

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  say "installing docker.io and debootstrap from Debian's packages"
  apt-get update -qq
  apt-get install -y -qq docker.io debootstrap >/dev/null
fi

if ! docker compose version >/dev/null 2>&1; then
  say "installing the Compose v2 plugin (Debian trixie's docker-compose package)"
  apt_dir=$(mktemp -d)
  trap 'rm -rf "$apt_dir"' EXIT
  mkdir -p "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $DEBIAN_MIRROR trixie main" \
    > "$apt_dir/sources.list"
  apt_opts=(-o "Dir::State=$apt_dir/state" -o "Dir::Cache=$apt_dir/cache"
    -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
    -o "APT::Sandbox::User=root")
  apt-get "${apt_opts[@]}" update -qq
  (cd "$apt_dir" && apt-get "${apt_opts[@]}" download docker-compose -qq)
  dpkg-deb -x "$apt_dir"/docker-compose_*.deb "$apt_dir/root"
  mkdir -p /usr/local/lib/docker/cli-plugins
  install -m 0755 "$apt_dir/root/usr/libexec/docker/cli-plugins/docker-compose" /usr/local/lib/docker/cli-plugins/
fi
say "$(docker compose version)"

if ! docker info >/dev/null 2>&1; then
  say "starting dockerd (log: /var/log/gatlab-test-dockerd.log)"
  dockerd >>/var/log/gatlab-test-dockerd.log 2>&1 &
  echo $! > "$DOCKERD_PIDFILE"
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { tail -20 /var/log/gatlab-test-dockerd.log >&2; exit 1; }
fi
say "engine $(docker version --format '{{.Server.Version}}')"

have() { docker image inspect "$1" >/dev/null 2>&1; }
# A stand-in carries the hash of its recipe (its Dockerfile and the NAME-* files beside it): one built
# from an older recipe is built again.
recipe() { cat "$here/standins/$1" "$here/standins/${1%.Dockerfile}"-* 2>/dev/null | sha256sum | cut -c1-16; }
label() { docker image inspect -f '{{index .Config.Labels "org.gatlab.standin"}}' "$1" 2>/dev/null; }
pulled() { timeout 60 docker pull -q "$1" >/dev/null 2>&1; }

base=gatlab-standin/bookworm:latest
standin() {  # standin TAG DOCKERFILE: build TAG from the local Debian base
  local tag=$1 file=$2 ctx
  if ! have "$base"; then
    say "debootstrap bookworm (the stand-ins' base)"
    local root
    root=$(mktemp -d)
    debootstrap --variant=minbase bookworm "$root" "$DEBIAN_MIRROR" >/dev/null
    tar -C "$root" -c . | docker import -c 'CMD ["bash"]' - "$base" >/dev/null
    rm -rf "$root"
  fi
  ctx=$(mktemp -d)
  cp "$here/standins/"* "$ctx/"
  # pip inside the images reaches the package index as this machine does (its CA bundle and pip.conf)
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
  if [ -f /etc/pip.conf ]; then grep -v '^constraint' /etc/pip.conf > "$ctx/pip.conf"; else : > "$ctx/pip.conf"; fi
  docker build -q -t "$tag" --build-arg "BASE=$base" --label "org.gatlab.standin=$(recipe "$file")" -f "$ctx/$file" "$ctx" >/dev/null
  rm -rf "$ctx"
}

for pair in python:3.11-slim=python.Dockerfile postgres:16=postgres.Dockerfile redis:7=redis.Dockerfile \
  busybox:latest=busybox.Dockerfile; do
  tag=${pair%%=*} file=${pair#*=}
  if have "$tag" && { [ -z "$(label "$tag")" ] || [ "$(label "$tag")" = "$(recipe "$file")" ]; }; then continue; fi
  if pulled "$tag"; then say "pulled $tag"; continue; fi
  say "building a local stand-in for $tag (the public registry is out of reach)"
  old=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
  standin "$tag" "$file"
  [ -z "$old" ] || docker rmi "$old" >/dev/null 2>&1 || true  # the stand-in of an older recipe
done
say "ready"
