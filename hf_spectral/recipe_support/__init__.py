"""What the recipes in ``recipes/`` share: the console progress line, offline evaluation metrics
and the end-of-run summary (report, model card, console summary). Public through ``hf_spectral``
(``hf_spectral.ConsoleCallback``, ``hf_spectral.finish_run``, ...); modules import lazily. Speech:
``speech`` (greedy CTC decoding, CER / WER) and ``spoken_digits`` (the offline spoken-digit data)."""
