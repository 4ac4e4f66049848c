"""The library that trains (``docs/training.md``); it never imports `tfsd.serving`.

Modules, each importing only those before it: ``optim`` (schedules, optimizers), ``task`` (model,
optimizer, EMA), ``run_dir`` (the on-disk run layout: the only module that reads or writes it),
``finetune``, ``step`` (the distributed train and eval steps), ``signals``, ``summaries``,
``loop`` (`train_and_evaluate`), ``evaluation`` and ``plots`` (the libraries of ``tfsd.evaluate``
and ``tfsd.plot``).
"""
