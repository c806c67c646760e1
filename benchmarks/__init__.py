"""The benchmark harness and scripts: run from a checkout (``python -m benchmarks.zoo``, ``python benchmarks/<script>.py``).

Not part of the installed library: :mod:`benchmarks.zoo` (the RecBole-protocol zoo benchmark),
:mod:`benchmarks.protocol` (its protocol, reference numbers and named configurations),
:mod:`benchmarks.report` (tables and plots), :mod:`benchmarks.recbole_timing` (RecBole's own epoch time)
and one script per study (transfer, transfer_real, casr, side_info, strategies, out_of_core, serve_load,
pretrain_default).
"""
