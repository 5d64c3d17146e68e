#!/bin/sh
# The system packages the test suite needs, installed from Debian's packages when missing:
# PostgreSQL's and Redis's servers (the cluster backends' tests start their own), zsh (the
# completion tests type into a real one), systemd-tmpfiles (the cleaner the lock-location
# cases run against a held lock file), faketime (the fault cases step the wall clock back
# with it) and Prometheus's node exporter (the metrics cases scrape the files runalways
# writes with its textfile collector).
set -eu
missing=""
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$missing postgresql"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v zsh >/dev/null 2>&1 || missing="$missing zsh"
command -v systemd-tmpfiles >/dev/null 2>&1 || missing="$missing systemd-standalone-tmpfiles"
command -v faketime >/dev/null 2>&1 || missing="$missing faketime"
command -v prometheus-node-exporter >/dev/null 2>&1 || missing="$missing prometheus-node-exporter"
if [ -n "$missing" ]; then
    apt-get update
    # shellcheck disable=SC2086 # one word a package
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
fi
