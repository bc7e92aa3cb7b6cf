"""Training, data generation and evaluation for psf-live networks (imports psf_live)."""
