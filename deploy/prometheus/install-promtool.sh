#!/usr/bin/env bash
# Prints the path of a promtool, putting Debian's at DIR/promtool first if needed;
# Debian's prometheus server goes beside it, at DIR/prometheus (the alerts are tried
# in a real Prometheus by tests/test_alerts_live.py).
# Usage: deploy/prometheus/install-promtool.sh DIR
#
# $PROMTOOL, when set, is used as it is. Otherwise the `prometheus` package
# (2.42 on Debian 12) is downloaded with apt-get and only promtool is extracted
# from it with dpkg-deb: nothing is installed on the system. Any failure is an
# error, never a skip: the checks that need promtool must run.
set -euo pipefail
dir=${1:?usage: install-promtool.sh DIR}

fail() {
    echo "install-promtool: $*" >&2
    echo "install-promtool: promtool is required (Debian: apt-get download prometheus; elsewhere set PROMTOOL=/path/to/promtool)" >&2
    exit 1
}

if [ -n "${PROMTOOL:-}" ]; then
    "$PROMTOOL" --version >/dev/null 2>&1 || fail "PROMTOOL=$PROMTOOL does not run"
    echo "$PROMTOOL"
    exit 0
fi
if [ -x "$dir/promtool" ] && [ -x "$dir/prometheus" ] && "$dir/promtool" --version >/dev/null 2>&1; then
    echo "$dir/promtool"
    exit 0
fi

command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || fail "apt-get and dpkg-deb not found"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# apt's downloader runs as _apt when it can write there (otherwise it warns).
if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$work"; fi
download() { (cd "$work" && apt-get download -q prometheus) >&2; }
if ! download; then
    echo "install-promtool: apt-get download failed; updating the package lists and trying again" >&2
    apt-get update -q >&2 || fail "apt-get update failed"
    download || fail "apt-get download prometheus failed"
fi
dpkg-deb --fsys-tarfile "$work"/prometheus_*.deb | tar -x -C "$work" ./usr/bin/promtool ./usr/bin/prometheus \
    || fail "no usr/bin/promtool or usr/bin/prometheus in the prometheus package"
mkdir -p "$dir"
install -m 0755 "$work/usr/bin/promtool" "$dir/promtool"
install -m 0755 "$work/usr/bin/prometheus" "$dir/prometheus"
"$dir/promtool" --version 2>&1 | head -n 1 >&2
echo "$dir/promtool"
