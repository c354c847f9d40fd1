"""The fine-tune: its options (:mod:`.options`), the run on transformers' Trainer (:mod:`.run`), several
processes (:mod:`.launch`), evaluation and progress, what a run writes (:mod:`.outputs`), and export
of a finished run (:mod:`.export`)."""
