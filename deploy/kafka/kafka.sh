#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft) for dev, tests and CI, with jars fetched by Maven.
#
#   kafka.sh fetch | start | stop | status
#
# Environment (all optional):
#   SAFEMON_KAFKA_VERSION          Kafka release to fetch        (default 4.4.0)
#   SAFEMON_KAFKA_CACHE            where the jars go             (~/.cache/safemon/kafka/<version>)
#   SAFEMON_KAFKA_DIR              config, data, log and pid     (./.safemon/kafka)
#   SAFEMON_KAFKA_PORT             client (PLAINTEXT) port       (9092)
#   SAFEMON_KAFKA_CONTROLLER_PORT  KRaft controller port         (client port + 1)
#   SAFEMON_KAFKA_HEAP             JVM max heap                  (512m)
#   SAFEMON_KAFKA_START_TIMEOUT    seconds to wait for readiness (120)
#   SAFEMON_KAFKA_STOP_TIMEOUT     seconds before SIGKILL        (30)
#
# Exit codes: 0 ok, 1 failure, 3 not running (status), 69 java/mvn missing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERSION="${SAFEMON_KAFKA_VERSION:-4.4.0}"
CACHE="${SAFEMON_KAFKA_CACHE:-$HOME/.cache/safemon/kafka/$VERSION}"
DIR="${SAFEMON_KAFKA_DIR:-./.safemon/kafka}"
PORT="${SAFEMON_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${SAFEMON_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
HEAP="${SAFEMON_KAFKA_HEAP:-512m}"
START_TIMEOUT="${SAFEMON_KAFKA_START_TIMEOUT:-120}"
STOP_TIMEOUT="${SAFEMON_KAFKA_STOP_TIMEOUT:-30}"

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"  # absolute, so the pid check and log paths do not depend on cwd
PID_FILE="$DIR/kafka.pid"
LOG_FILE="$DIR/kafka.log"
CONFIG="$DIR/server.properties"
LOG_DIR="$DIR/data"
MARKER="$CACHE/.complete"

log() { echo "kafka.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
unavailable() { log "error: $*"; exit 69; }

require_java() {
    command -v java >/dev/null || unavailable "java not found; install a JDK 17+ (e.g. apt-get install openjdk-17-jdk-headless)"
    local major
    major="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)"
    [[ -n "$major" && "$major" -ge 17 ]] || unavailable "Kafka $VERSION needs Java 17+, found: $(java -version 2>&1 | head -n1)"
}

fetch() {
    require_java
    [[ -f "$MARKER" ]] && return 0
    command -v mvn >/dev/null || unavailable "mvn not found; it fetches the Kafka jars (e.g. apt-get install maven)"
    command -v javac >/dev/null || unavailable "javac not found; a JDK (not a JRE) 17+ is needed"
    mkdir -p "$CACHE"
    # Parallel test sessions may fetch at once; the lock makes the second one wait.
    # (flock is util-linux; without it, e.g. on macOS, concurrent first fetches may clash.)
    exec 9>"$CACHE/.lock"
    if command -v flock >/dev/null; then flock 9; fi
    if [[ ! -f "$MARKER" ]]; then
        log "fetching Apache Kafka $VERSION into $CACHE"
        local started=$SECONDS
        rm -rf "$CACHE/lib" "$CACHE/classes"
        # Output goes to a file and is shown only on failure: Maven 3.8 with -q still
        # prints stray ANSI reset codes, and a successful fetch has nothing to say.
        if ! mvn -B -q -f "$HERE/pom.xml" -Dkafka.version="$VERSION" -Dkafka.lib.dir="$CACHE/lib" \
            dependency:copy-dependencies >"$CACHE/fetch.log" 2>&1; then
            cat "$CACHE/fetch.log" >&2
            die "Maven could not fetch Kafka $VERSION; see $CACHE/fetch.log"
        fi
        javac -d "$CACHE/classes" -cp "$CACHE/lib/*" "$HERE/BrokerReady.java" || die "could not compile BrokerReady.java"
        touch "$MARKER"
        log "fetched in $((SECONDS - started)) s"
    fi
    exec 9>&-  # the broker started next must not inherit the lock file
}

# The pid file alone can outlive the broker (crash, reboot, SIGKILL), and the pid may be
# reused; only trust it when that process is a Kafka broker started from this data dir.
running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    [[ -n "$pid" ]] && alive "$pid" || return 1
    ps -ww -o args= -p "$pid" 2>/dev/null | grep -qF -- "kafka.Kafka $CONFIG" || return 1
    echo "$pid"
}

# kill -0 also succeeds for a zombie, which stays around when PID 1 does not reap orphans
# (some containers); a zombie broker is a stopped broker.
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    [[ "$(ps -o stat= -p "$1" 2>/dev/null)" != Z* ]]
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

broker_alive_or_die() {  # pid [probe pid]
    alive "$1" && return 0
    if [[ -n "${2:-}" ]]; then kill "$2" 2>/dev/null || true; fi
    rm -f "$PID_FILE"
    die "broker exited during start-up; last lines of $LOG_FILE:"$'\n'"$(tail -n 20 "$LOG_FILE")"
}

timed_out() {
    stop >/dev/null 2>&1 || true
    die "broker not ready after ${START_TIMEOUT}s; see $LOG_FILE"
}

start() {
    if pid="$(running_pid)"; then
        log "already running (pid $pid, 127.0.0.1:$PORT, log $LOG_FILE)"
        return 0
    fi
    fetch
    rm -f "$PID_FILE"
    local p
    for p in "$PORT" "$CONTROLLER_PORT"; do
        port_open "$p" && die "port $p is already in use by another process; set SAFEMON_KAFKA_PORT / SAFEMON_KAFKA_CONTROLLER_PORT"
    done
    mkdir -p "$LOG_DIR"
    sed -e "s|@PORT@|$PORT|g" -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" -e "s|@LOG_DIR@|$LOG_DIR|g" \
        "$HERE/server.properties.template" >"$CONFIG"

    local java_opts=(-cp "$CACHE/lib/*" "-Dlog4j2.configurationFile=$HERE/log4j2.properties")
    if [[ ! -f "$LOG_DIR/meta.properties" ]]; then
        # A KRaft log dir must be formatted once with a cluster id (22 chars of base64url).
        local cluster_id
        cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=' | sed 's/^-/A/')"
        java -XX:TieredStopAtLevel=1 "${java_opts[@]}" kafka.tools.StorageTool format --cluster-id "$cluster_id" \
            --config "$CONFIG" >>"$LOG_FILE" 2>&1 || die "formatting $LOG_DIR failed; see $LOG_FILE"
    fi

    local started=$SECONDS
    echo "=== start $(date -u +%FT%TZ) port $PORT" >>"$LOG_FILE"
    nohup java "-Xms128m" "-Xmx$HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
        "${java_opts[@]}" kafka.Kafka "$CONFIG" >>"$LOG_FILE" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$PID_FILE"

    # Ready means the port is open AND the broker answers a metadata request (it listens
    # before it has caught up with the metadata log). The port is polled first so the probe
    # JVM does not compete for CPU with the broker's own start-up. Both loops also watch the
    # broker, to fail at once when it dies instead of at the timeout.
    local deadline=$((SECONDS + START_TIMEOUT))
    until port_open "$PORT"; do
        broker_alive_or_die "$pid"
        ((SECONDS < deadline)) || timed_out
        sleep 0.2
    done
    java -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$CACHE/lib/*:$CACHE/classes" \
        -Dorg.apache.logging.log4j.level=OFF \
        BrokerReady "127.0.0.1:$PORT" "$((deadline > SECONDS ? deadline - SECONDS : 1))" 2>>"$LOG_FILE" &
    local probe=$!
    while kill -0 "$probe" 2>/dev/null; do
        broker_alive_or_die "$pid" "$probe"
        sleep 0.1
    done
    wait "$probe" || timed_out
    log "ready at 127.0.0.1:$PORT in $((SECONDS - started)) s (pid $pid, log $LOG_FILE)"
}

stop() {
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$PID_FILE"
        log "not running"
        return 0
    fi
    kill -TERM "$pid"
    local waited=0
    while alive "$pid" && ((waited < STOP_TIMEOUT * 5)); do
        sleep 0.2
        waited=$((waited + 1))
    done
    if alive "$pid"; then
        log "broker did not stop within ${STOP_TIMEOUT}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while alive "$pid"; do sleep 0.1; done
    fi
    rm -f "$PID_FILE"
    log "stopped (pid $pid)"
}

status() {
    local pid
    if pid="$(running_pid)"; then
        echo "running (pid $pid, 127.0.0.1:$PORT, data $DIR)"
    else
        echo "not running (data $DIR)"
        return 3
    fi
}

case "${1:-}" in
    fetch) fetch ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 fetch|start|stop|status" >&2; exit 2 ;;
esac
