"""Candidates: what a method plugin is (:mod:`.base`, :mod:`.settings`), the registry that loads the
plugins (:mod:`.registry`), reading PEFT adapter configs as methods (:mod:`.adapter_config`), and the
task metrics plugins register beside methods (:mod:`.metrics`)."""
