"""Shared fixtures for the synthetic practice generator tests: small practices generated once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from gpdata.synth import PracticeTruth, generate, generate_practice
from gpdata.synth.readback import Practice


@dataclass
class Run:
    root: Path
    truths: list[PracticeTruth]
    practices: list[Practice]


@dataclass
class One:
    practice: Practice
    truth: PracticeTruth
    pairs: list[tuple[str, str]]


@pytest.fixture(scope="session")
def dirty_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Two practices with plenty of dirt and opt-outs, for truth-consistency checks."""
    root = tmp_path_factory.mktemp("dirty")
    truths = generate(root, n_practices=2, n_patients=250, seed=7, events_per_patient=40.0,
                      dirty_fraction=0.03, optout_fraction=0.1, ndop_fraction=0.2)
    return Run(root, truths, [Practice(root / "sources" / t.ods_code) for t in truths])


@pytest.fixture(scope="session")
def clean_practice(tmp_path_factory: pytest.TempPathFactory) -> One:
    """One practice with dirty_fraction=0, split over several bundles."""
    folder = tmp_path_factory.mktemp("clean") / "sources" / "B82001"
    truth, pairs = generate_practice(folder, "B82001", n_patients=200, seed=3, events_per_patient=40.0,
                                     dirty_fraction=0.0, optout_fraction=0.1, bundle_size=60)
    return One(Practice(folder), truth, pairs)


@pytest.fixture(scope="session")
def default_practice(tmp_path_factory: pytest.TempPathFactory) -> One:
    """A few hundred patients at the default settings, over two bundles."""
    folder = tmp_path_factory.mktemp("default") / "P99001"
    truth, pairs = generate_practice(folder, "P99001", n_patients=300, seed=11, bundle_size=150)
    return One(Practice(folder), truth, pairs)
