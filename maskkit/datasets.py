"""The built-in datasets, registered through the same hook a third-party plugin uses
(:func:`maskkit.hookspecs.register_datasets`). Names are written here and nowhere else."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .hookspecs import hookimpl
from .options import Seed


def phantoms(n: Annotated[int, Field(ge=1)] = 2000, val_n: Annotated[int, Field(ge=0)] = 256,
             p_unpaired: Annotated[float, Field(ge=0, le=1)] = 0.2, seed: Seed = 0):
    """Synthetic chest X-ray phantoms with reports, labels and lesion masks (no download).

    ``n`` training phantoms (generator indices ``0..n-1``) and ``val_n`` held-out ones (indices
    from ``HELD_OUT_OFFSET``, generated apart: the held-out set does not depend on the run's seed);
    ``p_unpaired`` of the training phantoms have no report. Images are generated at the model's
    resolution when the dataset is built.
    """
    from .data.phantoms import HELD_OUT_OFFSET, LABELS
    from .data.records import Record, Table

    recs = [Record(id=f"phantom-{seed}-{k}", image_path=None, patient_id=f"phantom-{seed}-{k}",
                   extra={"phantom": k, "seed": seed, "p_unpaired": p_unpaired, "held_out": k >= HELD_OUT_OFFSET})
            for k in [*range(n), *range(HELD_OUT_OFFSET, HELD_OUT_OFFSET + val_n)]]
    return Table("phantoms", recs, LABELS)


def phantom_split(records, seed: int):
    """(train, held-out) phantoms: the held-out phantoms are generated apart, whatever the seed."""
    return [r for r in records if not r.extra["held_out"]], [r for r in records if r.extra["held_out"]]


def phantom_dataset(table, image_size: int, *, train: bool, ner=None, tokenizer=None, data=None):
    """A :class:`~maskkit.data.dataset.PhantomDataset` over consecutive phantoms of ``table``
    (held-out phantoms all have a report, as before)."""
    from .data.dataset import PhantomDataset
    from .errors import MaskkitError

    recs = table.records
    if not recs:
        return None
    first = recs[0].extra
    if [r.extra["phantom"] for r in recs] != list(range(first["phantom"], first["phantom"] + len(recs))):
        raise MaskkitError("phantoms: a phantom dataset holds consecutive generator indices")
    return PhantomDataset(len(recs), first["seed"], image_size, offset=first["phantom"], ner=ner,
                          p_unpaired=first["p_unpaired"] if train else 0.0, tokenizer=tokenizer,
                          label_names=table.label_names)


@hookimpl
def register_datasets(register):
    from .data import records as r

    register("phantoms", phantoms, role="auto", split=phantom_split, dataset=phantom_dataset)
    register("mimic", r.mimic, role="paired")
    register("padchest", r.padchest, role="image_only")
    register("chexpert", r.chexpert, role="image_only")
    register("nih", r.nih, role="image_only")
    register("rsna", r.rsna, role="image_only")
    register("covidx", r.covidx, role="image_only")
    register("openi", r.openi, role="paired")
    register("csv", r.generic_csv, role="auto")
    register("folder", r.image_folder, role="image_only")
