"""The JAX backend's room (imports jax)."""
