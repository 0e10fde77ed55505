"""The torch backend's room: kernels and the eager fast path (imports torch)."""
