"""Training: task-aligned assignment, the YOLOv8-seg loss, and a short train step with hooks."""
