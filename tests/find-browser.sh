#!/usr/bin/env bash
# Print the path of the Chromium the end-to-end tests should drive (an empty line means
# Playwright's own download). Tried in order: $CHROMIUM_PATH, a browser on PATH, Playwright's
# download, Debian's chromium-headless-shell through apt-get (as root). The headless shell first:
# it is what Playwright itself runs headless, and it costs half the CPU time of a whole Chromium
# in the suite. Usage: find-browser.sh PYTHON
set -uo pipefail
python=${1:-python3}

if [ -n "${CHROMIUM_PATH:-}" ]; then
  [ -x "$CHROMIUM_PATH" ] && { echo "$CHROMIUM_PATH"; exit 0; }
  echo "CHROMIUM_PATH=$CHROMIUM_PATH is not an executable file." >&2
  exit 1
fi

on_path() {
  command -v chromium-headless-shell || command -v chromium || command -v chromium-browser ||
    command -v google-chrome
}

on_path && exit 0

echo "No Chromium on PATH; trying Playwright's own download." >&2
"$python" -m playwright install chromium >&2 && { echo; exit 0; }

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Playwright's download failed; installing Debian's chromium-headless-shell with apt-get." >&2
  { apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell; } >&2
  on_path && exit 0
fi

cat >&2 <<'HELP'
No browser for the end-to-end tests. Install one, then run make test again:
  Debian or Ubuntu:  sudo apt-get install chromium-headless-shell (or chromium)
  elsewhere:         .venv/bin/python -m playwright install --with-deps chromium
or point CHROMIUM_PATH at a Chrome or Chromium. `make test-fast` runs the tests without a browser.
HELP
exit 1
