"""Real anchor sets: known lenses and real hard negatives with standardised cutouts."""
