"""No change to the code changes an output unless it means to: every target on the embedded default writes what it
wrote when the snapshot was taken (``tests/fixtures/outputs_snapshot.json``, written by
``python -m tests._outputs --write tests/fixtures/outputs_snapshot.json``).

History of the snapshot: first written at 87a67ab, before the package was reorganised (the reorganisation then wrote
the same files). Rewritten when ``--refit-on`` came: the cases that compensate pass ``--refit-on dense``, and against
the old snapshot they differed only by the two new keys (``refit_on``, ``refit``) and the card's line of options —
every tensor byte-identical. Rewritten again when the card's scoring command became ``--eval-tasks`` (it still said
``--tasks``, which ``hf-prune eval`` refuses) and the search's line says the cut refits on pruned activations: only
those two lines of the cards differ. Rewritten when ``--search-costs`` came: every config and report holds the new key
(``search.costs: global``); the search's held-out KL was rewritten with a change in its 7th significant digit
(0.0092975830 -> 0.0092975958, within the comparison's tolerance: it was not among the differences found) — every
tensor byte-identical. Rewritten when the resumable state's flags (``--state-dir``, ``--resume``, ``--restart``) moved
from the Hyperflux section to their own (``state``, read by Hyperflux and the search, and no longer recorded: a local
path of one run is not part of what a checkpoint says about its pruning): every config and report lost
``hyperflux.state_dir / resume / restart``, nothing else differed. Rewritten when ``--search-probe-rows`` came: every
config and report holds the new key (``search.probe_rows: null``), nothing else differed. Rewritten for the three cases
that compensate by least squares when its ridge came to pull the refit towards the dense kept columns instead of
towards zero (a change of numbers meant): their refit weights and biases differ, and the search's costs with them —
it keeps 323 / 107 / 210 neurons in layers 0 / 2 / 3 where it kept 317 / 108 / 215, at a held-out KL of 0.00839
where it reached 0.00930 (0.00928 layer-wise); every other case is unchanged. Rewritten when ``--recover distill``
came: every config holds the recovery section's twelve new keys (``tokens``, ``params``, ``distill_lr``, ...), nothing
else differed. Rewrite it only for such a change, and say in the commit what differed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ._outputs import CASES, differences, snapshot_case

FIXTURE = Path(__file__).parent / "fixtures" / "outputs_snapshot.json"
EXPECTED = json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_same_files_as_in_the_snapshot(case, tmp_path):
    actual = snapshot_case(CASES[case], tmp_path)
    found = differences(EXPECTED[case], actual)
    assert not found, "\n".join(found[:20])


def test_a_changed_tensor_or_text_is_a_difference():
    """The comparison itself: it sees a changed weight, a changed word and a changed number."""
    expected = EXPECTED["uniform"]["files"]
    changed = json.loads(json.dumps(expected))
    tensor = next(iter(changed["model.safetensors"].values()))
    tensor["sha256"], tensor["projections"][0] = "0" * 64, tensor["projections"][0] + 0.01 * tensor["norm"]
    changed["README.md"] = changed["README.md"].replace("Pruned with", "Cut with").replace("50.00%", "49.00%")
    found = differences(expected, changed)
    assert any("values differ" in line for line in found)
    assert any("README.md: text differs" in line for line in found)
    changed["README.md"] = expected["README.md"].replace("50.00%", "49.00%")
    assert any("number 49.00%" in line or "number 49.00" in line for line in differences(expected, changed))
