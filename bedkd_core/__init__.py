"""bedkd_core: the library behind the BeDKD book (backdoor attacks on text classifiers and the BeDKD defense)."""
__version__ = "0.1.0"
