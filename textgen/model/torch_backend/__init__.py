"""The torch backends."""
