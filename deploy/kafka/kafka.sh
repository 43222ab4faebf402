#!/usr/bin/env bash
# Apache Kafka (KRaft) for dev, tests and CI, with jars fetched by Maven: one node, or a
# cluster of several on loopback.
#
#   kafka.sh fetch
#   kafka.sh start | stop | status | bootstrap [--brokers N] [--node I]
#
# --brokers N (or SAFEMON_KAFKA_BROKERS): N nodes, each broker and controller, node I in
# <dir>/node-I on client port PORT + 2(I-1) and the port after it for its controller. With 3+
# nodes, topics default to replication factor 3 and min.insync.replicas 2. --node I acts on one
# node of the cluster (a rolling restart: stop --node 2, start --node 2). `bootstrap` prints the
# client addresses. One node (the default) keeps <dir> itself and SAFEMON_KAFKA_CONTROLLER_PORT.
#
# Environment (all optional):
#   SAFEMON_KAFKA_VERSION          Kafka release to fetch        (default 4.4.0)
#   SAFEMON_KAFKA_CACHE            where the jars go             (~/.cache/safemon/kafka/<version>)
#   SAFEMON_KAFKA_DIR              config, data, log and pid     (./.safemon/kafka)
#   SAFEMON_KAFKA_BROKERS          nodes, as --brokers           (1)
#   SAFEMON_KAFKA_PORT             client (PLAINTEXT) port       (9092; a cluster's first node)
#   SAFEMON_KAFKA_CONTROLLER_PORT  KRaft controller port         (client port + 1; one node only)
#   SAFEMON_KAFKA_HEAP             JVM max heap, per node        (512m)
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
BROKERS="${SAFEMON_KAFKA_BROKERS:-1}"
ONLY_NODE=""
HEAP="${SAFEMON_KAFKA_HEAP:-512m}"
START_TIMEOUT="${SAFEMON_KAFKA_START_TIMEOUT:-120}"
STOP_TIMEOUT="${SAFEMON_KAFKA_STOP_TIMEOUT:-30}"

MARKER="$CACHE/.complete"
# The readiness probe is compiled per version of its source: a cache fetched before a change still gets it.
CLASSES="$CACHE/classes-$(cksum <"$HERE/BrokerReady.java" | cut -d' ' -f1)"

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
    [[ -f "$MARKER" && -d "$CLASSES" ]] && return 0
    command -v javac >/dev/null || unavailable "javac not found; a JDK (not a JRE) 17+ is needed"
    mkdir -p "$CACHE"
    # Parallel test sessions may fetch at once; the lock makes the second one wait.
    # (flock is util-linux; without it, e.g. on macOS, concurrent first fetches may clash.)
    exec 9>"$CACHE/.lock"
    if command -v flock >/dev/null; then flock 9; fi
    if [[ ! -f "$MARKER" ]]; then
        command -v mvn >/dev/null || unavailable "mvn not found; it fetches the Kafka jars (e.g. apt-get install maven)"
        log "fetching Apache Kafka $VERSION into $CACHE"
        local started=$SECONDS
        rm -rf "$CACHE/lib"
        # Output goes to a file and is shown only on failure: Maven 3.8 with -q still
        # prints stray ANSI reset codes, and a successful fetch has nothing to say.
        if ! mvn -B -q -f "$HERE/pom.xml" -Dkafka.version="$VERSION" -Dkafka.lib.dir="$CACHE/lib" \
            dependency:copy-dependencies >"$CACHE/fetch.log" 2>&1; then
            cat "$CACHE/fetch.log" >&2
            die "Maven could not fetch Kafka $VERSION; see $CACHE/fetch.log"
        fi
        touch "$MARKER"
        log "fetched in $((SECONDS - started)) s"
    fi
    if [[ ! -d "$CLASSES" ]]; then
        javac -d "$CLASSES.tmp" -cp "$CACHE/lib/*" "$HERE/BrokerReady.java" || die "could not compile BrokerReady.java"
        mv "$CLASSES.tmp" "$CLASSES"
    fi
    exec 9>&-  # the broker started next must not inherit the lock file
}


# ---- one node: its directory, ports and files ----

nodes() { if [[ -n "$ONLY_NODE" ]]; then echo "$ONLY_NODE"; else seq 1 "$BROKERS"; fi; }
node_port() { if ((BROKERS == 1)); then echo "$PORT"; else echo $((PORT + 2 * ($1 - 1))); fi; }
node_controller_port() {
    if ((BROKERS == 1)); then echo "${SAFEMON_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"; else echo $(($(node_port "$1") + 1)); fi
}
node_dir() { if ((BROKERS == 1)); then echo "$DIR"; else echo "$DIR/node-$1"; fi; }
pid_file() { echo "$(node_dir "$1")/kafka.pid"; }
log_file() { echo "$(node_dir "$1")/kafka.log"; }
config_file() { echo "$(node_dir "$1")/server.properties"; }
voters() {
    local i out=()
    for i in $(seq 1 "$BROKERS"); do out+=("$i@127.0.0.1:$(node_controller_port "$i")"); done
    local IFS=,
    echo "${out[*]}"
}
bootstrap() {
    local i out=()
    for i in $(seq 1 "$BROKERS"); do out+=("127.0.0.1:$(node_port "$i")"); done
    local IFS=,
    echo "${out[*]}"
}

# The pid file alone can outlive the broker (crash, reboot, SIGKILL), and the pid may be
# reused; only trust it when that process is a Kafka broker started from this data dir.
running_pid() {  # node
    local file pid
    file="$(pid_file "$1")"
    [[ -f "$file" ]] || return 1
    pid="$(cat "$file")"
    [[ -n "$pid" ]] && alive "$pid" || return 1
    ps -ww -o args= -p "$pid" 2>/dev/null | grep -qF -- "kafka.Kafka $(config_file "$1")" || return 1
    echo "$pid"
}

# kill -0 also succeeds for a zombie, which stays around when PID 1 does not reap orphans
# (some containers); a zombie broker is a stopped broker.
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    [[ "$(ps -o stat= -p "$1" 2>/dev/null)" != Z* ]]
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

broker_alive_or_die() {  # node pid [probe pid]
    alive "$2" && return 0
    if [[ -n "${3:-}" ]]; then kill "$3" 2>/dev/null || true; fi
    rm -f "$(pid_file "$1")"
    die "node $1 exited during start-up; last lines of $(log_file "$1"):"$'\n'"$(tail -n 20 "$(log_file "$1")")"
}

timed_out() {  # node
    stop >/dev/null 2>&1 || true
    die "node $1 not ready after ${START_TIMEOUT}s; see $(log_file "$1")"
}

# The cluster id every node is formatted with: one node makes its own; a cluster keeps one in <dir>.
cluster_id() {
    local file="$DIR/cluster.id"
    if [[ ! -s "$file" ]]; then
        head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=' | sed 's/^-/A/' >"$file"
    fi
    cat "$file"
}

launch() {  # node: write its config, format its log dir once, start the JVM; prints the pid
    local node="$1" dir log config data port controller replication=1 min_isr=1
    dir="$(node_dir "$node")" log="$(log_file "$node")" config="$(config_file "$node")" data="$(node_dir "$node")/data"
    port="$(node_port "$node")" controller="$(node_controller_port "$node")"
    if ((BROKERS >= 3)); then replication=3 min_isr=2; fi
    local p
    for p in "$port" "$controller"; do
        port_open "$p" && die "port $p is already in use by another process; set SAFEMON_KAFKA_PORT / SAFEMON_KAFKA_CONTROLLER_PORT"
    done
    mkdir -p "$data"
    sed -e "s|@NODE_ID@|$node|g" -e "s|@VOTERS@|$(voters)|g" -e "s|@PORT@|$port|g" -e "s|@CONTROLLER_PORT@|$controller|g" \
        -e "s|@LOG_DIR@|$data|g" -e "s|@REPLICATION@|$replication|g" -e "s|@MIN_ISR@|$min_isr|g" \
        "$HERE/server.properties.template" >"$config"

    local java_opts=(-cp "$CACHE/lib/*" "-Dlog4j2.configurationFile=$HERE/log4j2.properties")
    if [[ ! -f "$data/meta.properties" ]]; then
        # A KRaft log dir must be formatted once with a cluster id (22 chars of base64url).
        java -XX:TieredStopAtLevel=1 "${java_opts[@]}" kafka.tools.StorageTool format --cluster-id "$(cluster_id)" \
            --config "$config" >>"$log" 2>&1 || die "formatting $data failed; see $log"
    fi
    echo "=== start $(date -u +%FT%TZ) node $node port $port" >>"$log"
    nohup java "-Xms128m" "-Xmx$HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
        "${java_opts[@]}" kafka.Kafka "$config" >>"$log" 2>&1 </dev/null &
    echo $! >"$(pid_file "$node")"
}

# Ready means the port is open AND the node lists every broker of the cluster in a metadata
# answer (it listens before it has caught up with the metadata log, and a restarted node must
# re-register). The port is polled first so the probe JVM does not compete for CPU with the
# broker's own start-up. Both loops also watch the broker, to fail at once when it dies.
wait_ready() {  # node pid deadline
    local node="$1" pid="$2" deadline="$3" port
    port="$(node_port "$node")"
    until port_open "$port"; do
        broker_alive_or_die "$node" "$pid"
        ((SECONDS < deadline)) || timed_out "$node"
        sleep 0.2
    done
    java -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$CACHE/lib/*:$CLASSES" \
        -Dorg.apache.logging.log4j.level=OFF \
        BrokerReady "127.0.0.1:$port" "$((deadline > SECONDS ? deadline - SECONDS : 1))" "$BROKERS" 2>>"$(log_file "$node")" &
    local probe=$!
    while kill -0 "$probe" 2>/dev/null; do
        broker_alive_or_die "$node" "$pid" "$probe"
        sleep 0.1
    done
    wait "$probe" || timed_out "$node"
}

start() {
    fetch
    mkdir -p "$DIR"
    DIR="$(cd "$DIR" && pwd)"  # absolute, so the pid check and log paths do not depend on cwd
    local node pid started=$SECONDS deadline=$((SECONDS + START_TIMEOUT)) launched=()
    # Every node is launched before any is waited for: a KRaft quorum elects no leader, and
    # so no node becomes ready, until a majority of its voters runs.
    for node in $(nodes); do
        if pid="$(running_pid "$node")"; then
            log "node $node already running (pid $pid, 127.0.0.1:$(node_port "$node"), log $(log_file "$node"))"
            continue
        fi
        rm -f "$(pid_file "$node")"
        launch "$node"
        launched+=("$node")
    done
    for node in "${launched[@]}"; do
        wait_ready "$node" "$(cat "$(pid_file "$node")")" "$deadline"
        log "node $node ready at 127.0.0.1:$(node_port "$node") in $((SECONDS - started)) s (pid $(cat "$(pid_file "$node")"), log $(log_file "$node"))"
    done
}

stop() {
    [[ -d "$DIR" ]] || { log "not running"; return 0; }
    DIR="$(cd "$DIR" && pwd)"
    local node pid pids=()
    # Every node is asked at once: stopped one after another, the last ones would wait out their
    # controlled shutdown against a controller quorum that is already gone.
    for node in $(nodes); do
        if pid="$(running_pid "$node")"; then
            kill -TERM "$pid"
            pids+=("$node:$pid")
        else
            rm -f "$(pid_file "$node")"
            log "node $node not running"
        fi
    done
    local entry waited=0
    for entry in "${pids[@]}"; do
        node="${entry%%:*}" pid="${entry#*:}"
        while alive "$pid" && ((waited < STOP_TIMEOUT * 5)); do
            sleep 0.2
            waited=$((waited + 1))
        done
        if alive "$pid"; then
            log "node $node did not stop within ${STOP_TIMEOUT}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            while alive "$pid"; do sleep 0.1; done
        fi
        rm -f "$(pid_file "$node")"
        log "node $node stopped (pid $pid)"
    done
}

status() {
    [[ -d "$DIR" ]] && DIR="$(cd "$DIR" && pwd)"
    local node pid down=0
    for node in $(nodes); do
        if pid="$(running_pid "$node")"; then
            echo "node $node running (pid $pid, 127.0.0.1:$(node_port "$node"), data $(node_dir "$node"))"
        else
            echo "node $node not running (data $(node_dir "$node"))"
            down=1
        fi
    done
    ((down == 0)) || return 3
}

command="${1:-}"
shift || true
while (($#)); do
    case "$1" in
        --brokers) BROKERS="$2"; shift 2 ;;
        --node) ONLY_NODE="$2"; shift 2 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
done
[[ "$BROKERS" =~ ^[1-9][0-9]*$ ]] || { echo "--brokers / SAFEMON_KAFKA_BROKERS must be a positive integer, got '$BROKERS'" >&2; exit 2; }
if [[ -n "$ONLY_NODE" ]] && ! { [[ "$ONLY_NODE" =~ ^[0-9]+$ ]] && ((ONLY_NODE >= 1 && ONLY_NODE <= BROKERS)); }; then
    echo "--node must be between 1 and $BROKERS, got '$ONLY_NODE'" >&2
    exit 2
fi

case "$command" in
    fetch) fetch ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    bootstrap) bootstrap ;;
    *) echo "usage: $0 fetch | start|stop|status|bootstrap [--brokers N] [--node I]" >&2; exit 2 ;;
esac
