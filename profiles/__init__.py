"""autopeft's shipped profile records (``*.jsonl``) and known accelerators (``hardware.json``), installed
as the package ``autopeft_profiles`` so that a wheel carries them; read with ``importlib.resources``
(see :func:`autopeft.profiles.shipped_folder`). What each file holds: README.md beside this file."""
