import sys

from hf_spectral.cli import main

sys.exit(main())
