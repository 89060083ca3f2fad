# shellcheck shell=bash
# Sourced by deploy/container/build and smoke: picks the container engine and sets $ENGINE.
# podman when installed (with this directory's containers.conf unless CONTAINERS_CONF is set),
# else docker when its daemon answers. CONTAINER_ENGINE=podman|docker forces one.

engine_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

pick_engine() {
  local want="${CONTAINER_ENGINE:-}"
  if [[ -z "$want" ]]; then
    if command -v podman >/dev/null 2>&1; then
      want=podman
    elif command -v docker >/dev/null 2>&1; then
      want=docker
    else
      echo "error: neither podman nor docker is installed." >&2
      echo "  Debian/Ubuntu: apt-get install -y podman runc" >&2
      exit 1
    fi
  fi
  case "$want" in
    podman)
      command -v podman >/dev/null 2>&1 || { echo "error: podman is not installed (apt-get install -y podman runc)" >&2; exit 1; }
      export CONTAINERS_CONF="${CONTAINERS_CONF:-$engine_dir/containers.conf}"
      ;;
    docker)
      command -v docker >/dev/null 2>&1 || { echo "error: docker is not installed" >&2; exit 1; }
      if ! docker info >/dev/null 2>&1; then
        echo "error: the docker client cannot reach a Docker daemon; start it, or install podman (apt-get install -y podman runc)" >&2
        exit 1
      fi
      ;;
    *)
      echo "error: CONTAINER_ENGINE must be podman or docker, not '$want'" >&2
      exit 1
      ;;
  esac
  # shellcheck disable=SC2034 # read by the scripts that source this
  ENGINE="$want"
}
