"""Synthetic scans from label maps: the brain generator and the intensity priors estimated from real scans."""
