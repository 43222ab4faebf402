"""Stream throughput end to end: Kafka -> worker (validate, redact, embed, detect) -> ClickHouse.

    .venv/bin/python bench/stream.py                  # 7,000 samples, batches of SAFEMON_STREAM_BATCH_SIZE
    .venv/bin/python bench/stream.py --samples 3000 --batch-size 256
    .venv/bin/python bench/stream.py --repeats 1 --profile bench/out/stream-profile   # py-spy (make bench-env)
    .venv/bin/python bench/stream.py --judge-concurrency        # no judge runs
    .venv/bin/python bench/stream.py --harmful-share 0 --judge-concurrency   # the traffic and runs before the judge
    .venv/bin/python bench/stream.py --turns 4 --samples 1500 --judge-concurrency   # conversations of 4 answered turns

Samples are built from real, distinct texts (benign instructions as single turns, HH-RLHF
human / assistant exchanges, and a `--harmful-share` (0.1) of JailbreakBench attack prompts with
the answers recorded for them, spread evenly). With `--turns k` (1) each sample is a conversation
of k answered exchanges drawn the same way, one after another, a `--harmful-share` of the
exchanges being attacks; benign instructions have no recorded answer, so in a conversation each
is answered by an HH-RLHF assistant answer (drawn from its own shuffle of them: for throughput what
matters is that it is a real answer of realistic length). The stream scores every answered turn in
its context, so a conversation costs more than one exchange: the ratio to the raw encode of the
texts the worker embeds (`StreamScorer.texts`, every turn's) says how much of the model's raw rate
the pipeline keeps on them. 6,264 instructions and 3,669 HH-RLHF exchanges are drawn without
replacement while they last: `--turns 4 --samples 1500` stays within them. A broker is started from deploy/kafka unless SAFEMON_KAFKA_BOOTSTRAP
names one. Each run gets a fresh topic, consumer group and embedded chDB path; the worker runs
as its own process until idle, and its rate is counted from its first commit to its last full
batch's (start-up excluded) and over the whole run. The same texts are encoded directly, in one
call, with the same embedder backend, thread count and tokenizer threading, right before the
worker starts and right after it stops; the ratio to their mean says how much of the model's
raw rate the pipeline keeps. This machine's speed drifts by 10% or more over minutes, so
`--repeats` runs (3) are made and their median ratio is given (profile with `--repeats 1`).

The judge: after each run without one, the same samples go through a worker with the judge
cascade on, once per `--judge-concurrency` (8 and 16), against the recorded judge
(`pipeline/judge/standin.py`, Llama Guard 1's verdicts on the JailbreakBench answers, `safe` for
any other) at `--judge-latency-ms` (200) per call, on a thread of this process. Its hourly budget
is `--judge-budget-share` (1%) of what the run without a judge stored per hour (its rate over
every batch, times 3600); the band is the default one (the shipped card's), audit share and
rate limit (20/s unless `--judge-rate-limit` lifts it) the defaults. The worker paces the budget
and starts with 10 seconds' worth, so its first batch asks about more than 1% of its samples:
the ratio to the run without a judge is given over the steady batches (the first left out, as
for the run without a judge: the budget's pace) and over every batch (from the first one's start,
its wait for partitions left out, to the last commit, less the last batch's wait when it is
partial: the start-up burst included), with their medians over the runs. A batch is scored in
chunks with the judge's calls on a thread, overlapping the embedding of the next chunks
(`pipeline/stream/batch.py`).
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
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.probes import JBB, default_band  # noqa: E402
from pipeline.judge.standin import JudgeRecord, JudgeStandin, jbb_recording  # noqa: E402
from pipeline.records import ConversationSample, Turn  # noqa: E402
from pipeline.settings import Settings, load_settings  # noqa: E402
from pipeline.stream.batch import StreamScorer  # noqa: E402
from tests.support.kafka_broker import bootstrap_for, create_topic  # noqa: E402
from tests.support.stream_worker import WorkerProcess, make_sample, produce_samples, query, start_worker, stored_counts, worker_env  # noqa: E402

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


def jbb_exchanges() -> list[tuple[str, str]]:
    """JailbreakBench's distinct (attack prompt, recorded answer) pairs that have an answer."""
    pairs: dict[tuple[str, str], None] = {}
    for line in JBB.open(encoding="utf-8"):
        row = json.loads(line) if line.strip() else {}
        prompt, response = row.get("prompt"), row.get("response")
        if isinstance(prompt, str) and isinstance(response, str) and prompt.strip() and response.strip():
            pairs[(prompt, response)] = None
    return list(pairs)


def build_samples(n: int, seed: int = 7, harmful_share: float = 0.0, turns: int = 1) -> list:
    """n samples, alternating single benign instructions and HH-RLHF (human, assistant) exchanges,
    each drawn without replacement while its pool lasts (3,669 exchanges, 6,264 instructions), so
    the texts are distinct and the embedding cache does not flatter the pipeline. A `harmful_share`
    of them, spread evenly, are JailbreakBench attacks with their recorded answers instead (1,000
    or so distinct pairs, drawn the same way).

    With `turns` > 1, each sample is a conversation of that many exchanges, drawn as n * turns
    single samples would be (attacks spread over the exchanges), each benign instruction answered
    by an HH-RLHF answer."""
    if turns < 1:
        raise ValueError(f"turns must be at least 1, got {turns}")
    rng = random.Random(seed)
    instructions = [r["instruction"] for r in json.loads((DATASETS / "benign_instructions" / "harmless_val.json").read_text())]
    exchanges: dict[tuple[str, str], None] = {}
    for line in (DATASETS / "hh_rlhf" / "harmless_base_dev.jsonl").open():
        turns_of = hh_turns(json.loads(line)["chosen"])
        for (role, text), (next_role, answer) in itertools.pairwise(turns_of):
            if role == "user" and next_role == "assistant" and text and answer:
                exchanges[(text, answer)] = None
    pools = [[(text, None) for text in instructions], list(exchanges)]
    for pool in pools:
        rng.shuffle(pool)
    m = n * turns
    pairs = [pools[i % 2][(i // 2) % len(pools[i % 2])] for i in range(m)]
    if harmful_share > 0:
        attacks = jbb_exchanges()
        random.Random(seed).shuffle(attacks)
        at = [i for i in range(m) if int((i + 1) * harmful_share) > int(i * harmful_share)]
        for k, i in enumerate(at):
            pairs[i] = attacks[k % len(attacks)]
    if turns == 1:
        return [make_sample(*pair) for pair in pairs]
    answers = [answer for _, answer in exchanges]
    random.Random(seed + 1).shuffle(answers)
    answered = [(text, answer if answer is not None else answers[i % len(answers)]) for i, (text, answer) in enumerate(pairs)]
    return [conversation(answered[i : i + turns]) for i in range(0, m, turns)]


def conversation(exchanges: list[tuple[str, str]]) -> ConversationSample:
    """A sample of these (user, assistant) exchanges, in order."""
    return make_sample(*exchanges[0], turns=tuple(Turn(role, text) for user, answer in exchanges for role, text in (("user", user), ("assistant", answer))))


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


def prepare(args: argparse.Namespace, work: Path, bootstrap: str, samples: list, **extra: object) -> tuple[Settings, dict[str, str]]:
    """A fresh topic holding `samples`, and a worker's settings and environment for it (its own
    group and store); `extra` are more SAFEMON_* settings."""
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
        **extra,
    )
    env["OMP_NUM_THREADS"] = str(args.threads)
    # The tests' worker env turns the tokenizer's threads off; the worker here tokenizes
    # as the raw encode does (and as a worker started without the variable does).
    env["TOKENIZERS_PARALLELISM"] = os.environ.get("TOKENIZERS_PARALLELISM", "true")
    work.mkdir(parents=True, exist_ok=True)
    return settings, env


def finish(worker: WorkerProcess) -> None:
    code = worker.wait(3600)
    if code != 0:
        sys.exit(f"worker exited {code}:\n{worker.tail()}")


@dataclass(frozen=True)
class Rates:
    """A finished worker's commits and its rates, in samples per second."""

    stored: int
    commits: list[dict]
    steady: list[dict]  # the steady batches
    steady_rate: float  # from the first commit to the last full batch's
    run_rate: float  # from joining the group to the last commit
    batches_rate: float  # over every batch, their waits for records left out

    def stage_totals(self, batches: list[dict]) -> dict[str, float]:
        stages = [c.get("seconds", {}) for c in batches]
        return {k: sum(st.get(k, 0.0) for st in stages) for k in ("fill", "validate", "score", "store", "commit")}


def rates(worker: WorkerProcess, settings: Settings, batch_size: int) -> Rates:
    stored = stored_counts(settings)[0]
    commits = worker.events("stream.batch_committed")
    ready = stamp(worker.events("stream.subscribed")[0])
    # Steady state: from the first commit to the last FULL batch's. The run's last, partial
    # batch waits out stream_batch_timeout_s for records that never come: an artifact of a
    # finite bench, not of a stream.
    full = [i for i, c in enumerate(commits) if c["batch_size"] == batch_size and i > 0]
    steady = commits[1 : full[-1] + 1] if full else commits[1:]
    steady_s = stamp(steady[-1]) - stamp(commits[0]) if steady else float("nan")
    steady_rate = sum(c["batch_size"] for c in steady) / steady_s if steady_s > 0 else float("nan")
    # Every batch: from the first one's start (its fill, which waits for partitions, left out) to
    # the last commit, less the last batch's fill when it is partial (it waits out the timeout).
    first, last = commits[0], commits[-1]
    start = stamp(first) - sum(v for k, v in first.get("seconds", {}).items() if k != "fill")
    end = stamp(last) - (last.get("seconds", {}).get("fill", 0.0) if last["batch_size"] < batch_size and len(commits) > 1 else 0.0)
    batches_rate = sum(c["batch_size"] for c in commits) / (end - start)
    return Rates(stored, commits, steady, steady_rate, stored / (stamp(last) - ready), batches_rate)


def run_once(
    args: argparse.Namespace, work: Path, bootstrap: str, samples: list, texts: list[str], raw_encode_s: Callable[[], float], backend: str
) -> tuple[float, Rates]:
    """One worker over a fresh topic, group and store, between two raw encodes: its pipeline / raw
    ratio, and its rates."""
    settings, env = prepare(args, work, bootstrap, samples)
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
    worker = start_worker(env, work / "worker.log", max_idle_seconds=5, wrap=wrap)
    finish(worker)
    raw_s.append(raw_encode_s())
    r = rates(worker, settings, args.batch_size)

    print(f"samples produced / stored       {len(samples)} / {r.stored}" + (f" (conversations of {args.turns} answered turns)" if args.turns > 1 else ""))
    print(f"batches                         {len(r.commits)} (batch size {args.batch_size}, {backend}, {args.threads} threads)")
    print(f"pipeline samples/s (steady)     {r.steady_rate:.1f}")
    print(f"pipeline samples/s (join->end)  {r.run_rate:.1f}")
    print(f"pipeline samples/s (batches)    {r.batches_rate:.1f}")
    encode_s = sum(raw_s) / len(raw_s)
    raw_rate = len(samples) / encode_s
    print(
        f"raw encode: {len(texts)} texts in {raw_s[0]:.1f}s before / {raw_s[1]:.1f}s after the worker "
        f"= {len(texts) / encode_s:.1f} texts/s = {raw_rate:.1f} samples/s"
    )
    print(f"pipeline / raw encode           {r.steady_rate / raw_rate:.2f}")
    totals = r.stage_totals(r.steady)
    print("steady batches, seconds per stage: " + ", ".join(f"{k} {v:.2f}" for k, v in totals.items()))
    if args.profile:
        report = top_entries(args.profile / "stacks.txt")
        (args.profile / "top.txt").write_text(report)
        print(report)
    return r.steady_rate / raw_rate, r


@dataclass(frozen=True)
class JudgedRun:
    """A worker with the judge on: its rates, the judge's calls, and who decided the samples."""

    concurrency: int
    rates: Rates
    calls: int  # requests the recorded judge received
    dropped: int  # uncertain samples left unscored and audits skipped for want of budget (the worker's count)
    decided: dict[tuple[str, str], int]  # (judge_role, decided_by) -> samples stored


def run_judged(args: argparse.Namespace, work: Path, bootstrap: str, samples: list, judge: list[JudgeRecord], concurrency: int, extra: dict) -> JudgedRun:
    """One worker over a fresh topic, group and store with the judge cascade on, at `concurrency`."""
    with JudgeStandin(judge, latency_ms=args.judge_latency_ms, unknown="safe") as standin:
        settings, env = prepare(args, work, bootstrap, samples, judge_endpoint=standin.url, judge_concurrency=concurrency, **extra)
        worker = start_worker(env, work / "worker.log", max_idle_seconds=5)
        finish(worker)
        calls = standin.counts.requests
    r = rates(worker, settings, args.batch_size)
    dropped = sum(int(e.get("dropped", 0)) for e in worker.events("judge.budget_dropped"))
    decided = {(role, by): int(n) for role, by, n in query(settings, "SELECT judge_role, decided_by, count() FROM sample_scores FINAL GROUP BY ALL")}
    return JudgedRun(concurrency, r, calls, dropped, decided)


def report_judged(j: JudgedRun, baseline: Rates, budget: int, args: argparse.Namespace) -> tuple[float, float]:
    """Print a judged run's figures; its steady rate and its rate over every batch, as ratios to the
    run without a judge."""
    baseline_rate = baseline.batches_rate
    r = j.rates
    # What the calls must cost at least, one after another in the batch: the judge's rate limit,
    # or its concurrency at the injected latency, whichever is slower.
    per_s = min(args.judge_rate_limit, j.concurrency * 1000 / args.judge_latency_ms)
    floor_s = j.calls / per_s
    expected = 1 / (1 + floor_s * baseline_rate / max(r.stored, 1))
    uncertain = sum(n for (role, _), n in j.decided.items() if role == "uncertain")
    audits = sum(n for (role, _), n in j.decided.items() if role == "audit")
    judged = j.decided.get(("uncertain", "judge"), 0)
    unscored = sum(n for (_, by), n in j.decided.items() if by == "unscored")
    totals = r.stage_totals(r.commits)
    ratio = r.batches_rate / baseline_rate
    steady = r.steady_rate / baseline.steady_rate
    print(f"judge concurrency {j.concurrency}: samples stored {r.stored}, batches {len(r.commits)}")
    print(f"  uncertain (in band) / audited   {uncertain} / {audits} ({100 * uncertain / max(r.stored, 1):.1f}% of samples uncertain)")
    print(f"  judge calls made / hourly budget {j.calls} / {budget}; dropped by the budget {j.dropped}")
    print(f"  decided by the judge / unscored {judged} / {unscored}")
    print(f"  pipeline samples/s (steady)     {r.steady_rate:.1f} vs {baseline.steady_rate:.1f} without the judge")
    print(f"  pipeline samples/s (batches)    {r.batches_rate:.1f} vs {baseline_rate:.1f} without the judge")
    print("  all batches, seconds per stage: " + ", ".join(f"{k} {v:.2f}" for k, v in totals.items()))
    print(f"  with / without the judge, steady {steady:.3f}")
    print(f"  with / without, every batch     {ratio:.3f} (the calls one after another, at {per_s:g}/s: {floor_s:.2f} s, {expected:.3f})")
    return steady, ratio


def judge_settings(args: argparse.Namespace, scorer: StreamScorer) -> tuple[dict, str]:
    """The judged workers' SAFEMON_JUDGE_* settings (less the endpoint, concurrency and budget),
    and where the band comes from."""
    base = load_settings()
    band, source = default_band(base.model_copy(update={"judge_endpoint": "http://127.0.0.1:9/v1", "judge_model": "llama-guard-1"}), scorer.scorer)
    extra: dict = {"judge_model": "llama-guard-1", "judge_rate_limit_per_s": args.judge_rate_limit}
    if source.startswith("fallback"):
        extra["judge_band"] = json.dumps(list(band))
    return extra, f"[{band[0]:g}, {band[1]:g}) ({source})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=7000)
    parser.add_argument("--batch-size", type=int, default=load_settings().stream_batch_size)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3, help="worker runs, each between two raw encodes (this machine drifts)")
    parser.add_argument("--profile", type=Path, help="run the worker under py-spy; write its stacks and top entries here")
    parser.add_argument("--harmful-share", type=float, default=0.1, help="share of samples that are JailbreakBench attacks and their answers (0.1)")
    parser.add_argument("--turns", type=int, default=1, help="answered exchanges per sample: conversations of this many assistant turns (1)")
    parser.add_argument(
        "--judge-concurrency", type=int, nargs="*", default=[8, 16], help="a judged worker run per value after each run without a judge; none: no judge (8 16)"
    )
    parser.add_argument("--judge-latency-ms", type=float, default=200.0, help="the recorded judge's latency per call (200)")
    parser.add_argument(
        "--judge-rate-limit",
        type=float,
        default=load_settings().judge_rate_limit_per_s,
        help="judge calls started per second (SAFEMON_JUDGE_RATE_LIMIT_PER_S's default)",
    )
    parser.add_argument("--judge-budget-share", type=float, default=0.01, help="the judge's hourly budget as a share of the samples (0.01)")
    args = parser.parse_args()
    if not DATASETS.is_dir():
        sys.exit(f"{DATASETS} is missing")
    if load_settings().judge_endpoint:
        sys.exit("SAFEMON_JUDGE_ENDPOINT is set: the runs without a judge need it unset")

    work = Path(tempfile.mkdtemp(prefix="safemon-bench-stream-"))
    with bootstrap_for(work) as bootstrap:
        samples = build_samples(args.samples, harmful_share=args.harmful_share, turns=args.turns)
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

        if args.judge_concurrency:
            judge_extra, band = judge_settings(args, scorer)
            judge = jbb_recording(JBB)
            print(
                f"judge: recorded, {args.judge_latency_ms:g} ms per call, budget {100 * args.judge_budget_share:g}% of the samples an hour, "
                f"band {band}, concurrency {args.judge_concurrency}, rate limit {args.judge_rate_limit:g}/s"
            )
        ratios = []
        judged: dict[int, list[tuple[float, float]]] = {c: [] for c in args.judge_concurrency}
        for run in range(1, args.repeats + 1):
            print(f"--- run {run} of {args.repeats}")
            ratio, baseline = run_once(args, work / f"run{run}", bootstrap, samples, texts, raw_encode_s, embedder.backend)
            ratios.append(ratio)
            if args.judge_concurrency:
                budget = max(1, round(args.judge_budget_share * baseline.batches_rate * 3600))
                print(f"judge budget: {budget} calls an hour ({100 * args.judge_budget_share:g}% of {baseline.batches_rate:.1f} samples/s)")
            for c in args.judge_concurrency:
                j = run_judged(args, work / f"run{run}-judge{c}", bootstrap, samples, judge, c, {**judge_extra, "judge_budget_per_hour": budget})
                judged[c].append(report_judged(j, baseline, budget, args))
        if len(ratios) > 1:
            print(f"pipeline / raw encode over {len(ratios)} runs: median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})")
        for c, pairs in judged.items():
            for name, rs in zip(("steady", "every batch"), zip(*pairs, strict=True), strict=True):
                print(
                    f"with / without the judge at {100 * args.judge_budget_share:g}% budget, concurrency {c}, rate limit {args.judge_rate_limit:g}/s, "
                    f"{name}, over {len(rs)} runs: median {statistics.median(rs):.3f} (min {min(rs):.3f}, max {max(rs):.3f})"
                )


if __name__ == "__main__":
    main()
