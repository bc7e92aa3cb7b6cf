"""Allow ``python -m psf_live``."""

from psf_live.cli import main

main()
