"""Stream throughput end to end: Kafka -> worker (validate, redact, embed, detect) -> ClickHouse.

    .venv/bin/python bench/stream.py                  # 7,000 samples, batches of SAFEMON_STREAM_BATCH_SIZE
    .venv/bin/python bench/stream.py --samples 3000 --batch-size 256
    .venv/bin/python bench/stream.py --repeats 1 --profile bench/out/stream-profile   # py-spy (make bench-env)

Samples are built from real, distinct texts (benign instructions as single turns, HH-RLHF
human / assistant exchanges). A broker is started from deploy/kafka unless SAFEMON_KAFKA_BOOTSTRAP
names one. Each run gets a fresh topic, consumer group and embedded chDB path; the worker runs
as its own process until idle, and its rate is counted from its first commit to its last full
batch's (start-up excluded) and over the whole run. The same texts are encoded directly, in one
call, with the same embedder backend, thread count and tokenizer threading, right before the
worker starts and right after it stops; the ratio to their mean says how much of the model's
raw rate the pipeline keeps. This machine's speed drifts by 10% or more over minutes, so
`--repeats` runs (3) are made and their median ratio is given (profile with `--repeats 1`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.settings import load_settings  # noqa: E402
from pipeline.stream.batch import StreamScorer  # noqa: E402
from tests.support.kafka_broker import bootstrap_for, create_topic  # noqa: E402
from tests.support.stream_worker import make_sample, produce_samples, start_worker, stored_counts, worker_env  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"


def hh_turns(text: str) -> list[tuple[str, str]]:
    """The (role, content) turns of an HH-RLHF transcript."""
    turns = []
    for block in text.split("\n\nHuman: ")[1:]:
        human, _, assistant = block.partition("\n\nAssistant: ")
        turns.append(("user", human.strip()))
        if assistant.strip():
            turns.append(("assistant", assistant.strip()))
    return turns


def build_samples(n: int, seed: int = 7) -> list:
    """n samples, alternating single benign instructions and HH-RLHF (human, assistant) exchanges,
    each drawn without replacement while its pool lasts (3,669 exchanges, 6,264 instructions), so
    the texts are distinct and the embedding cache does not flatter the pipeline."""
    rng = random.Random(seed)
    instructions = [r["instruction"] for r in json.loads((DATASETS / "benign_instructions" / "harmless_val.json").read_text())]
    exchanges: dict[tuple[str, str], None] = {}
    for line in (DATASETS / "hh_rlhf" / "harmless_base_dev.jsonl").open():
        turns = hh_turns(json.loads(line)["chosen"])
        for (role, text), (next_role, answer) in itertools.pairwise(turns):
            if role == "user" and next_role == "assistant" and text and answer:
                exchanges[(text, answer)] = None
    pools = [[(text, None) for text in instructions], list(exchanges)]
    for pool in pools:
        rng.shuffle(pool)
    return [make_sample(*pools[i % 2][(i // 2) % len(pools[i % 2])]) for i in range(n)]


def top_entries(stacks: Path, k: int = 5) -> str:
    """The worker's main thread from py-spy's collapsed stacks: top functions by own and by total time.

    Idle samples are kept (`--idle`), so time blocked in Kafka polls or ClickHouse calls shows.
    """
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for line in stacks.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not any("run (pipeline/stream/worker.py" in f for f in frames):
            continue  # not the consuming thread (heartbeats, metrics, the broker client's I/O)
        names = [re.sub(r":\d+\)$", ")", f) for f in frames[1:]]  # "func (file:line)" -> "func (file)"
        own[names[-1]] += int(count)
        total.update(dict.fromkeys(names, int(count)))
    samples = own.total()
    lines = [f"main thread: {samples} samples"]
    for title, table in (("own time", own), ("total time (pipeline/ functions)", {f: v for f, v in total.items() if "pipeline/" in f})):
        lines.append(f"top {k} by {title}:")
        for name, n in Counter(table).most_common(k):
            lines.append(f"  {100 * n / max(samples, 1):5.1f}%  {name}")
    return "\n".join(lines)


def stamp(event: dict) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def run_once(args: argparse.Namespace, work: Path, bootstrap: str, samples: list, texts: list[str], raw_encode_s: Callable[[], float], backend: str) -> float:
    """One worker over a fresh topic, group and store, between two raw encodes; its pipeline / raw ratio."""
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 4)
    produce_samples(bootstrap, topic, samples)
    settings = load_settings(clickhouse_dsn=f"chdb://{work / 'clickhouse'}", clickhouse_database="bench")
    env = worker_env(
        settings,
        bootstrap=bootstrap,
        topic=topic,
        group=f"bench-{topic}",
        stream_batch_size=args.batch_size,
        stream_batch_timeout_s=1.0,
    )
    env["OMP_NUM_THREADS"] = str(args.threads)
    # The tests' worker env turns the tokenizer's threads off; the worker here tokenizes
    # as the raw encode does (and as a worker started without the variable does).
    env["TOKENIZERS_PARALLELISM"] = os.environ.get("TOKENIZERS_PARALLELISM", "true")
    raw_s = [raw_encode_s()]
    wrap = None
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        wrap = [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--format",
            "raw",
            "--rate",
            "200",
            "--idle",
            "--threads",
            "--nonblocking",
            "-o",
            str(args.profile / "stacks.txt"),
            "--",
        ]
    work.mkdir(parents=True, exist_ok=True)
    worker = start_worker(env, work / "worker.log", max_idle_seconds=5, wrap=wrap)
    code = worker.wait(3600)
    if code != 0:
        sys.exit(f"worker exited {code}:\n{worker.tail()}")
    raw_s.append(raw_encode_s())
    stored = stored_counts(settings)[0]
    commits = worker.events("stream.batch_committed")
    ready = stamp(worker.events("stream.subscribed")[0])
    # Steady state: from the first commit to the last FULL batch's. The run's last, partial
    # batch waits out stream_batch_timeout_s for records that never come: an artifact of a
    # finite bench, not of a stream.
    full = [i for i, c in enumerate(commits) if c["batch_size"] == args.batch_size and i > 0]
    steady = commits[1 : full[-1] + 1] if full else commits[1:]
    steady_s = stamp(steady[-1]) - stamp(commits[0]) if steady else float("nan")
    steady_rate = sum(c["batch_size"] for c in steady) / steady_s if steady_s > 0 else float("nan")
    run_rate = stored / (stamp(commits[-1]) - ready)

    print(f"samples produced / stored       {len(samples)} / {stored}")
    print(f"batches                         {len(commits)} (batch size {args.batch_size}, {backend}, {args.threads} threads)")
    print(f"pipeline samples/s (steady)     {steady_rate:.1f}")
    print(f"pipeline samples/s (join->end)  {run_rate:.1f}")
    encode_s = sum(raw_s) / len(raw_s)
    raw_rate = len(samples) / encode_s
    print(
        f"raw encode: {len(texts)} texts in {raw_s[0]:.1f}s before / {raw_s[1]:.1f}s after the worker "
        f"= {len(texts) / encode_s:.1f} texts/s = {raw_rate:.1f} samples/s"
    )
    print(f"pipeline / raw encode           {steady_rate / raw_rate:.2f}")
    stages = [c.get("seconds", {}) for c in steady]
    totals = {k: sum(st.get(k, 0.0) for st in stages) for k in ("fill", "validate", "score", "store", "commit")}
    print("steady batches, seconds per stage: " + ", ".join(f"{k} {v:.2f}" for k, v in totals.items()))
    if args.profile:
        report = top_entries(args.profile / "stacks.txt")
        (args.profile / "top.txt").write_text(report)
        print(report)
    return steady_rate / raw_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=7000)
    parser.add_argument("--batch-size", type=int, default=load_settings().stream_batch_size)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3, help="worker runs, each between two raw encodes (this machine drifts)")
    parser.add_argument("--profile", type=Path, help="run the worker under py-spy; write its stacks and top entries here")
    args = parser.parse_args()
    if not DATASETS.is_dir():
        sys.exit(f"{DATASETS} is missing")

    work = Path(tempfile.mkdtemp(prefix="safemon-bench-stream-"))
    with bootstrap_for(work) as bootstrap:
        samples = build_samples(args.samples)
        scorer = StreamScorer(load_settings())  # the worker's, from the same SAFEMON_EMBEDDING_* settings
        embedder = scorer.embedder
        if embedder.backend == "torch":
            import torch

            torch.set_num_threads(args.threads)
        texts = scorer.texts(samples)  # what the worker embeds
        embedder.encode(["warm up"])

        def raw_encode_s() -> float:
            embedder.clear_cache()
            started = time.perf_counter()
            embedder.encode(texts)
            return time.perf_counter() - started

        ratios = []
        for run in range(1, args.repeats + 1):
            print(f"--- run {run} of {args.repeats}")
            ratios.append(run_once(args, work / f"run{run}", bootstrap, samples, texts, raw_encode_s, embedder.backend))
        if len(ratios) > 1:
            print(f"pipeline / raw encode over {len(ratios)} runs: median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})")


if __name__ == "__main__":
    main()
