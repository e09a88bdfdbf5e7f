"""Fuzzing the readers: every mutant of a valid fixture is read, or refused with one SurgeryError line.

Each format's strategy edits the structures the reader trusts (a safetensors
header's fields, a PyTorch pickle's integers and its storages, HDF5 attributes
and datasets, a TF index and its shards, ONNX dims, types and external data),
then sometimes the bytes. ``make test`` runs a fixed, derandomized budget of
about a minute; ``make fuzz`` sets ``FUZZ_EXAMPLES`` (inputs per format) and a
seed, and writes the summary to ``$FUZZ_REPORT``. See tests/fuzz/README.md.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tests.conftest import FIXTURES

from .harness import Campaign, Worker
from .dcp_mutants import FIXTURES as dcp_fixtures, dcp_mutants
from .h5_mutants import FIXTURES as h5_fixtures, h5_mutants
from .onnx_mutants import FIXTURES as onnx_fixtures, onnx_mutants
from .safetensors_mutants import FIXTURES as safetensors_fixtures, safetensors_mutants
from .tf_mutants import FIXTURES as tf_fixtures, tf_mutants
from .torch_mutants import FIXTURES as torch_fixtures, torch_mutants

LONG = os.environ.get("FUZZ_EXAMPLES")
# format -> (strategy, the valid fixtures it mutates, inputs in `make test`)
CAMPAIGNS = {
    "safetensors": (safetensors_mutants(), safetensors_fixtures, 1000),
    "torch": (torch_mutants(), torch_fixtures, 600),
    "hdf5": (h5_mutants(), h5_fixtures, 300),
    "onnx": (onnx_mutants(), onnx_fixtures, 1000),
    "tf_checkpoint": (tf_mutants(), tf_fixtures, 800),
    "dcp": (dcp_mutants(), dcp_fixtures, 600),
}


def _settings(examples: int) -> settings:
    """Derandomized (a fixed seed) in `make test`; seeded by the run in `make fuzz`."""
    return settings(max_examples=int(LONG) if LONG else examples, derandomize=not LONG, database=None,
                    deadline=None, phases=(Phase.generate,), suppress_health_check=list(HealthCheck))


@pytest.mark.fuzz
@pytest.mark.filterwarnings("ignore:Duplicate name")  # a zip mutant naming a member twice, on purpose
@pytest.mark.parametrize("name", CAMPAIGNS)
def test_every_mutant_is_read_or_refused(name, tmp_path, fuzz_summaries):
    strategy, fixtures, examples = CAMPAIGNS[name]
    worker = Worker([FIXTURES / f for f in fixtures])
    campaign = Campaign(name, worker, tmp_path)

    @_settings(examples)
    @given(strategy)
    def fuzz(mutant):
        campaign.run(mutant)

    try:
        fuzz()
    finally:
        worker.close()
        fuzz_summaries.append(campaign.summary())
    if campaign.bugs:
        pytest.fail(campaign.report(), pytrace=False)
