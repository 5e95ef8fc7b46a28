"""Image measurements and statistics: flux-conserving resampling, galaxy measurements, realism statistics."""
