"""Tests of prediction and the cascade."""
