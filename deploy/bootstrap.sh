#!/usr/bin/env bash
# Sets up everything labelqa needs, idempotently: Debian packages (when run as root),
# a virtualenv at .venv with torch 2.13.0 (CPU) and labelqa installed in editable mode.
# Re-running after a successful run takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

log() { printf '[bootstrap] %s\n' "$*" >&2; }

# 1. Debian packages: the real DICOM peers and validators used by the demo and the tests.
need_apt=()
command -v storescu >/dev/null 2>&1 || need_apt+=(dcmtk)
command -v dciodvfy >/dev/null 2>&1 || need_apt+=(dicom3tools)
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || need_apt+=(orthanc)
ls /usr/share/orthanc/plugins*/libOrthancDicomWeb.so >/dev/null 2>&1 || need_apt+=(orthanc-dicomweb)
# Browser tests of the review workbench: Debian's Chromium and its driver (nothing downloads a browser).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
# The viewer tests and `labelqa demo --viewer`: OHIF's prebuilt release comes from the npm registry (below).
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
# The shared index: PostgreSQL 15 (tests start their own server with initdb + pg_ctl in a temp dir).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian packages: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2
    # Debian starts Orthanc as a service listening on all interfaces; labelqa starts its own.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet orthanc 2>/dev/null; then
      systemctl stop orthanc || true
    fi
  else
    log "not root: skipping Debian packages (${need_apt[*]}); tests that need them will be skipped"
  fi
fi

# 2. Virtualenv with pinned CPU torch and the project.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
stamp_src=$(cat pyproject.toml deploy/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.labelqa-stamp 2>/dev/null)" != "$stamp_src" ]; then
  log "installing Python packages into .venv (first run takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip >&2
  # torch first, pinned, so nothing later pulls a multi-GB CUDA build.
  .venv/bin/python -m pip install -q "torch==2.13.0" >&2
  .venv/bin/python -m pip install -q -e ".[codecs,cluster,test]" >&2
  echo "$stamp_src" > .venv/.labelqa-stamp
fi
# 3. OHIF (pinned in service/demo/viewer.py), for the viewer tests and `labelqa demo --viewer`: its npm tarball
# ships a prebuilt dist/, fetched once with `npm pack` into ~/.cache/labelqa/ohif/<version> (nothing is
# built). Without npm or the registry the viewer tests are skipped; nothing else depends on it.
if command -v npm >/dev/null 2>&1; then
  .venv/bin/python -m service.demo.viewer install >/dev/null || log "OHIF not installed: the viewer tests will be skipped"
else
  log "npm not found: OHIF not installed, the viewer tests will be skipped"
fi
log "ready: $ROOT/.venv/bin/labelqa"
