"""Datasets: image folders, captions, prompt templates, buckets, the latent cache."""
