"""Datasets that need no download: generated, or shipped inside an installed package."""
