"""Tests of metrics, validation, figures."""
