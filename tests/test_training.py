"""The loop pretrain and finetune share (litgpt/training.py): when a run stops, and data loaders that leave torch's
global RNG alone (so dropout draws the same numbers in a resumed run). The loop itself runs in test_pretrain.py and
test_finetune.py."""

import pytest
import torch

from litgpt.args import TrainArgs
from litgpt.data.base import make_train_loader, make_val_loader
from litgpt.training import total_steps_of


def test_total_steps_from_steps_tokens_and_epochs():
    assert total_steps_of(TrainArgs(max_steps=7), None, 100) == 7
    assert total_steps_of(TrainArgs(max_tokens=1000, global_batch_size=4), 4 * 64, 100) == 4  # ceil(1000 / 256)
    assert total_steps_of(TrainArgs(epochs=3, global_batch_size=8), None, 100) == 38  # ceil(3 * 100 / 8)
    assert total_steps_of(TrainArgs(epochs=3, max_steps=20, global_batch_size=8), None, 100) == 20  # the first limit
    assert total_steps_of(TrainArgs(max_time=60.0), None, 100) is None
    with pytest.raises(ValueError, match="train.max_tokens needs a constant number of tokens per step"):
        total_steps_of(TrainArgs(max_tokens=1000), None, 100)


def test_loaders_do_not_draw_from_the_global_rng():
    data = torch.arange(40).view(20, 2)
    before = torch.get_rng_state()
    batches = iter(make_train_loader(data, 4, seed=3))
    first = [next(batches) for _ in range(3)]
    list(make_val_loader(data, 4, max_batches=2))
    assert torch.equal(torch.get_rng_state(), before)
    again = iter(make_train_loader(data, 4, seed=3, consumed_samples=4))  # resumed after one batch
    assert all(torch.equal(next(again), b) for b in first[1:])
