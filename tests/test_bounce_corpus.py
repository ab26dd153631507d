"""Bounce classification over every labelled corpus in tests/data/bounces, against the goals."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_BENCH = Path(__file__).resolve().parents[1] / "bench" / "bounce_corpus.py"
_spec = importlib.util.spec_from_file_location("bounce_corpus", _BENCH)
assert _spec is not None
assert _spec.loader is not None
corpus = importlib.util.module_from_spec(_spec)
sys.modules["bounce_corpus"] = corpus
_spec.loader.exec_module(corpus)


@pytest.fixture(scope="module")
def scores() -> dict:
    return corpus.measure()


def test_every_sample_is_labelled_and_licensed() -> None:
    labelled = {path for _, path, _ in corpus.labels()}
    for source in corpus.ROOT.iterdir():
        if source.is_dir():
            assert (source / "LICENSE").exists() or source.name == "own", source
            files = {p for p in source.iterdir() if p.suffix in (".eml", ".msg")}
            assert files <= labelled, sorted(files - labelled)[:5]


@pytest.mark.parametrize("group", ["all", "held-out"])
def test_goals_on_the_whole_corpus(scores: dict, group: str) -> None:
    score = scores[group]
    rates = score.rates()
    assert score.crashes == 0
    assert score.false_bounces == 0, score.misses
    assert rates["recognised"] >= 0.98, score.misses
    assert rates["recipient"] >= 0.97, score.misses
    assert rates["status"] >= 0.95, score.misses


def test_own_samples_are_all_right(scores: dict) -> None:
    # Auto-replies in nine languages, forwarded ARF, delivered/relayed DSNs, SES and SendGrid.
    assert scores["own"].misses == []


def test_crlf_line_ends_change_nothing() -> None:
    # IMAP hands messages over with CRLF line ends; the stored samples mostly have LF.
    from bulkmail_kernel.deliverability.classify import classify_message

    changed = []
    for source, path, _ in corpus.labels():
        lf = path.read_bytes().replace(b"\r\n", b"\n")
        a, b = classify_message(lf), classify_message(lf.replace(b"\n", b"\r\n"))
        if (a.kind, a.recipient, a.status) != (b.kind, b.recipient, b.status):
            changed.append(f"{source}/{path.name}")
    assert changed == []
