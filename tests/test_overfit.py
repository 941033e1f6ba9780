"""A real learning check: on 8 fixed phantom pairs every loss falls by at least half."""

from __future__ import annotations

import pytest
import torch

from model_helpers import model_losses, phantom_batch, tiny_model


@pytest.mark.slow
def test_each_loss_halves_on_eight_fixed_pairs():
    torch.manual_seed(0)
    batch = phantom_batch(8, p_unpaired=0.0)
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.0)
    history = []
    for step in range(80):
        out = model_losses(model, batch, seed=step)
        losses = {k: v for k, v in out.items() if k.endswith("_loss")}
        history.append({k: float(v.detach()) for k, v in losses.items()})
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    start = history[0]
    end = {k: sum(h[k] for h in history[-5:]) / 5 for k in start}
    assert set(start) == {"align_loss", "mim_loss", "mlm_loss"}
    for k in start:
        assert end[k] <= 0.5 * start[k], f"{k}: {start[k]:.3f} -> {end[k]:.3f}"
