"""Tests of the generic toolkit: layers, the labels-to-image model, geometry, I/O."""
