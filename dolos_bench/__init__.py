"""dolos-bench: build datasets of inpainted face forgeries and score forgery localizers on them."""

__version__ = "0.1.0"
