"""Training the learned localizers: one trainer shared by every trainable baseline.

* :mod:`.task` -- the :class:`~dolos_bench.train.task.TrainTask` contract a baseline implements;
* :mod:`.recipe` -- the strict training recipe (``recipes/train/*.yaml``);
* :mod:`.data` -- verified rows and a batch order that depends only on ``(seed, step)``;
* :mod:`.trainer` -- :func:`~dolos_bench.train.trainer.fit`, the accelerate loop (also a library call);
* :mod:`.run` -- the run folder and its resume / overwrite / refuse rules;
* :mod:`.localizer` -- :class:`~dolos_bench.train.localizer.TrainedLocalizer`, which scores a run folder;
* :mod:`.pretrained` -- timm or local-file backbone weights, state-dict files.

Nothing here imports torch at import time of this package; the modules that need it import it
inside their functions.
"""
