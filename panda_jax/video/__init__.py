"""Video decoding and, later, shot detection, stitching and the split CLI."""
