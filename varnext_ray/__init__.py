"""varnext-ray: next-frame prediction by linear extrapolation in a VAE's latent space."""

__version__ = "0.1.0"
