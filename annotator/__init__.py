"""The annotation app (Gradio): people compare two crops of a photo; see annotator.app."""
