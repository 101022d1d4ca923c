#!/usr/bin/env bash
# Install what pneumotriage needs on a fresh Debian machine with Python 3.11:
#   scripts/setup.sh          the service: pinned Python packages in .venv
#   scripts/setup.sh --test   also DCMTK (storescu, echoscu, encoders), OpenJPH's HTJ2K
#                             encoder, Orthanc (the PACS the results go to), dicom3tools
#                             (dciodvfy), Chromium with its driver (the web tests) and the
#                             test tools
# Re-running is cheap: packages are reinstalled only when a lock file changes.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=false
[ "${1:-}" = "--test" ] && want_test=true

python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
  done
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  echo "setup: Python 3.11 is required (found: $("$python" --version 2>&1)); set PYTHON=..." >&2
  exit 1
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages the tests drive, by the command each provides.
declare -A debian=([storescu]=dcmtk [ojph_compress]=openjph-tools [Orthanc]=orthanc [dciodvfy]=dicom3tools
  [chromium]=chromium [chromedriver]=chromium-driver)
missing=()
if $want_test; then
  for tool in "${!debian[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${debian[$tool]}")
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}"
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
locks=(requirements.lock)
$want_test && locks+=(requirements-dev.lock)
stamp=".venv/.installed-$(cat "${locks[@]}" pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing pinned Python packages into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "${locks[@]/#/-r}"
  .venv/bin/python -m pip install -q --no-deps --config-settings editable_mode=compat -e .
  rm -f .venv/.installed-*
  touch "$stamp"
fi
