"""mcel_train.malloc_tuning: after it, a freed 64 MB block is reused by the next allocation
instead of being unmapped and faulted in (and zeroed) again; the evaluators turn it on."""

import subprocess
import sys

import pytest

LOOP = """
import resource, sys
import numpy as np
if sys.argv[1] == "tuned":
    from mcel_train.malloc_tuning import keep_freed_memory
    assert keep_freed_memory()
for _ in range(2):
    np.ones(8 << 20).sum()  # 64 MB, freed at once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    np.ones(8 << 20).sum()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
"""


def _faults_per_block(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", LOOP, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_block_is_reused_without_page_faults():
    huge_pages = (64 << 20) // (2 << 20)  # the fewest faults a fresh 64 MB block takes (2 MB pages)
    assert _faults_per_block("plain") >= huge_pages  # the default: every block is faulted in anew
    assert _faults_per_block("tuned") < huge_pages // 4


def test_the_map_evaluator_turns_it_on(digits):
    import torch

    from mcel_train import malloc_tuning
    from mcel_train.evaluate import MapEvaluator
    from mcel_train.intnet import from_brevitas
    from mcel_train.models import ModelSpec
    from mcel_train.quicktrain import model_inputs, quick_train

    spec = ModelSpec(arch="tfc", weight_bits=2, act_bits=2, hidden=(16,), image_shape=(8, 8)).resolved()
    torch.manual_seed(0)
    model = quick_train(spec, digits, steps=2, batch_size=32)
    MapEvaluator(from_brevitas(model), model_inputs(digits.test.images, spec), digits.test.labels)
    assert malloc_tuning._tuned
