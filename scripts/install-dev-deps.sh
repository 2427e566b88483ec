#!/usr/bin/env bash
# Installs what `make dev` and the browser end-to-end test need beyond scripts/install-test-deps.sh:
#   - configurable-http-proxy (npm, pinned) in a cache directory, never globally;
#   - the notebook environment the Slurm jobs run: a venv of Debian's /usr/bin/python3 with
#     jupyterhub (the hub's own version, for jupyterhub-singleuser) and jupyterlab, outside /root so
#     the POSIX users alice and bob, as whom the emulated sites run jobs, can execute it;
#   - Debian's chromium (headless, driven by Playwright; never `playwright install`).
# Idempotent and fast when everything is present. Run as root. Prints KEY=VALUE lines on stdout
# (chp, notebook_python, chromium); everything else goes to stderr.
#
#   BBP_DEV_CACHE     where the npm package goes   (default ~/.cache/bbp-notebooks)
#   BBP_NOTEBOOK_ENV  parent of the notebook venvs (default /opt/bbp-notebooks)
#   PYTHON            the hub's python, whose jupyterhub version the notebooks match (python3)
set -euo pipefail

CHP_VERSION=5.3.0         # needs Node.js >= 20 (the machine's); 4.6.3 on Debian 12's Node.js 18
CHP_VERSION_NODE18=4.6.3
JUPYTERLAB_VERSION=4.6.6
IPYKERNEL_VERSION=7.4.0
PYTHON=${PYTHON:-python3}

log() { printf 'install-dev-deps.sh: %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
  log "must run as root"
  exit 1
fi

apt_install() {
  local missing=() pkg status
  for pkg in "$@"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  log "installing ${missing[*]} (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  local attempt
  for attempt in 1 2 3; do  # a mirror hiccup should not fail the whole run
    if apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
      return 0
    fi
    sleep $((attempt * 5))
  done
  log "apt-get install ${missing[*]} failed 3 times"
  exit 1
}

# Debian's chromium; fonts so that screenshots show text. venv for the notebook environment.
apt_install chromium fonts-dejavu-core python3-venv
command -v npm >/dev/null 2>&1 || apt_install nodejs npm

# --- configurable-http-proxy ---------------------------------------------------------------------
node_major=$(node -p 'process.versions.node.split(".")[0]')
if ((node_major < 20)); then
  CHP_VERSION=$CHP_VERSION_NODE18
fi
cache=${BBP_DEV_CACHE:-$HOME/.cache/bbp-notebooks}
chp_dir="$cache/configurable-http-proxy-$CHP_VERSION"
chp="$chp_dir/node_modules/.bin/configurable-http-proxy"
mkdir -p "$chp_dir"
exec 8>"$chp_dir/.lock"
flock 8
if [[ ! -x $chp || ! -f $chp_dir/.installed ]]; then
  log "installing configurable-http-proxy $CHP_VERSION (npm) into $chp_dir"
  rm -rf "$chp_dir/node_modules" "$chp_dir/.installed"
  npm install --prefix "$chp_dir" --no-audit --no-fund --loglevel=error --omit=dev \
    "configurable-http-proxy@$CHP_VERSION" >&2
  "$chp" --version >/dev/null
  touch "$chp_dir/.installed"
fi

# --- the notebook environment of the jobs --------------------------------------------------------
hub_version=$("$PYTHON" -c 'import jupyterhub; print(jupyterhub.__version__)')
env_parent=${BBP_NOTEBOOK_ENV:-/opt/bbp-notebooks}
venv="$env_parent/notebook-hub$hub_version-lab$JUPYTERLAB_VERSION"
stamp="jupyterhub==$hub_version jupyterlab==$JUPYTERLAB_VERSION ipykernel==$IPYKERNEL_VERSION"
mkdir -p "$env_parent"
chmod 0755 "$env_parent"
exec 7>"$env_parent/.lock"
flock 7
if [[ ! -x $venv/bin/jupyterhub-singleuser || "$(cat "$venv/.installed" 2>/dev/null)" != "$stamp" ]]; then
  log "creating the notebook environment $venv ($stamp)"
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  # shellcheck disable=SC2086  # $stamp is a list of requirement words
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $stamp >&2
  "$venv/bin/jupyterhub-singleuser" --version >/dev/null
  chmod -R a+rX "$venv"
  printf '%s' "$stamp" >"$venv/.installed"
fi

# JupyterLab asks every new user whether to fetch news from the internet; the answer is no.
overrides="$venv/share/jupyter/lab/settings/overrides.json"
if [[ ! -f $overrides ]]; then
  mkdir -p "$(dirname "$overrides")"
  printf '{"@jupyterlab/apputils-extension:notification": {"fetchNews": "false"}}\n' >"$overrides"
  chmod -R a+rX "$venv/share/jupyter/lab"
fi

command -v chromium >/dev/null
printf 'chp=%s\n' "$chp"
printf 'notebook_python=%s\n' "$venv/bin/python"
printf 'chromium=%s\n' "$(command -v chromium)"
