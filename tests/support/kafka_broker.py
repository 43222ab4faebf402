"""Real Kafka for tests, driven through deploy/kafka/kafka.sh: one broker, or a 3-node cluster."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog
from kafka.admin import KafkaAdminClient, NewTopic

log = structlog.get_logger(__name__)

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "kafka.sh"
# kafka.sh exits with this (EX_UNAVAILABLE) when java or mvn is missing.
EXIT_UNAVAILABLE = 69
# A cold fetch downloads ~45 MB of jars; start-up itself takes a few seconds.
START_TIMEOUT_S = 600


class KafkaUnavailable(RuntimeError):
    """Java 17+ or Maven is missing, so no broker can be started on this machine."""


class KafkaBrokerError(RuntimeError):
    """kafka.sh failed for another reason; the message carries its output."""


def free_port() -> int:
    """Return a loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class KafkaBroker:
    """One broker process with its own data dir and ports, kept across restarts."""

    def __init__(self, data_dir: Path, port: int | None = None, controller_port: int | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "kafka.log"

    def start(self) -> KafkaBroker:
        started = time.monotonic()
        self._run("start", timeout=START_TIMEOUT_S)
        log.info("kafka.broker.started", bootstrap=self.bootstrap, seconds=round(time.monotonic() - started, 2))
        return self

    def stop(self) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after kafka.sh's timeout)."""
        self._run("stop", timeout=120)
        log.info("kafka.broker.stopped", bootstrap=self.bootstrap)

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would; the data dir keeps what was flushed to the OS."""
        pid = self._pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)
        log.info("kafka.broker.killed", bootstrap=self.bootstrap, pid=pid)

    def restart(self) -> None:
        """Stop and start again on the same data dir and ports."""
        self.stop()
        self.start()

    def is_running(self) -> bool:
        return self._run("status", check=False).returncode == 0

    def create_topic(self, name: str, partitions: int = 4) -> None:
        create_topic(self.bootstrap, name, partitions)

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "SAFEMON_KAFKA_DIR": str(self.data_dir),
            "SAFEMON_KAFKA_PORT": str(self.port),
            "SAFEMON_KAFKA_CONTROLLER_PORT": str(self.controller_port),
        }

    def _run(self, command: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        return kafka_sh([command], self._env(), timeout, check)

    def _pid(self) -> int | None:
        try:
            return int((self.data_dir / "kafka.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None


def create_topic(bootstrap: str, name: str, partitions: int = 4, replication_factor: int = 1) -> None:
    """Create a topic on any broker (also an external one)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="safemon-tests")
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=replication_factor)])
    finally:
        admin.close()
    log.info("kafka.topic.created", topic=name, partitions=partitions, replication_factor=replication_factor)


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections (32768 unless configured)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port_run(length: int) -> int:
    """The first of `length` consecutive loopback ports, below the ephemeral range, that were all free a moment ago.

    Below it because cluster nodes connect to peers that are not listening yet: an outgoing
    connection to an ephemeral-range port can be given that very port as its own and connect
    to itself (TCP self-connect), which then holds the port the peer was about to bind.
    """
    low = _ephemeral_low()
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(max(1_024, low - 12_000), low - length)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + length):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no run of {length} free ports found below {low}")


class KafkaCluster:
    """`kafka.sh --brokers N` on loopback: node I listens on base + 2(I-1), its controller on the next port."""

    def __init__(self, data_dir: Path, brokers: int = 3):
        self.data_dir = Path(data_dir)
        self.brokers = brokers
        self.port = free_port_run(2 * brokers)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.port + 2 * i}" for i in range(self.brokers))

    def start(self, node: int | None = None) -> float:
        """Start every node (or one) and wait until each lists the whole cluster; returns the seconds it took."""
        started = time.monotonic()
        self._run("start", node, timeout=START_TIMEOUT_S)
        return time.monotonic() - started

    def stop(self, node: int | None = None) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after kafka.sh's timeout) of every node, or one."""
        self._run("stop", node, timeout=120)

    def pid(self, node: int) -> int | None:
        try:
            return int((self.data_dir / f"node-{node}" / "kafka.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def signal(self, node: int, sig: signal.Signals) -> None:
        """Send a signal to one node's JVM: SIGKILL a crash, SIGSTOP / SIGCONT a stall."""
        pid = self.pid(node)
        assert pid is not None, f"node {node} is not running"
        os.kill(pid, sig)
        if sig == signal.SIGKILL:
            while _alive(pid):
                time.sleep(0.05)
        log.info("kafka.node.signalled", node=node, signal=sig.name, pid=pid)

    def rss_mb(self) -> list[float]:
        """Resident memory of each running node's JVM, in MiB (Linux /proc)."""
        out = []
        for node in range(1, self.brokers + 1):
            pid = self.pid(node)
            if pid is not None and _alive(pid):
                status = Path(f"/proc/{pid}/status").read_text()
                out.append(int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024)
        return out

    def partitions(self, topic: str) -> dict[int, tuple[int, list[int]]]:
        """Each partition's (leader node id, in-sync replica ids), as the cluster reports them now."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="safemon-tests-cluster")
        try:
            (described,) = admin.describe_topics([topic])
        finally:
            admin.close()
        return {p["partition_index"]: (p["leader_id"], sorted(p["isr_nodes"])) for p in described["partitions"]}

    def wait_in_sync(self, topics: list[str], timeout_s: float = 120) -> float:
        """Wait until every partition of `topics` has a leader and all replicas in sync; returns the seconds waited."""
        started = time.monotonic()
        while True:
            try:
                if all(leader >= 0 and len(isr) == self.brokers for t in topics for leader, isr in self.partitions(t).values()):
                    return time.monotonic() - started
            except Exception as exc:  # a node on its way back may answer with errors for a moment
                log.info("kafka.cluster.not_in_sync_yet", error=repr(exc))
            if time.monotonic() - started > timeout_s:
                raise AssertionError(f"{topics} not fully in sync within {timeout_s}s: {self.partitions(topics[0])}")
            time.sleep(0.5)

    def __enter__(self) -> KafkaCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, command: str, node: int | None, timeout: float) -> None:
        args = [command, "--brokers", str(self.brokers)] + (["--node", str(node)] if node else [])
        kafka_sh(args, {**os.environ, "SAFEMON_KAFKA_DIR": str(self.data_dir), "SAFEMON_KAFKA_PORT": str(self.port)}, timeout)


def kafka_sh(args: list[str], env: dict[str, str], timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run deploy/kafka/kafka.sh; KafkaUnavailable when java or mvn is missing, KafkaBrokerError on other failures."""
    done = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode == EXIT_UNAVAILABLE:
        raise KafkaUnavailable(done.stderr.strip())
    if check and done.returncode != 0:
        raise KafkaBrokerError(f"kafka.sh {' '.join(args)} exited {done.returncode}:\n{done.stderr.strip()}")
    return done


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (PID 1 may never reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:  # no /proc (macOS): a zombie would be reaped by launchd anyway
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@contextmanager
def bootstrap_for(work: Path) -> Iterator[str]:
    """The broker SAFEMON_KAFKA_BOOTSTRAP names, or one started from deploy/kafka under `work` for the duration (benches)."""
    named = os.environ.get("SAFEMON_KAFKA_BOOTSTRAP")
    if named:
        yield named
        return
    broker = KafkaBroker(work / "kafka").start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
