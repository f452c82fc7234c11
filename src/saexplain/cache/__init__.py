"""Latent cache: sparse SAE activations of a tokenised corpus, in shards on disk."""
