"""A real single-node Kafka broker for tests, driven through deploy/kafka/kafka.sh."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
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
        done = subprocess.run(
            ["bash", str(SCRIPT), command],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode == EXIT_UNAVAILABLE:
            raise KafkaUnavailable(done.stderr.strip())
        if check and done.returncode != 0:
            raise KafkaBrokerError(f"kafka.sh {command} exited {done.returncode}:\n{done.stderr.strip()}")
        return done

    def _pid(self) -> int | None:
        try:
            return int((self.data_dir / "kafka.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None


def create_topic(bootstrap: str, name: str, partitions: int = 4) -> None:
    """Create a topic on any broker (also an external one), replication factor 1."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="safemon-tests")
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    log.info("kafka.topic.created", topic=name, partitions=partitions)


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
