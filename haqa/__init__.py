"""haqa: a hardware-aware quantization agent for language models.

Importing the package is cheap: heavy libraries (torch, transformers, llama_cpp, textual) are
imported inside the functions that need them.
"""

__version__ = "0.1.0"
