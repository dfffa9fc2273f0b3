"""The digest of a network's trained tensors, recorded by every stage that writes weights.

Why a leaf module: the training stage (mcel_train/train.py), the quick trainer
(mcel_train/quicktrain.py) and the loader (mcel_train/runio.py) all need it, and the loader
imports the quick trainer.
"""

from __future__ import annotations

import hashlib

import torch


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's tensors (names and values, in name order): two trainings with
    equal digests made the same network, whatever the file's container bytes. The training
    stage records it (``metrics.json``'s ``weights_sha256``), because torch's loader does not check
    the zip's checksums: flipped bytes inside a tensor loaded silently as other weights."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().contiguous().numpy().tobytes())
    return digest.hexdigest()
