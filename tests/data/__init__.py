"""Tests of label protocol, datasets, training maps, merged datasets."""
