#!/usr/bin/env bash
# Runs PgBouncer's own test suite (tag 1.25.2) against pgbouncer-cluster.
# The suite stays outside the repository: it is unpacked from its tarball into
# $PGB_SUITE_DIR (default /work/pgb-suite), with this directory's `pgbouncer`
# wrapper where the suite looks for PgBouncer's binary. Extra arguments go to
# pytest, e.g. `run.sh test/test_admin.py -k pause`.
#
# Needs Debian's python3-pytest, -pytest-asyncio, -pytest-xdist,
# -pytest-timeout, -psycopg and -filelock, and PostgreSQL's server binaries.
# PostgreSQL refuses root, so as root the suite runs as the `postgres` user.
set -euo pipefail

here=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
tarball=${PGB_SUITE_TARBALL:-/work/shared/reference/pgbouncer-1.25.2-test.tar.gz}
dir=${PGB_SUITE_DIR:-/work/pgb-suite}
suite="$dir/pgbouncer-1.25.2"
pgbin=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}

if [ ! -d "$suite/test" ]; then
  mkdir -p "$dir"
  tar -xzf "$tarball" -C "$dir"
fi
# What PgBouncer's configure would have written: the suite reads these two.
printf 'ldap_support = no\ntls_support = yes\n' >"$suite/config.mak"
ln -sf "$here/pgbouncer" "$suite/pgbouncer"

cd "$suite"
# Every pooler the wrapper starts is noted here; those still running at the end are stopped.
pids="$dir/poolers.pid"
: >"$pids"
# A basetemp of its own: others running pytest as the same user keep theirs.
cmd=(env "PATH=$pgbin:$PATH" "PGBC_SUITE_PIDS=$pids" /usr/bin/python3 -m pytest -p no:cacheprovider
  --basetemp="$dir/tmp" -n "${PGB_SUITE_JOBS:-2}" "$@")
status=0
if [ "$(id -u)" = 0 ]; then
  chown -R postgres: "$dir"
  runuser -u postgres -- "${cmd[@]}" || status=$?
else
  "${cmd[@]}" || status=$?
fi
bin="$(cd "$here/../.." && pwd)/packages/coordinator/bin/pgbouncer-cluster.js"
while read -r pid; do
  # Only a process that is still this wrapper's pooler (a pid may have been reused).
  [ -r "/proc/$pid/cmdline" ] || continue
  if tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$bin"; then kill -QUIT "$pid" 2>/dev/null || true; fi
done <"$pids"
exit "$status"
