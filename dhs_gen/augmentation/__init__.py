"""Training-set augmentation: Gen8 artifacts, hard negatives and core masks, the Uber mixer."""
