"""Training the lens finder: CNN models and checkpoints, the streaming reader, shuffle buffer, preprocessing, the train loop."""
