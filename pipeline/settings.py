"""One settings object for every entry point, read from `SAFEMON_*` environment variables."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EmbeddingBackend = Literal["torch", "onnx", "onnx-int8"]
# int8 on the fused ONNX graph is the default because it clears the bar set for it: at least 2x torch
# fp32's speed, mean cosine to fp32 of 0.99 or more, refitted detector F1 within 0.01
# (`bench/embedding.py` measures all three).
DEFAULT_BACKEND: EmbeddingBackend = "onnx-int8"
# Texts per model batch. Small batches of length-sorted texts pad least, which beats the larger
# matrix products of bigger batches on the stream's texts (`bench/embedding.py`).
DEFAULT_EMBEDDING_BATCH = 16
DEFAULT_EMBEDDING_CACHE = 50_000  # distinct texts whose vectors an embedder keeps
DEFAULT_ONNX_DIR = Path("~/.cache/safemon/onnx")


class ConfigError(RuntimeError):
    """A setting is invalid; the message names the `SAFEMON_*` key."""


class Settings(BaseSettings):
    """safemon configuration. Every field maps to `SAFEMON_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="SAFEMON_", env_file=".env", extra="ignore", frozen=True)

    # Store
    clickhouse_dsn: str = Field(
        "chdb://./.safemon/clickhouse",
        description="chdb://PATH for the embedded engine, or clickhouse://user:pass@host:port / http(s)://... for a server",
    )
    clickhouse_database: str = Field("safemon", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Database holding safemon's tables")
    clickhouse_readonly_dsn: str | None = Field(
        None, description="DSN of a read-only ClickHouse user for `safemon sql` (default: the main DSN with readonly=2)"
    )
    clickhouse_cluster: str | None = Field(None, description="Cluster name: migrations run ON CLUSTER with Replicated engines")
    clickhouse_lock_timeout_s: float = Field(
        120.0, gt=0, description="How long to wait for an embedded store held by another process (its turn and then the engine, together)"
    )

    # Embeddings and detectors
    embedding_model: str = Field("", description="sentence-transformers model path or name; empty = the packaged all-MiniLM-L6-v2")
    embedding_batch_size: int = Field(
        DEFAULT_EMBEDDING_BATCH,
        ge=1,
        le=4096,
        description="Most texts per model batch (texts are sorted by length; ONNX batches are cut where padding would cost more than another call)",
    )
    embedding_backend: EmbeddingBackend = Field(
        DEFAULT_BACKEND,
        description="onnx-int8 (int8 weights on onnxruntime), onnx (fp32) or torch (sentence-transformers); the ONNX file is exported offline on first use",
    )
    embedding_max_seq_length: int | None = Field(
        None, ge=1, le=8192, description="Tokens read per text (longer texts are truncated); unset = the model's own (256 for all-MiniLM-L6-v2)"
    )
    embedding_cache_size: int = Field(DEFAULT_EMBEDDING_CACHE, ge=0, description="Distinct texts whose embeddings are kept in memory (LRU); 0 = no cache")
    embedding_onnx_dir: Path = Field(
        DEFAULT_ONNX_DIR, description="Cache folder of ONNX exports (safemon embeddings export), one subfolder per model and library versions"
    )

    detector_head: Path | None = Field(None, description="Fitted detector head artifact (safemon detectors fit); unset = the shipped heads")
    detector_defaults: Literal["shipped", "exemplars"] = Field(
        "shipped",
        description="What scores when SAFEMON_DETECTOR_HEAD / SAFEMON_DRIFT_ATTACK_HEAD are unset: the heads shipped in the package "
        "(docs/model_card.md), or the built-in exemplars (the fallback)",
    )
    calibration: Path | None = Field(
        None, description="Calibration overlay (safemon detectors calibrate, safemon drift calibrate): thresholds set on this deployment's traffic"
    )

    # Drift
    drift_methods: list[str] = Field(["mmd", "c2st", "attack_share"], description="Drift methods run by the hourly drift check")
    drift_alpha: float = Field(0.01, gt=0, lt=1, description="Drift alert level after correction across methods")
    drift_min_effect: float = Field(
        0.01, ge=0, description="Minimum effect size before a significant drift alerts (attack_share: the estimated rise in the share of attacks)"
    )
    drift_reference: Literal["same_hour_last_week", "previous_day", "model_version"] = Field(
        "same_hour_last_week", description="What the current window is compared with"
    )
    drift_reference_model_version: str | None = Field(None, description="Pinned reference model_version when drift_reference=model_version")
    drift_window_minutes: int = Field(60, ge=1, description="Length of the current drift window")
    drift_reference_weeks: int = Field(4, ge=1, description="same_hour_last_week: how many past weeks' same window make up the reference")
    drift_max_samples: int = Field(
        2000, ge=10, description="The current window is subsampled to at most this many embeddings, and so is the reference of mmd and c2st"
    )
    drift_reference_max_samples: int = Field(
        8000, ge=10, description="The reference is subsampled to at most this many embeddings; attack_share reads them all (more power at small attack shares)"
    )
    drift_min_samples: int = Field(100, ge=2, description="Smaller windows are reported as insufficient_data")
    drift_attack_head: Path | None = Field(
        None, description="Fitted attack head (safemon drift fit-head) for the targeted drift test; unset = the shipped head"
    )
    drift_permutations: int = Field(1000, ge=50, description="Permutations per permutation test (mmd, and attack_share with a head)")

    # Targets
    targets_file: Path = Field(Path("targets.yaml"), description="YAML file of targets (endpoint, model_version, schedule, suites)")
    target_api_key: SecretStr | None = Field(None, description="Bearer key for the model endpoint (never logged)")
    target_timeout_s: float = Field(60.0, gt=0, description="Timeout per chat-completions request")
    target_concurrency: int = Field(8, ge=1, le=1024, description="Requests in flight per target")
    target_rate_limit_per_s: float = Field(20.0, gt=0, description="Request starts per second per target")
    target_max_retries: int = Field(4, ge=0, le=20, description="Retries on 429, 5xx and transport errors")

    # Judge: a second opinion on the verdicts the heads are unsure of (pipeline/judge)
    judge_endpoint: str | None = Field(
        None, description="Base URL of an OpenAI-compatible judge (a guard model, or any chat model with the rubric); unset = the heads decide alone"
    )
    judge_model: str = Field("", description="Model name sent to the judge; defaults to judge_model_version")
    judge_model_version: str = Field("", description="Judge version label stored with each verdict it gives; defaults to judge_model")
    judge_format: Literal["llama_guard", "rubric"] = Field(
        "llama_guard", description="llama_guard: the model answers safe / unsafe + category codes; rubric: the packaged rubric prompt, strict grammar"
    )
    judge_api_key: SecretStr | None = Field(None, description="Bearer key for the judge endpoint (never logged)")
    judge_timeout_s: float = Field(30.0, gt=0, description="Timeout per judge request")
    judge_concurrency: int = Field(8, ge=1, le=1024, description="Judge requests in flight")
    judge_rate_limit_per_s: float = Field(20.0, gt=0, description="Judge request starts per second")
    judge_max_retries: int = Field(2, ge=0, le=20, description="Judge retries on 429, 5xx and transport errors")
    judge_budget_per_run: int = Field(500, ge=0, description="Most judge calls per probe run (uncertain verdicts first, then audits)")
    judge_budget_per_hour: int = Field(2000, ge=0, description="Most judge calls per hour per stream worker, paced (at most 10 seconds' worth at once)")
    judge_band: tuple[float, float] | None = Field(
        None, description='Attack scores in [low, high) go to the judge, e.g. "[0.35, 0.65]"; unset = a band from the shipped heads\' card'
    )
    judge_share: float = Field(0.3, gt=0, le=1, description="Without judge_band: the card's narrowest band holding this share of its held-out answers")
    judge_target_accuracy: float | None = Field(
        None, gt=0.5, lt=1, description="Without judge_band, instead of judge_share: the narrowest band outside which the card's accuracy reaches this"
    )
    judge_audit_share: float = Field(0.02, ge=0, le=1, description="Share of confident verdicts also sent to the judge to measure agreement")
    judge_max_unscored_rate: float = Field(
        0.1, ge=0, le=1, description="Above this share of unscored results (judge failures, budget) a probe run is unhealthy"
    )
    judge_agreement_window_hours: int = Field(
        24, ge=1, description="Agreement alert: the audits of this many hours before the check are compared with their baseline"
    )
    judge_agreement_baseline_days: int = Field(7, ge=1, description="Agreement alert: the baseline is this many days of audits, just before the window")
    judge_agreement_min_effect: float = Field(
        0.1, ge=0, le=1, description="Agreement alert: minimum fall in head-judge agreement (absolute) before a significant one alerts"
    )
    judge_agreement_min_audited: int = Field(
        30, ge=1, description="Agreement alert: a category with fewer audits in the window or in its baseline is not tested"
    )

    # Attacker: the model that writes adaptive probes' prompts (PAIR, Crescendo; pipeline/probes/adaptive.py)
    attacker_endpoint: str | None = Field(
        None, description="Base URL of an OpenAI-compatible attacker model; unset = suites with adaptive probes (attack:) cannot run"
    )
    attacker_model: str = Field("", description="Model name sent to the attacker; defaults to attacker_model_version")
    attacker_model_version: str = Field("", description="Attacker version label stored with each run it made prompts for; defaults to attacker_model")
    attacker_api_key: SecretStr | None = Field(None, description="Bearer key for the attacker endpoint (never logged)")
    attacker_timeout_s: float = Field(60.0, gt=0, description="Timeout per attacker request")
    attacker_concurrency: int = Field(4, ge=1, le=1024, description="Attacker requests in flight")
    attacker_rate_limit_per_s: float = Field(10.0, gt=0, description="Attacker request starts per second")
    attacker_max_retries: int = Field(2, ge=0, le=20, description="Attacker retries on 429, 5xx and transport errors")
    attacker_budget_per_run: int = Field(
        200, ge=0, description="Most attacker calls per probe run, allotted to the adaptive probes in suite order (a probe cut short is unscored)"
    )
    attacker_seed: int = Field(0, ge=0, description="Sent as the OpenAI `seed` of every attacker request, so a recorded attacker replays exactly")
    attacker_temperature: float = Field(1.0, ge=0, le=2, description="Sampling temperature of the attacker (varied proposals; the seed fixes them)")

    # Run health and regression rules
    max_error_rate: float = Field(0.1, ge=0, le=1, description="Above this share of errored probes a run is unhealthy")
    alert_alpha: float = Field(0.05, gt=0, lt=1, description="Family-wise (Holm) or FDR (BH) level across categories")
    alert_correction: Literal["holm", "fdr_bh"] = Field("holm", description="Multiple-testing correction across categories")
    alert_min_effect: float = Field(0.10, ge=0, le=1, description="Minimum rise in ASR (absolute) before a regression alerts")
    alert_cooldown_hours: float = Field(24.0, ge=0, description="A firing fingerprint is not re-posted within this window")

    # Kafka stream
    kafka_bootstrap: str = Field("localhost:9092", description="Kafka bootstrap servers, comma-separated")
    kafka_topic: str = Field("conversations.v1", description="Topic of conversation_sample.v1 messages")
    kafka_group: str = Field("safemon-stream", description="Consumer group of the stream workers")
    stream_batch_size: int = Field(1024, ge=1, le=100_000, description="Most samples per scored batch (fewer, larger batches spread the per-batch costs)")
    stream_batch_timeout_s: float = Field(2.0, gt=0, description="Longest wait to fill a batch")
    stream_contract_interval_s: float = Field(
        30.0, ge=0, description="Great Expectations checks the samples accepted over this long in one run (0: every batch)"
    )
    stream_max_message_bytes: int = Field(1_048_576, ge=1024, description="Messages larger than this go to the DLQ")
    stream_max_turns: int = Field(200, ge=1, description="Conversations with more turns go to the DLQ")
    stream_max_turn_chars: int = Field(100_000, ge=1, description="A longer turn sends the sample to the DLQ")
    stream_max_future_s: float = Field(300.0, ge=0, description="occurred_at further in the future is rejected")
    stream_max_age_days: float = Field(30.0, gt=0, description="occurred_at older than this is rejected")
    stream_window_minutes: int = Field(60, ge=1, description="Stream alerts: length of the current window")
    stream_baseline_hours: int = Field(24, ge=1, description="Stream alerts: the baseline is this long, just before the window")
    stream_min_samples: int = Field(50, ge=1, description="Stream alerts: a smaller current window is reported as insufficient data")
    stream_lag_store_interval_s: float = Field(30.0, ge=0, description="How often each worker stores its partitions' consumer lag in `stream_lag` (0: never)")
    stream_lag_alert_minutes: int = Field(
        30, ge=5, description="Lag alert: a data-quality alert when the group's lag rose significantly over this many minutes"
    )
    stream_lag_alert_min_records: int = Field(1000, ge=0, description="Lag alert: ... and ended at least this many records behind")
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Serve Prometheus metrics on this port when set")

    # Slack
    slack_bot_token: SecretStr | None = Field(None, description="Bot token for chat.postMessage (needs slack_channel)")
    slack_channel: str | None = Field(None, description="Channel for alerts when a bot token is used")
    slack_webhook_url: SecretStr | None = Field(None, description="Incoming webhook URL, used when no bot token is set")
    slack_api_url: str = Field("https://slack.com/api/", description="Slack Web API base URL")
    airflow_url: str | None = Field(None, description="Airflow base URL; alerts link to the run when set")

    @field_validator("drift_permutations")
    @classmethod
    def _permutations_can_reach_alpha(cls, value: int, info: ValidationInfo) -> int:
        # A permutation p-value is at least 1/(permutations + 1); Holm multiplies the smallest
        # by the number of alerting methods. Too few permutations and no drift can ever alert.
        methods = [m for m in info.data.get("drift_methods", []) if m != "centroid"]
        alpha = info.data.get("drift_alpha")
        if alpha and {"mmd", "attack_share"} & set(methods) and len(methods) / (value + 1) >= alpha:
            need = math.floor(len(methods) / alpha)
            raise ValueError(
                f"with {len(methods)} alerting drift methods at alpha {alpha}, a permutation test needs at least {need} permutations to ever alert"
            )
        return value

    @field_validator("judge_band")
    @classmethod
    def _band_is_ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 <= value[0] < value[1] <= 1:
            raise ValueError("must be [low, high] with 0 <= low < high <= 1")
        return value

    @field_validator("judge_endpoint", "attacker_endpoint")
    @classmethod
    def _judge_endpoint_is_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL such as http://127.0.0.1:8000/v1")
        return value.rstrip("/") if value else None

    @property
    def embedded_store(self) -> bool:
        return self.clickhouse_dsn.startswith("chdb://")


def load_settings(**overrides: object) -> Settings:
    """Build the settings, turning validation errors into one message naming each bad key."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(f"SAFEMON_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built once per entry point."""
    return load_settings()
