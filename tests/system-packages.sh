#!/bin/sh
# The system packages the test suite needs, installed from Debian's packages when missing:
# PostgreSQL's and Redis's servers (the cluster backends' tests start their own), zsh (the
# completion tests type into a real one), systemd-tmpfiles (the cleaner the lock-location
# cases run against a held lock file), faketime (the fault cases step the wall clock back
# with it), Prometheus's node exporter (the metrics cases scrape the files runalways
# writes with its textfile collector), and fuse3 with its headers and a C compiler (the doctor
# cases build and mount a FUSE file system of their own, tests/lockfs.c, and an ext4 one with
# mkfs.ext4 on a loop device).
set -eu
missing=""
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$missing postgresql"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v zsh >/dev/null 2>&1 || missing="$missing zsh"
command -v systemd-tmpfiles >/dev/null 2>&1 || missing="$missing systemd-standalone-tmpfiles"
command -v faketime >/dev/null 2>&1 || missing="$missing faketime"
command -v prometheus-node-exporter >/dev/null 2>&1 || missing="$missing prometheus-node-exporter"
command -v fusermount3 >/dev/null 2>&1 || missing="$missing fuse3"
dpkg -s libfuse3-dev >/dev/null 2>&1 || missing="$missing libfuse3-dev"
command -v gcc >/dev/null 2>&1 || missing="$missing gcc libc6-dev"
command -v pkg-config >/dev/null 2>&1 || missing="$missing pkg-config"
command -v mkfs.ext4 >/dev/null 2>&1 || missing="$missing e2fsprogs"
if [ -n "$missing" ]; then
    apt-get update
    # shellcheck disable=SC2086 # one word a package
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
fi
