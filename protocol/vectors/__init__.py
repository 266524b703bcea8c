"""Test vectors of envelope version 1; generate.py writes the JSON files beside it."""
