"""What a model's pooled image embedding carries, per label, on development phantoms.

    python benchmarks/probe_dev.py runs/xlip-tiny-seed0 runs/xlip-tiny-seed1     # trained runs (latest checkpoint)
    python benchmarks/probe_dev.py runs/x/checkpoints/step_00000200.pt              # one checkpoint
    python benchmarks/probe_dev.py --init xlip --seed 0 --seed 1 --seed 2           # freshly initialised models
    python benchmarks/probe_dev.py runs/xlip-tiny-seed0 --prompts chexzero          # CheXzero's bare-phrase prompts (A32)

For each label: the zero-shot AUC (the protocol of ``maskkit eval zeroshot``: prompt pairs in the
library's default style, No Finding as the absence of findings) and the linear-probe AUC (logistic regression on the
standardised, L2-normalised pooled image embedding ``[C]``, fitted on the first 512 phantoms and
scored on the other 256). Both are computed on *development* phantoms (generator indices from
30,000,000; training uses 0..n-1 and the held-out zero-shot 10,000,000..), so diagnosing here does
not tune anything on the held-out set. The probe bounds what any prompt can read from the
embedding: a label whose probe AUC is near 0.5 is not in the embedding, and a label whose probe is
near 1 but whose zero-shot AUC is below 0.5 is read with the wrong sign by its prompt pair.
``--init PRESET`` measures an untrained model of that preset (``scale=tiny``) seeded with
``--seed``: the reference for what training adds or removes. ``--prompts`` picks the prompt style
(default: the library's). ``flips`` counts findings read with the wrong sign: probe >= 0.95 and
zero-shot < 0.5. Needs scikit-learn.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from maskkit.config import resolve
from maskkit.data.dataset import PhantomDataset
from maskkit.data.phantoms import DEV_OFFSET
from maskkit.eval.zeroshot import DEFAULT_PROMPT_STYLE, PROMPT_STYLES, encode_images, is_no_finding, probabilities
from maskkit.model import XLIP
from maskkit.training.checkpointing import load_model

N_FIT, N_TEST = 512, 256


def measure(model, data_seed: int, style: str = DEFAULT_PROMPT_STYLE) -> dict[str, tuple[float, float]]:
    """label -> (zero-shot AUC, linear-probe AUC) on the development phantoms."""
    ds = PhantomDataset(N_FIT + N_TEST, data_seed, model.image_size, offset=DEV_OFFSET, p_unpaired=0.0)
    x, y = encode_images(model, ds, "cpu")
    names = list(ds.label_names)
    p = probabilities(model, x, names, "cpu", style=style)
    x, y = x.numpy(), y.numpy()
    z = (x - x[:N_FIT].mean(0)) / (x[:N_FIT].std(0) + 1e-6)
    out = {}
    for k, name in enumerate(names):
        probe = LogisticRegression(max_iter=3000).fit(z[:N_FIT], y[:N_FIT, k])
        out[name] = (roc_auc_score(y[:, k], p[:, k]), roc_auc_score(y[N_FIT:, k], probe.decision_function(z[N_FIT:])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", help="run directories or checkpoint files")
    ap.add_argument("--init", metavar="PRESET", help="measure freshly initialised models of this preset instead")
    ap.add_argument("--seed", type=int, action="append", help="init seeds for --init (repeatable; default 0)")
    ap.add_argument("--prompts", choices=list(PROMPT_STYLES), default=DEFAULT_PROMPT_STYLE, help="zero-shot prompt style (A32)")
    args = ap.parse_args()
    if not args.runs and not args.init:
        ap.error("give run directories / checkpoints, or --init PRESET")
    torch.set_num_threads(2)
    models = []
    for r in args.runs:
        model, cfg = load_model(r)
        models.append((r, model, cfg.data.seed))
    for s in (args.seed or [0]) if args.init else ():
        cfg, _ = resolve([f"preset={args.init}", f"train.seed={s}"])
        torch.manual_seed(s)
        models.append((f"init:{args.init}:seed{s}", XLIP.from_experiment(cfg).eval(), cfg.data.seed))
    for name, model, data_seed in models:
        res = measure(model, data_seed, args.prompts)
        cells = "  ".join(f"{lab}: zs {a:.3f} probe {b:.3f}" for lab, (a, b) in res.items())
        zs, pr = np.mean([v[0] for v in res.values()]), np.mean([v[1] for v in res.values()])
        flips = sum(1 for lab, (a, b) in res.items() if not is_no_finding(lab) and b >= 0.95 and a < 0.5)
        print(f"{name}  {cells}  | mean zs {zs:.3f} probe {pr:.3f} flips {flips}", flush=True)


if __name__ == "__main__":
    main()
