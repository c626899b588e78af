"""Tests of training runs of every kind, run folders, recipes."""
