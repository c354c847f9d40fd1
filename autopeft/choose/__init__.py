"""Choosing a method: constraints (:mod:`.constraints`), pilots and their halving plan (:mod:`.pilots`,
:mod:`.halving`), the scikit-learn ranking (:mod:`.ranking`), ``recommend`` and ``tune``
(:mod:`.recommend`, :mod:`.tune`), and judging the choice (:mod:`.replay`, :mod:`.bench`)."""
