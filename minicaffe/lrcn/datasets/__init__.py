"""Data-set preparation (`minicaffe data NAME`): writes files our data layers read."""
