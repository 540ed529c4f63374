from hf_spectral.cli import run

run()
