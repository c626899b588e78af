"""Tests of the brain generator and intensity priors."""
