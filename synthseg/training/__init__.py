"""Training: on synthetic scans, on real image/label pairs (with augmentation), on 2D slices; checkpoints, run folders and recipes."""
