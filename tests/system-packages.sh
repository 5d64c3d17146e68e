#!/bin/sh
# The system packages the test suite needs, installed from Debian's packages when missing:
# PostgreSQL's server (the postgres backend's tests start their own) and systemd-tmpfiles
# (the cleaner the lock-location cases run against a held lock file) and faketime (the
# fault cases step the wall clock back with it).
set -eu
missing=""
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$missing postgresql"
command -v systemd-tmpfiles >/dev/null 2>&1 || missing="$missing systemd-standalone-tmpfiles"
command -v faketime >/dev/null 2>&1 || missing="$missing faketime"
if [ -n "$missing" ]; then
    apt-get update
    # shellcheck disable=SC2086 # one word a package
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
fi
