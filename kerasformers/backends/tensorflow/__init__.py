"""The TensorFlow backend's room (imports tensorflow)."""
