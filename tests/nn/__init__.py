"""Tests of the U-Net and its losses."""
