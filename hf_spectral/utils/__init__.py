"""Small conventions shared by every layer (logging and progress bars, as in transformers/huggingface_hub)."""
