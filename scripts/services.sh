#!/usr/bin/env bash
# Local team services for the scale-out setup, all on 127.0.0.1 with free ports:
#   PostgreSQL 15 (MLflow backend store + Optuna storage), a moto S3 server with the bucket, and an
#   MLflow tracking server (PostgreSQL backend, proxied artifacts on S3, one worker).
#
# usage: scripts/services.sh start|stop|status|purge [DIR] [--install]
#   start   start what is not running, wait until each answers, write DIR/env.sh (source it)
#   stop    stop all three (data in DIR/pg stays; moto keeps objects in memory only)
#   status  print what runs where; exit 0 if all three run, 3 otherwise
#   purge   stop, then delete everything this script created under DIR
#   DIR     state directory (default: .services in the current directory)
#   --install  install what is missing: PostgreSQL (apt-get), moto[server]/psycopg2-binary/mlflow (pip)
#
# Environment: REVELIO_PYTHON (python with mlflow, moto, boto3, psycopg2; default: the repo's
# .venv/bin/python, else python3), REVELIO_PG_BINDIR, REVELIO_PG_USER (the user PostgreSQL runs as when
# this script runs as root; default postgres), REVELIO_PG_PORT / REVELIO_S3_PORT / REVELIO_MLFLOW_PORT
# (fixed ports instead of free ones), REVELIO_S3_BUCKET (default revelio), REVELIO_SERVICES_TIMEOUT
# (seconds each service may take to become ready; default 180).
set -euo pipefail

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

CMD="${1:-}"
[ -n "$CMD" ] || { usage >&2; exit 2; }
shift
DIR=""
INSTALL=0
for arg in "$@"; do
  case "$arg" in
    --install) INSTALL=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "services.sh: unknown option $arg" >&2; exit 2 ;;
    *) [ -z "$DIR" ] || { echo "services.sh: only one DIR, got $DIR and $arg" >&2; exit 2; }; DIR="$arg" ;;
  esac
done
case "$CMD" in start|stop|status|purge) ;; -h|--help) usage; exit 0 ;;
  *) echo "services.sh: unknown command $CMD (start|stop|status|purge)" >&2; exit 2 ;; esac

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${DIR:-.services}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
LOGS="$DIR/logs"
RUN="$DIR/run"
mkdir -p "$LOGS" "$RUN"
TIMEOUT="${REVELIO_SERVICES_TIMEOUT:-180}"
BUCKET="${REVELIO_S3_BUCKET:-revelio}"
PG_USER_OS="${REVELIO_PG_USER:-postgres}"
DB_USER=revelio

say() { echo "services: $*" >&2; }
die() { echo "services: error: $*" >&2; exit 1; }

# ------------------------------------------------------------------ tools
if [ -n "${REVELIO_PYTHON:-}" ]; then PY="$REVELIO_PYTHON"
elif [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"
else PY="$(command -v python3 || true)"; fi
[ -n "$PY" ] && [ -x "$PY" ] || die "no python found; set REVELIO_PYTHON to a python with mlflow, moto and boto3"
PYBIN="$(dirname "$PY")"

tool() {  # the console script next to $PY (a virtualenv's bin), else the one on PATH
  if [ -x "$PYBIN/$1" ]; then echo "$PYBIN/$1"; else command -v "$1" || true; fi
}

pg_bindir() {
  if [ -n "${REVELIO_PG_BINDIR:-}" ]; then echo "$REVELIO_PG_BINDIR"; return; fi
  local d
  # Debian keeps the server binaries out of PATH, one directory per major version; take the newest
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return; fi
  d="$(command -v initdb || true)"
  [ -n "$d" ] && dirname "$(readlink -f "$d")"
  return 0
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  die "need root or sudo to run: $*"; fi; }

install_missing() {
  if [ -z "$(pg_bindir)" ]; then
    say "installing PostgreSQL (apt-get install postgresql)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    # the package may start its own cluster on 5432; ours runs on a free port, so that one is not needed
    as_root service postgresql stop >/dev/null 2>&1 || true
  fi
  if [ "$(id -u)" = 0 ] && ! id -u "$PG_USER_OS" >/dev/null 2>&1; then
    say "creating system user $PG_USER_OS (PostgreSQL refuses to run as root)"
    useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "$PG_USER_OS"
  fi
  if ! "$PY" -c "import mlflow, moto, boto3, psycopg2, flask_cors" >/dev/null 2>&1; then
    say "installing python packages into $PY"
    "$PY" -m pip install -q "moto[server]>=5" psycopg2-binary boto3 "mlflow>=3.17,<3.19" \
      || die "pip could not install into $PY; set REVELIO_PYTHON to a virtualenv's python (e.g. after" \
             "python3 -m venv .venv && .venv/bin/pip install -e '.[test]')"
  fi
}

check_tools() {
  local missing=()
  [ -n "$(pg_bindir)" ] || missing+=("PostgreSQL server (Debian: apt-get install postgresql)")
  "$PY" -c "import mlflow, boto3, psycopg2" >/dev/null 2>&1 || missing+=("python packages mlflow boto3 psycopg2-binary in $PY")
  [ -n "$(tool moto_server)" ] || missing+=("moto_server (pip install 'moto[server]')")
  [ -n "$(tool mlflow)" ] || missing+=("the mlflow command")
  if [ "$(id -u)" = 0 ] && ! id -u "$PG_USER_OS" >/dev/null 2>&1; then
    missing+=("a system user $PG_USER_OS to run PostgreSQL as (it refuses to run as root)")
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    printf 'services: missing: %s\n' "${missing[@]}" >&2
    die "run again with --install to install what is missing"
  fi
}

# ------------------------------------------------------------------ small helpers
port_free() {
  "$PY" - "$1" <<'EOF'
import socket, sys
s = socket.socket()
# as the servers do: connections of the last run in TIME_WAIT must not make the port look taken
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
}

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# PORT_VAR FIXED_ENV: a fixed port from the environment, else the last one used if still free, else a new one
choose_port() {
  local var="$1" fixed="$2" old="${!1:-}"
  if [ -n "$fixed" ]; then printf -v "$var" '%s' "$fixed"
  elif [ -n "$old" ] && port_free "$old"; then :
  else printf -v "$var" '%s' "$(free_port)"; fi
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

log_tail() { [ -f "$1" ] && { echo "---- last lines of $1" >&2; tail -n 25 "$1" >&2; }; return 0; }

# URL EXPECTED_SUBSTRING PIDFILE LOG NAME: poll until the URL answers, bounded by $TIMEOUT
wait_http() {
  local url="$1" expect="$2" pidfile="$3" log="$4" name="$5" t0=$SECONDS
  while :; do
    if "$PY" - "$url" "$expect" <<'EOF'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
        sys.exit(0 if sys.argv[2].encode() in r.read() else 1)
except Exception:
    sys.exit(1)
EOF
    then say "$name ready at $url ($((SECONDS - t0)) s)"; return 0; fi
    if ! pid_alive "$pidfile"; then log_tail "$log"; FAILED="$name exited during start-up (log: $log)"; return 1; fi
    if [ $((SECONDS - t0)) -ge "$TIMEOUT" ]; then
      log_tail "$log"; FAILED="$name did not answer at $url within $TIMEOUT s (log: $log)"; return 1
    fi
    sleep 1
  done
}

# PIDFILE NAME: TERM the process group (mlflow forks workers), KILL after 20 s
stop_pid() {
  local pidfile="$1" name="$2" pid i
  if ! pid_alive "$pidfile"; then rm -f "$pidfile"; return 0; fi
  pid="$(cat "$pidfile")"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name did not stop in 20 s; killing it"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  say "$name stopped"
}

load_state() {
  PG_PORT="" S3_PORT="" MLFLOW_PORT="" PG_PASSWORD=""
  # shellcheck disable=SC1091
  [ -f "$DIR/ports.env" ] && . "$DIR/ports.env"
  # shellcheck disable=SC1091
  [ -f "$DIR/secrets.env" ] && . "$DIR/secrets.env"
  return 0
}

# ------------------------------------------------------------------ PostgreSQL
as_pg() {  # PostgreSQL refuses to run as root: run its commands as an unprivileged user then
  if [ "$(id -u)" = 0 ]; then runuser -u "$PG_USER_OS" -- "$@"; else "$@"; fi
}

# DIR/pg holds the cluster. As root it must belong to the PostgreSQL user and every directory above
# it must be traversable by that user; when DIR sits in a private directory (e.g. pytest's 0700
# temp dirs) the cluster goes to a fresh /tmp directory instead and DIR/pg links to it.
pg_base() {
  local base="$DIR/pg"
  if [ -L "$base" ] && [ ! -d "$base" ]; then rm -f "$base"; fi
  if [ "$(id -u)" != 0 ]; then mkdir -p "$base"; echo "$base"; return; fi
  if [ -d "$base" ]; then readlink -f "$base"; return; fi
  mkdir -p "$base"
  chown "$PG_USER_OS:" "$base"
  if runuser -u "$PG_USER_OS" -- test -w "$base"; then echo "$base"; return; fi
  rmdir "$base"
  local tmp
  tmp="$(mktemp -d "${TMPDIR:-/tmp}/revelio-pg.XXXXXX")"
  chown "$PG_USER_OS:" "$tmp"
  ln -s "$tmp" "$base"
  echo "$tmp"
}

pg_running() {
  local bindir base
  bindir="$(pg_bindir)"
  [ -n "$bindir" ] && [ -e "$DIR/pg" ] || return 1
  base="$(readlink -f "$DIR/pg")"
  [ -f "$base/data/PG_VERSION" ] || return 1
  as_pg "$bindir/pg_ctl" -D "$base/data" status >/dev/null 2>&1
}

start_pg() {
  local bindir base data
  bindir="$(pg_bindir)"
  base="$(pg_base)"
  data="$base/data"
  if [ ! -f "$data/PG_VERSION" ]; then
    rm -rf "$data"
    PG_PASSWORD="$("$PY" -c 'import secrets; print(secrets.token_hex(16))')"
    local pw="$base/pwfile"
    (umask 077; echo "$PG_PASSWORD" > "$pw")
    [ "$(id -u)" != 0 ] || chown "$PG_USER_OS:" "$pw"
    say "initdb $data"
    as_pg "$bindir/initdb" -D "$data" -U "$DB_USER" --pwfile="$pw" -E UTF8 --no-locale \
      --auth-host=scram-sha-256 --auth-local=peer >"$LOGS/initdb.log" 2>&1 \
      || { rm -f "$pw"; log_tail "$LOGS/initdb.log"; die "initdb failed (log: $LOGS/initdb.log)"; }
    rm -f "$pw"
    # TCP on loopback only, password required; no unix socket, whose path length DIR could exceed
    cat >>"$data/postgresql.conf" <<EOF

# added by scripts/services.sh
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
EOF
    echo "PG_PASSWORD=$PG_PASSWORD" > "$DIR/secrets.env"
    chmod 600 "$DIR/secrets.env"
  fi
  [ -n "$PG_PASSWORD" ] || die "$DIR/secrets.env lacks the database password; run 'purge' and start again"
  if pg_running; then
    say "PostgreSQL already running (port $PG_PORT)"
  else
    choose_port PG_PORT "${REVELIO_PG_PORT:-}"
    local t0=$SECONDS
    as_pg "$bindir/pg_ctl" -D "$data" -l "$base/postgres.log" -o "-p $PG_PORT" -w -t "$TIMEOUT" start \
      >"$LOGS/pg_ctl.log" 2>&1 9>&- \
      || { log_tail "$base/postgres.log"; FAILED="PostgreSQL did not start (log: $base/postgres.log)"; return 1; }
    ln -sf "$base/postgres.log" "$LOGS/postgres.log"
    say "PostgreSQL ready at 127.0.0.1:$PG_PORT ($((SECONDS - t0)) s)"
  fi
  local db
  for db in mlflow optuna; do
    if [ -z "$(PGPASSWORD="$PG_PASSWORD" "$bindir/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -d postgres \
          -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]; then
      PGPASSWORD="$PG_PASSWORD" "$bindir/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" "$db" \
        || { FAILED="could not create the database $db"; return 1; }
    fi
  done
}

stop_pg() {
  local bindir
  bindir="$(pg_bindir)"
  if pg_running; then
    as_pg "$bindir/pg_ctl" -D "$(readlink -f "$DIR/pg")/data" -m fast -w -t 60 stop >/dev/null
    say "PostgreSQL stopped"
  fi
}

# ------------------------------------------------------------------ S3 (moto)
start_s3() {
  if pid_alive "$RUN/s3.pid"; then
    say "moto S3 already running (port $S3_PORT)"
  else
    choose_port S3_PORT "${REVELIO_S3_PORT:-}"
    # setsid: its own process group, so stop can signal the server and anything it forks
    setsid "$(tool moto_server)" -H 127.0.0.1 -p "$S3_PORT" >"$LOGS/s3.log" 2>&1 </dev/null 9>&- &
    echo $! > "$RUN/s3.pid"
    wait_http "http://127.0.0.1:$S3_PORT/" "ListAllMyBucketsResult" "$RUN/s3.pid" "$LOGS/s3.log" "moto S3" || return 1
  fi
  # moto keeps buckets in memory: after every (re)start the bucket has to be created again
  if AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 \
  "$PY" - "http://127.0.0.1:$S3_PORT" "$BUCKET" <<'EOF'
import sys
import boto3
from botocore.exceptions import ClientError
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
try:
    s3.head_bucket(Bucket=sys.argv[2])
except ClientError:
    s3.create_bucket(Bucket=sys.argv[2])
EOF
  then :; else FAILED="could not create the bucket $BUCKET"; return 1; fi
}

# ------------------------------------------------------------------ MLflow
start_mlflow() {
  if pid_alive "$RUN/mlflow.pid"; then
    say "MLflow server already running (port $MLFLOW_PORT)"
    return 0
  fi
  choose_port MLFLOW_PORT "${REVELIO_MLFLOW_PORT:-}"
  # Only the server holds S3 credentials: clients upload artifacts through it (proxied artifacts).
  # MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: the GenAI job runner (judges, trace roll-ups) is unused
  # here and would start seven extra ~280 MB worker processes.
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_S3_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
  AWS_DEFAULT_REGION=us-east-1 \
  setsid "$(tool mlflow)" server \
    --backend-store-uri "postgresql+psycopg2://$DB_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/mlflow" \
    --artifacts-destination "s3://$BUCKET/mlartifacts" \
    --workers 1 --host 127.0.0.1 --port "$MLFLOW_PORT" >"$LOGS/mlflow.log" 2>&1 </dev/null 9>&- &
  echo $! > "$RUN/mlflow.pid"
  wait_http "http://127.0.0.1:$MLFLOW_PORT/health" "OK" "$RUN/mlflow.pid" "$LOGS/mlflow.log" "MLflow server"
}

write_env() {
  cat > "$DIR/ports.env" <<EOF
PG_PORT=$PG_PORT
S3_PORT=$S3_PORT
MLFLOW_PORT=$MLFLOW_PORT
EOF
  local pg="postgresql+psycopg2://$DB_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT"
  (umask 077; cat > "$DIR/env.sh.tmp" <<EOF
# written by scripts/services.sh; use it with: . $DIR/env.sh
export MLFLOW_TRACKING_URI='http://127.0.0.1:$MLFLOW_PORT'
export MLFLOW_S3_ENDPOINT_URL='http://127.0.0.1:$S3_PORT'
export AWS_ACCESS_KEY_ID='testing'
export AWS_SECRET_ACCESS_KEY='testing'
export AWS_DEFAULT_REGION='us-east-1'
export REVELIO_S3_BUCKET='$BUCKET'
export REVELIO_OPTUNA_STORAGE='$pg/optuna'
export REVELIO_MLFLOW_BACKEND_STORE_URI='$pg/mlflow'
export REVELIO_SERVICES_DIR='$DIR'
EOF
  )
  mv "$DIR/env.sh.tmp" "$DIR/env.sh"  # whole file or none: readers may be polling for it
}

# ------------------------------------------------------------------ commands
do_start() {
  [ "$INSTALL" = 0 ] || install_missing
  check_tools
  load_state
  FAILED=""
  local t0=$SECONDS
  if start_pg && start_s3 && start_mlflow; then
    write_env
    say "all services ready in $((SECONDS - t0)) s; environment: . $DIR/env.sh"
    return 0
  fi
  echo "services: error: ${FAILED:-start-up failed}; stopping what was started" >&2
  do_stop
  return 1
}

do_stop() {
  stop_pid "$RUN/mlflow.pid" "MLflow server"
  stop_pid "$RUN/s3.pid" "moto S3"
  stop_pg
  rm -f "$DIR/env.sh"  # a stale env file would point clients at dead ports
}

do_status() {
  load_state
  local ok=0
  if pg_running; then echo "postgres  running  127.0.0.1:$PG_PORT"; else echo "postgres  stopped"; ok=3; fi
  if pid_alive "$RUN/s3.pid"; then echo "s3        running  http://127.0.0.1:$S3_PORT (bucket $BUCKET)"
  else echo "s3        stopped"; ok=3; fi
  if pid_alive "$RUN/mlflow.pid"; then echo "mlflow    running  http://127.0.0.1:$MLFLOW_PORT"
  else echo "mlflow    stopped"; ok=3; fi
  [ ! -f "$DIR/env.sh" ] || echo "env file  $DIR/env.sh"
  return $ok
}

do_purge() {
  do_stop
  if [ -L "$DIR/pg" ]; then rm -rf "$(readlink -f "$DIR/pg")"; rm -f "$DIR/pg"; else rm -rf "$DIR/pg"; fi
  rm -rf "$LOGS" "$RUN" "$DIR/ports.env" "$DIR/secrets.env" "$DIR/env.sh" "$DIR/.lock"
  rmdir "$DIR" 2>/dev/null || true
  say "purged $DIR"
}

# one command at a time per DIR: two concurrent starts would race for ports and the cluster
# (every server started below gets `9>&-` so that it does not inherit, and hold, this lock)
exec 9>"$DIR/.lock"
flock -w "$TIMEOUT" 9 || die "another services.sh command holds $DIR/.lock"

case "$CMD" in
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
  purge) do_purge ;;
esac
