"""Helpers every layer of the trainer uses: atomic file writes and fingerprints (`files`), progress
bars on stderr (`progress`). Stdlib only; nothing here imports another `wmtp` package."""
