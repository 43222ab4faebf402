"""The shipped heads are what their recipe makes of the public data: rebuilding them from
`../shared/datasets` reproduces the packaged bytes, and their provenance names the data they came from."""

from __future__ import annotations

import json

import numpy as np

from pipeline.detectors.head import HeadSet
from pipeline.detectors.shipped import CARD_FILE, DETECTOR_FILE, DRIFT_FILE, shipped_path
from pipeline.drift.attacks import AttackHead
from pipeline.lab.defaults import SOURCES, build
from pipeline.lab.evaluation import file_digest


def _difference(a: HeadSet, b: HeadSet) -> str:
    """Where two head sets differ, for the failure message."""
    return "; ".join(f"{t}: max |coef diff| {np.abs(a.heads[t].coef - b.heads[t].coef).max():.2e}" for t in a.heads if t in b.heads)


def test_the_build_reproduces_the_shipped_bytes_from_the_data(datasets, tmp_path) -> None:
    built = build(datasets, tmp_path)
    for name in (DETECTOR_FILE, DRIFT_FILE):
        rebuilt, shipped = (tmp_path / name).read_bytes(), shipped_path(name).read_bytes()
        detail = _difference(HeadSet.load(tmp_path / name), HeadSet.load(shipped_path(name))) if name == DETECTOR_FILE and rebuilt != shipped else ""
        assert rebuilt == shipped, f"{name} differs from its rebuild: run `safemon detectors build-defaults --data ../shared/datasets`. {detail}"
    # Every source the heads record is the file it says, under a licence that allows shipping.
    for sources in (built.heads.provenance["sources"], AttackHead.load(shipped_path(DRIFT_FILE)).sources["sources"]):
        for source in sources:
            assert SOURCES[source["name"]].trains
            assert source["sha256"] == file_digest(SOURCES[source["name"]].file(datasets)), f"{source['name']} changed since the heads were built"
    # The card shipped beside them describes these very heads.
    card = json.loads(shipped_path(CARD_FILE).read_text())
    assert card["head"] == built.heads.digest and card["drift_head"] == built.drift.digest


# The card measured 0.885 (phrase match 0.890, built-in exemplars 0.83) on all 1,157 deduplicated
# answers; none of them is in any fit. The floor sits under the head and above the exemplars.
REFUSAL_FLOOR = 0.86


def test_the_shipped_refusal_head_on_answers_it_never_saw(datasets) -> None:
    from pipeline.detectors import get_embedder
    from pipeline.detectors.stack import DetectorStack
    from pipeline.lab.evaluation import binary_metrics, deduplicate, load_xstest, truth_of
    from pipeline.lab.training import embed_frame, predict_frame

    xs = deduplicate(load_xstest(datasets / "xstest"))
    stack = DetectorStack(get_embedder(backend="torch"), head=HeadSet.load(shipped_path(DETECTOR_FILE)))
    pred = predict_frame(stack, xs, embed_frame(stack, xs))
    shipped = binary_metrics(truth_of(xs, "refusal"), pred["pred:refusal"].to_numpy(), n_boot=50)["accuracy"]["value"]
    exemplars = DetectorStack(get_embedder(backend="torch"))
    builtin = binary_metrics(truth_of(xs, "refusal"), predict_frame(exemplars, xs, embed_frame(exemplars, xs))["pred:refusal"].to_numpy(), n_boot=50)
    assert shipped >= REFUSAL_FLOOR and shipped > builtin["accuracy"]["value"], (shipped, builtin["accuracy"])


def test_the_projects_benign_requests_are_its_own(datasets) -> None:
    """The drift head's benign requests were written for safemon: none repeats an instruction of
    the CC BY-NC benign set (which only evaluates), and none repeats another."""
    from pipeline.detectors.views import normalise

    requests = [normalise(t) for t in SOURCES["safemon_benign_requests"].file(datasets).read_text(encoding="utf-8").splitlines()]
    public = {
        normalise(r["instruction"])
        for f in ("harmless_train", "harmless_val")
        for r in json.loads((datasets / "benign_instructions" / f"{f}.json").read_text())
    }
    assert len(requests) > 1500 and all(requests)
    assert len(set(requests)) == len(requests)
    assert not set(requests) & public
