"""imgflow end to end against the image servers people run instead (imaginary, thumbor)."""
