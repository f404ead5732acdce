"""Datasets: the contract, the synthetic generator and the MovieLens adapter."""
