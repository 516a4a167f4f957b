#!/usr/bin/env bash
# Install everything the tests need (system peers included) and run the whole suite.
# This is the README's test command and exactly what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(kamailio kamailio-sqlite-modules kamailio-tls-modules kamailio-websocket-modules dnsmasq-base sip-tester sqlite3 tshark iproute2 gcc libc6-dev)
missing=()
for p in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing system packages: ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

python3 -m pip install -q -e '.[test]'
# The C RTP hot path (setup.py, optional there) must have built: tests/media/test_native.py fails if not.
export SIPSWARM_REQUIRE_NATIVE=1

echo "== ruff check"; ruff check src tests bench
echo "== ruff format --check"; ruff format --check src tests bench
echo "== mypy --strict src"; mypy --strict src
echo "== pytest"
set +e
python3 -m pytest "$@"
rc=$?
set -e
# pytest exit code 5 = no tests collected: a suite that ran nothing is a failure here.
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi
exit "$rc"
