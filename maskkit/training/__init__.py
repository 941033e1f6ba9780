"""The concerns of a training run, each in its own module (as open_clip_train and torchtune keep
them apart from the recipe, :mod:`maskkit.train`): :mod:`.checkpointing`, :mod:`.run_dir`,
:mod:`.metric_logging`, :mod:`.optim`."""
