"""Token weights: TD errors of a value head (verifiable), reference excess loss (Rho-1), statistics."""
